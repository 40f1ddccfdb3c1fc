"""FENXIAO_COMPRESSION: every codec a shop's producer may use round-trips here, and a typo names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.producer.producer import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from pydantic import ValidationError

from streams import names
from streams.settings import Settings

CODECS = ["gzip", "snappy", "lz4", "zstd"]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(autouse=True)
def _no_compression_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own FENXIAO_COMPRESSION must not decide these tests."""
    monkeypatch.delenv(names.ENV_COMPRESSION, raising=False)


def test_default_is_lz4() -> None:
    assert Settings().compression == "lz4"
    assert Settings().compression_type == "lz4"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("gzip", "gzip"), ("snappy", "snappy"), ("lz4", "lz4"), ("zstd", "zstd"), ("none", None), (" ZSTD ", "zstd")],
)
def test_each_value_maps_to_the_producer_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None
) -> None:
    monkeypatch.setenv(names.ENV_COMPRESSION, value)
    assert Settings().compression_type == expected


@pytest.mark.parametrize("value", ["brotli", "", "lz5", "uncompressed", "producer"])
def test_an_unknown_codec_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(names.ENV_COMPRESSION, value)
    with pytest.raises(ValidationError) as e:
        Settings()
    text = str(e.value)
    assert names.ENV_COMPRESSION in text
    assert "gzip, snappy, lz4, zstd, none" in text


@pytest.mark.parametrize("codec", CODECS)
def test_the_codec_library_is_installed_and_round_trips(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """What a Java/Go/PHP producer sends with this codec, this process can decode (issue #12: zstd crashed it)."""
    monkeypatch.setenv(names.ENV_COMPRESSION, codec)
    kind = Settings().compression_type
    assert kind is not None
    assert AIOKafkaProducer._COMPRESSORS[kind][0](), "library missing"  # aiokafka checks this before a send
    attr = AIOKafkaProducer._COMPRESSORS[kind][1]
    value = b'{"event_id":"o1","ts":"2026-11-11T00:00:00.000Z","order_id":"o1"}' * 20
    builder = DefaultRecordBatchBuilder(2, attr, 0, -1, -1, -1, 1 << 20)
    builder.append(0, 1_700_000_000_000, b"u1", value, [("trace", b"x")])
    batch = DefaultRecordBatch(bytes(builder.build()))
    assert batch.compression_type == attr
    records = list(batch)
    assert [(r.key, r.value) for r in records] == [(b"u1", value)]


def test_the_worker_refuses_a_bad_codec_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fenxiao worker` with FENXIAO_COMPRESSION=brotli: exit 2 and one line naming the variable, no traceback."""
    from streams import cli
    from streams.settings import get_settings

    monkeypatch.setenv(names.ENV_COMPRESSION, "brotli")
    get_settings.cache_clear()
    try:
        rc = cli.main(["worker", "--config", str(FIXTURES / "basic" / "fenxiao.toml")])
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["error: FENXIAO_COMPRESSION='brotli' is not a codec: use one of gzip, snappy, lz4, zstd, none"]
