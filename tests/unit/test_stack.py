"""The pure parts of streams/ops/stack.py: address parsing, generated configs, the version pin."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from streams import names
from streams.ops import stack as stack_mod
from streams.ops.stack import StackConfig, StackError
from streams.settings import get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Env changes reach get_settings(), and the cached settings are dropped again afterwards."""
    for env in (names.ENV_KAFKA, names.ENV_REDIS_URL, names.ENV_VAR_DIR, names.ENV_KAFKA_JVM_OPTS):
        monkeypatch.delenv(env, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _props(text: str) -> dict[str, str]:
    """A server.properties text as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize(
    ("bootstrap", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("localhost:29092,other:9092", ("localhost", 29092)),
        ("PLAINTEXT://127.0.0.1:19092", ("127.0.0.1", 19092)),
        ("kafka", ("kafka", 9092)),
        ("[::1]:9094", ("::1", 9094)),
    ],
)
def test_parse_kafka_address(bootstrap: str, expected: tuple[str, int]) -> None:
    assert stack_mod.parse_kafka_address(bootstrap) == expected


@pytest.mark.parametrize("bootstrap", ["", "127.0.0.1:x", "127.0.0.1:70000"])
def test_parse_kafka_address_rejects_bad_values(bootstrap: str) -> None:
    with pytest.raises(StackError, match=names.ENV_KAFKA):
        stack_mod.parse_kafka_address(bootstrap)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", ("127.0.0.1", 6379)),
        ("redis://:secret@localhost:16379/2", ("localhost", 16379)),
        ("redis://127.0.0.1", ("127.0.0.1", 6379)),
    ],
)
def test_parse_redis_address(url: str, expected: tuple[str, int]) -> None:
    assert stack_mod.parse_redis_address(url) == expected


def test_parse_redis_address_rejects_unix_sockets() -> None:
    with pytest.raises(StackError, match=names.ENV_REDIS_URL):
        stack_mod.parse_redis_address("unix:///run/redis.sock")


def test_config_from_settings_follows_the_environment(fresh_settings: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fresh_settings.setenv(names.ENV_KAFKA, "localhost:29092")
    fresh_settings.setenv(names.ENV_REDIS_URL, "redis://:pw@127.0.0.1:26379/1")
    fresh_settings.setenv(names.ENV_VAR_DIR, str(tmp_path / "v"))
    cfg = stack_mod.config_from_settings()
    assert (cfg.host, cfg.kafka_port, cfg.controller_port, cfg.redis_port) == ("127.0.0.1", 29092, 29093, 26379)
    assert cfg.var_dir == tmp_path / "v"
    assert cfg.bootstrap == "127.0.0.1:29092"


def test_config_defaults_match_the_settings_defaults(fresh_settings: pytest.MonkeyPatch) -> None:
    cfg = stack_mod.config_from_settings()
    assert (cfg.kafka_port, cfg.controller_port, cfg.redis_port) == (9092, 9093, 6379)
    assert cfg.var_dir.is_absolute() and cfg.var_dir.name == "var"


def test_the_broker_compiles_with_c1_unless_the_operator_says_otherwise(
    fresh_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log4j = tmp_path / "log4j2.properties"
    default = stack_mod.kafka_jvm(stack_mod.config_from_settings(), "java", log4j)
    assert default[0] == "java" and "-XX:TieredStopAtLevel=1" in default and "-Xmx1g" in default
    fresh_settings.setenv(names.ENV_KAFKA_JVM_OPTS, " -XX:TieredStopAtLevel=4  -Xmx2g ")
    get_settings.cache_clear()
    cfg = stack_mod.config_from_settings()
    assert cfg.kafka_jvm_opts == ("-XX:TieredStopAtLevel=4", "-Xmx2g")
    jvm = stack_mod.kafka_jvm(cfg, "java", log4j)
    # HotSpot takes the last of a repeated flag: the operator's options must come after the stack's own.
    assert jvm.index("-XX:TieredStopAtLevel=4") > jvm.index("-XX:TieredStopAtLevel=1")
    assert jvm.index("-Xmx2g") > jvm.index("-Xmx1g")
    assert f"-Dlog4j2.configurationFile={log4j}" in jvm


def test_config_refuses_a_remote_broker(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv(names.ENV_KAFKA, "kafka:19092")
    with pytest.raises(StackError, match=r"FENXIAO_KAFKA='kafka:19092' points at kafka, not this machine"):
        stack_mod.config_from_settings()


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert StackConfig(var_dir=tmp_path).cache_dir == tmp_path / "fenxiao"


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    cfg = StackConfig(var_dir=tmp_path, kafka_port=39092, controller_port=39093)
    props = _props(stack_mod.kafka_server_properties(cfg))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:39093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:39092"
    assert Path(props["log.dirs"]).is_relative_to(tmp_path / "kafka")
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "4"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"
    assert props["transaction.state.log.min.isr"] == "1"


def test_redis_conf_is_local_and_append_only(tmp_path: Path) -> None:
    conf = stack_mod.redis_conf(StackConfig(var_dir=tmp_path, redis_port=36379)).splitlines()
    assert {"bind 127.0.0.1", "port 36379", "appendonly yes", f'dir "{tmp_path / "redis"}"'} <= set(conf)


def test_compose_redis_persists_as_the_local_stack_does(tmp_path: Path) -> None:
    """AOF every second, an hourly snapshot, rewrites past 1 GB: one persistence policy for both ways to run Redis."""
    conf = stack_mod.redis_conf(StackConfig(var_dir=tmp_path)).splitlines()
    persistence = {
        line
        for line in conf
        if line.split(" ", 1)[0] in {"appendonly", "appendfsync", "save", "auto-aof-rewrite-min-size"}
    }
    assert persistence == {"appendonly yes", "appendfsync everysec", "save 3600 1", "auto-aof-rewrite-min-size 1gb"}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    argv = compose["services"]["redis"]["command"]
    assert argv[0] == "redis-server"
    flags = {f"{k.removeprefix('--')} {v}" for k, v in zip(argv[1::2], argv[2::2], strict=True)}
    assert flags == persistence


def test_log4j_config_keeps_the_root_at_warn() -> None:
    assert "rootLogger.level = WARN" in stack_mod.kafka_log4j2_properties()


def test_cluster_id_is_kafka_shaped() -> None:
    """22 url-safe base64 characters of 16 bytes, never starting with '-' (the storage tool reads that as a flag)."""
    ids = {stack_mod.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for cid in ids:
        assert len(cid) == 22 and "=" not in cid and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_topic_specs_cover_names_and_compact_bindings() -> None:
    specs = {t.name: t for t in stack_mod.topic_specs(6)}
    assert set(specs) == {*names.INPUT_TOPICS, *names.OUTPUT_TOPICS, *names.INTERNAL_TOPICS}
    assert {t.num_partitions for n, t in specs.items() if n != names.ORDER_STEPS} == {6}
    # order-steps is what the credit workers share: 12, so 3 credit workers (4 workers) get 4 each
    assert specs[names.ORDER_STEPS].num_partitions == 12
    assert {t.replication_factor for t in specs.values()} == {1}
    assert specs[names.BINDINGS].topic_configs == {"cleanup.policy": "compact"}
    # input topics are the system of record Redis is rebuilt from: they keep everything
    for n in names.INPUT_TOPICS:
        assert specs[n].topic_configs == {"retention.ms": "-1", "retention.bytes": "-1"}
    assert all(specs[n].topic_configs == {} for n in (names.COMMISSIONS, names.DEAD_LETTERS))


@pytest.mark.parametrize(("partitions", "steps"), [(1, 12), (4, 12), (12, 12), (16, 16), (64, 64)])
def test_order_steps_partitions_are_at_least_twelve(partitions: int, steps: int) -> None:
    specs = {t.name: t.num_partitions for t in stack_mod.topic_specs(partitions)}
    assert specs[names.ORDER_STEPS] == steps
    assert specs[names.ORDERS] == partitions


def test_pick_free_ports_are_distinct() -> None:
    ports = stack_mod.pick_free_ports(3)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)


def test_kafka_version_is_pinned_once_for_jars_and_compose() -> None:
    version = stack_mod.kafka_version()
    assert re.fullmatch(r"4\.\d+\.\d+", version)
    compose = (REPO / "docker-compose.yml").read_text()
    assert set(re.findall(r"image:\s*apache/kafka:(\S+)", compose)) == {version}


def test_run_command_prints_one_red_line_and_returns_2(
    fresh_settings: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh_settings.setenv(names.ENV_KAFKA, "kafka:19092")
    assert stack_mod.run_command("status") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FENXIAO_KAFKA=")


def test_status_of_a_stack_that_never_ran(tmp_path: Path) -> None:
    (kafka_port, redis_port) = stack_mod.pick_free_ports(2)
    cfg = StackConfig(var_dir=tmp_path, kafka_port=kafka_port, redis_port=redis_port)
    rows = stack_mod.status(cfg)
    assert [(r.service, r.pid, r.running, r.answering) for r in rows] == [
        ("kafka", None, False, False),
        ("redis", None, False, False),
    ]


def test_stale_pid_file_is_ignored_and_removed(tmp_path: Path) -> None:
    """A live pid whose start time differs from the recorded one is a reused pid, not our service."""
    cfg = StackConfig(var_dir=tmp_path)
    cfg.redis_dir.mkdir()
    cfg.pid_file(stack_mod.REDIS).write_text("1 999999999999\n")
    assert stack_mod.running_pid(cfg, stack_mod.REDIS) is None
    assert not cfg.pid_file(stack_mod.REDIS).exists()


def test_pid_file_of_a_live_process_is_recognised(tmp_path: Path) -> None:
    cfg = StackConfig(var_dir=tmp_path)
    cfg.kafka_dir.mkdir()
    stack_mod._write_pid(cfg.pid_file(stack_mod.KAFKA), os.getpid())
    assert stack_mod.running_pid(cfg, stack_mod.KAFKA) == os.getpid()


def test_kafka_tools_follow_the_broker_pin() -> None:
    """The console tools' pom has no version of its own: mvn gets the broker pom's, so one bump moves both."""
    import xml.etree.ElementTree as ET

    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(stack_mod.TOOLS_POM_PATH).getroot()
    deps = {
        d.findtext("m:artifactId", namespaces=ns): d.findtext("m:version", namespaces=ns)
        for d in root.iter("{http://maven.apache.org/POM/4.0.0}dependency")
    }
    assert deps == {"kafka-tools": "${kafka.version}"}
    assert root.find("m:properties/m:kafka.version", ns) is None
