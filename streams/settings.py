"""Connection settings from the environment: one frozen Settings object, secrets as SecretStr."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from aiokafka import codec
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams import names

# FENXIAO_COMPRESSION values -> (aiokafka compression_type, whether its library is importable).
# lz4 is the default: the cheapest codec per byte in the worker's one process, and every mainstream
# client decodes it natively (Java, librdkafka and so PHP/Go/Node-rdkafka, franz-go, sarama); see docs/producers.md.
COMPRESSIONS: dict[str, tuple[str | None, Callable[[], bool]]] = {
    "gzip": ("gzip", codec.has_gzip),
    "snappy": ("snappy", codec.has_snappy),
    "lz4": ("lz4", codec.has_lz4),
    "zstd": ("zstd", codec.has_zstd),
    "none": (None, lambda: True),
}
DEFAULT_COMPRESSION = "lz4"


class Settings(BaseSettings):
    """Where the services are; read once from FENXIAO_* variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix=names.ENV_PREFIX)

    kafka: str = Field(default="127.0.0.1:9092", validation_alias=AliasChoices(names.ENV_KAFKA))
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"), validation_alias=AliasChoices(names.ENV_REDIS_URL)
    )
    clickhouse_url: SecretStr | None = Field(default=None, validation_alias=AliasChoices(names.ENV_CLICKHOUSE_URL))
    var_dir: Path = Field(default=Path("var"), validation_alias=AliasChoices(names.ENV_VAR_DIR))
    clickhouse_path: Path | None = Field(default=None, validation_alias=AliasChoices(names.ENV_CLICKHOUSE_PATH))
    partitions: int = Field(default=4, ge=1, le=256, validation_alias=AliasChoices(names.ENV_PARTITIONS))
    token_key: SecretStr = Field(
        default=SecretStr("dev-only-change-me"), validation_alias=AliasChoices(names.ENV_TOKEN_KEY)
    )
    app_id: str = Field(default="fenxiao", validation_alias=AliasChoices(names.ENV_APP_ID))
    config: Path = Field(default=Path("fenxiao.toml"), validation_alias=AliasChoices(names.ENV_CONFIG))
    batch_size: int = Field(default=2000, ge=1, le=100_000, validation_alias=AliasChoices(names.ENV_BATCH_SIZE))
    crash_at: str | None = Field(
        default=None,
        validation_alias=AliasChoices(names.ENV_CRASH_AT),
        description="fault injection for tests: POINT:BATCH kills the worker with SIGKILL there"
        " (sink_insert[.TABLE]:N: right after the sink's N-th insert, see streams/sinks/faults.py)",
    )
    sink_fault: str | None = Field(
        default=None,
        pattern=r"^((fail|lost-ack):\d+|fail-while:.+)$",
        validation_alias=AliasChoices(names.ENV_SINK_FAULT),
        description="fault injection for tests: fail:N, lost-ack:N or fail-while:PATH (see streams/sinks/faults.py)",
    )
    web_host: str = Field(default="127.0.0.1", validation_alias=AliasChoices(names.ENV_WEB_HOST))
    web_port: int = Field(default=6066, validation_alias=AliasChoices(names.ENV_WEB_PORT))
    sink_port_setting: int | None = Field(
        default=None, ge=1, le=65535, validation_alias=AliasChoices(names.ENV_SINK_PORT)
    )
    kafka_jvm_opts: str = Field(
        default="",
        validation_alias=AliasChoices(names.ENV_KAFKA_JVM_OPTS),
        description="JVM options for the local stack's broker, after its defaults (the last of a flag wins)",
    )
    sink_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        validation_alias=AliasChoices(names.ENV_SINK_NICE),
        description="niceness of the sink process: when the machine is busy, the worker's commissions go first",
    )
    share_base_url: str = Field(
        default="https://shop.example/s", validation_alias=AliasChoices(names.ENV_SHARE_BASE_URL)
    )

    advertised_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(names.ENV_ADVERTISED_URL),
        description="this worker's API as other workers reach it (default http://<web host>:<web port>)",
    )
    topology: str = Field(
        default="single",
        pattern=r"^(single|staged)$",
        validation_alias=AliasChoices(names.ENV_TOPOLOGY),
        description="single: one active worker and hot standbys; staged: every worker credits orders (decisions.md)",
    )
    compression: str = Field(
        default=DEFAULT_COMPRESSION,
        validation_alias=AliasChoices(names.ENV_COMPRESSION),
        description="codec of the records the worker produces: gzip, snappy, lz4, zstd or none",
    )

    @field_validator("compression", mode="before")
    @classmethod
    def _known_codec(cls, value: object) -> str:
        """Refuse a codec Kafka does not know here, naming the variable, instead of failing at the first send."""
        name = str(value).strip().lower()
        if name not in COMPRESSIONS:
            raise ValueError(f"{names.ENV_COMPRESSION}={value!r} is not a codec: use one of {', '.join(COMPRESSIONS)}")
        return name

    @property
    def compression_type(self) -> str | None:
        """The aiokafka producer's compression_type for FENXIAO_COMPRESSION (None = uncompressed)."""
        kind, available = COMPRESSIONS[self.compression]
        if not available():
            raise ValueError(
                f"{names.ENV_COMPRESSION}={self.compression}: the codec library is missing; "
                "pip install cramjam (a pinned dependency of fenxiao), or choose gzip or none"
            )
        return kind

    @property
    def api_url(self) -> str:
        """Where other workers pass API requests while this one is active."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "::", "") else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def sink_port(self) -> int:
        """The sink process's HTTP port on 127.0.0.1: FENXIAO_SINK_PORT, else the web port + 1000."""
        return self.sink_port_setting if self.sink_port_setting is not None else self.web_port + 1000

    @property
    def chdb_path(self) -> Path:
        """Embedded ClickHouse data directory (one owning process at a time)."""
        return self.clickhouse_path or self.var_dir / "clickhouse"


def explain(e: ValidationError) -> str:
    """A refused FENXIAO_* value as one line per variable, naming it, instead of pydantic's traceback."""
    lines = []
    for err in e.errors():
        where = ".".join(str(part) for part in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(msg if msg.startswith(where) else f"{where}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
