"""Scenario files: bad lines are named before anything is sent, values go out byte-exact; the CLI says what to do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams import cli
from streams.ops import flashsale, replay
from streams.settings import get_settings

SALE_OPENS = datetime(2026, 11, 11, tzinfo=UTC)  # the default of `fenxiao generate --start`
GOOD = '{"topic": "fenxiao.clicks", "key": "v1", "value": {"event_id": "c1", "ts": "2026-11-11T00:00:00.000Z"}}'


def write(tmp_path: Path, *lines: str | bytes) -> Path:
    """A scenario file with exactly these lines."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def error_of(path: Path) -> str:
    """The message read_jsonl stops with."""
    with pytest.raises(replay.ReplayInputError) as e:
        list(replay.read_jsonl(path))
    return str(e.value)


def test_reads_records_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "", "   ", GOOD.replace('"v1"', "null"))
    recs = list(replay.read_jsonl(path))
    assert [r["key"] for r in recs] == ["v1", None]
    assert recs[0]["value"]["event_id"] == "c1"


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, GOOD, GOOD, '{"topic": "fenxiao.clicks", "key": "v1", "value": {'))
    assert msg.startswith(f"{tmp_path / 's.jsonl'}:3: not valid JSON")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"key": "k", "value": {}}', "missing topic"),
        ('{"topic": "fenxiao.orders", "value": {}}', "missing key"),
        ('{"topic": "fenxiao.orders", "key": "k"}', "missing value"),
        ('{"value": 1}', "missing topic, key"),
        ('["fenxiao.orders", "k", {}]', "got an array"),
        ('{"topic": "", "key": "k", "value": {}}', "topic must be a non-empty string"),
        ('{"topic": 3, "key": "k", "value": {}}', "topic must be a non-empty string, got a number"),
        ('{"topic": "fenxiao.orders", "key": {"a": 1}, "value": {}}', "key must be a string or null, got an object"),
    ],
)
def test_lines_without_topic_key_value_name_the_line_and_what_is_wrong(tmp_path: Path, line: str, says: str) -> None:
    msg = error_of(write(tmp_path, GOOD, line))
    assert ":2: " in msg and says in msg


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    assert ":2: not UTF-8" in error_of(write(tmp_path, GOOD, b'{"topic": "t", "key": "\xff", "value": {}}'))


def test_values_are_sent_as_compact_json_and_strings_as_raw_bytes() -> None:
    assert replay.value_bytes({"a": 1, "b": "分销"}) == '{"a":1,"b":"分销"}'.encode()
    assert replay.value_bytes("{not json") == b"{not json"
    assert replay.value_bytes("\udcff\udcfe") == b"\xff\xfe"  # a scenario can carry invalid UTF-8
    assert replay.value_bytes([1, None]) == b"[1,null]"


def test_a_malformed_payload_survives_the_file(tmp_path: Path) -> None:
    line = json.dumps({"topic": "fenxiao.orders", "key": "u1", "value": '{"event_id": "x", "amount_cents": '})
    (rec,) = replay.read_jsonl(write(tmp_path, line))
    assert replay.value_bytes(rec["value"]) == b'{"event_id": "x", "amount_cents": '


def test_a_bad_line_stops_the_replay_before_connecting(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "oops")
    with pytest.raises(replay.ReplayInputError, match=":2: "):
        replay.run_replay(str(path), "127.0.0.1:1", None, None)


def test_generated_sales_read_back_unchanged(tmp_path: Path) -> None:
    recs = list(flashsale.generate(20, 50, 1, SALE_OPENS, 600))
    path = tmp_path / "sale.jsonl"
    flashsale.write_jsonl(path, recs)
    assert list(replay.read_jsonl(path)) == recs
    assert replay.count_records(path) == len(recs)


@pytest.fixture
def unreachable_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings pointing at a port nobody listens on."""
    monkeypatch.setenv("FENXIAO_KAFKA", "127.0.0.1:1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_replay_of_a_missing_file_says_what_to_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "no-such-scenario.jsonl"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no such file: no-such-scenario.jsonl" in err and "events.jsonl" in err


@pytest.mark.usefixtures("unreachable_kafka")
def test_cli_replay_without_kafka_names_the_setting_and_the_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["replay", str(write(tmp_path, GOOD))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "127.0.0.1:1" in err and "FENXIAO_KAFKA" in err and "fenxiao stack up" in err


def test_cli_generate_writes_the_seeded_sale(tmp_path: Path) -> None:
    out = tmp_path / "sale.jsonl"
    assert cli.main(["generate", "--users", "40", "--orders", "300", "--seed", "5", "--out", str(out)]) == 0
    expected = flashsale.generate(40, 300, 5, SALE_OPENS, 3600)
    assert list(replay.read_jsonl(out)) == list(expected)
