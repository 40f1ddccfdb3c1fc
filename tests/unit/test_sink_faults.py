"""The sink's retry policy as the worker runs it, and the fault injection the sink's integration tests rely on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.sinks import faults
from streams.sinks.faults import FaultyClickHouse, InjectedFault
from streams.sinks.sink import CLICKS, LEDGER, TABLES, ClickHouseSink, SinkWriteError
from tests.unit.test_sink import FakeClickHouse, entry


def click(i: int) -> dict[str, Any]:
    """A click input event with event_id c<i>."""
    return {"event_id": f"c{i}", "ts": "2026-11-11T00:00:00.000Z", "visitor_id": "v1", "ref": "u1"}


def worker_sink(ch: Any) -> tuple[ClickHouseSink, list[float]]:
    """The sink exactly as the worker builds it (default policy), its backoff sleeps recorded instead of slept."""
    slept: list[float] = []
    return ClickHouseSink(ch, sleep=slept.append), slept


def test_the_worker_policy_backs_off_half_a_second_doubling_within_a_flush() -> None:
    fake = FakeClickHouse()
    sink, slept = worker_sink(FaultyClickHouse(fake, "fail:4", None))
    sink.add_many(LEDGER, [entry(i) for i in range(3)])
    assert sink.flush() == {LEDGER: 3}
    assert slept == [0.5, 1.0, 2.0, 4.0]
    assert sorted(map(str, fake.keys(LEDGER))) == ["e0", "e1", "e2"]


def test_the_longest_pause_between_attempts_is_the_agents_retry_pause() -> None:
    from streams.sinks import sink_agent

    sink, _ = worker_sink(FakeClickHouse())
    assert [sink.backoff(n) for n in range(1, sink.max_attempts)] == [0.5, 1.0, 2.0, 4.0]
    assert sink_agent.longest_pause(sink) == sink_agent.RETRY_PAUSE_S == 5.0


def test_a_flush_that_runs_out_of_retries_is_retried_by_the_agent_after_its_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.sinks import sink_agent

    fake = FakeClickHouse()
    sink, slept = worker_sink(FaultyClickHouse(fake, "fail:7", None))
    paused: list[float] = []

    async def no_sleep(seconds: float) -> None:
        paused.append(seconds)

    monkeypatch.setattr(sink_agent.asyncio, "sleep", no_sleep)
    sink.add_many(LEDGER, [entry(i) for i in range(4)])
    written: dict[str, int] = {}
    asyncio.run(sink_agent.flush_until_written(sink, written))
    assert slept == [0.5, 1.0, 2.0, 4.0, 0.5, 1.0]
    assert paused == [sink_agent.RETRY_PAUSE_S]
    assert written == {LEDGER: 4}
    assert sorted(map(str, fake.keys(LEDGER))) == ["e0", "e1", "e2", "e3"]


def test_injected_failures_are_clickhouse_errors_the_sink_gives_up_on_after_its_attempts() -> None:
    sink, _ = worker_sink(FaultyClickHouse(FakeClickHouse(), "fail:5", None))
    sink.add(LEDGER, entry(1))
    with pytest.raises(SinkWriteError) as raised:
        sink.flush()
    assert isinstance(raised.value.__cause__, InjectedFault)
    assert sink.buffered() == {LEDGER: 1}


def test_a_lost_ack_writes_the_rows_and_the_retry_does_not_write_them_again() -> None:
    fake = FakeClickHouse()
    sink, slept = worker_sink(FaultyClickHouse(fake, "lost-ack:2", None))
    sink.add_many(LEDGER, [entry(i) for i in range(3)])
    sink.add(CLICKS, click(1))
    assert sink.flush() == {LEDGER: 0, CLICKS: 0}
    assert len(slept) == 2
    assert sorted(map(str, fake.keys(LEDGER))) == ["e0", "e1", "e2"] and fake.keys(CLICKS) == ["c1"]


def test_fail_while_fails_every_attempt_until_the_file_is_gone(tmp_path: Path) -> None:
    flag = tmp_path / "outage"
    flag.touch()
    fake = FakeClickHouse()
    ch = FaultyClickHouse(fake, f"fail-while:{flag}", None)
    columns, row = TABLES[CLICKS].columns, TABLES[CLICKS].values(click(1))
    for _ in range(3):
        with pytest.raises(InjectedFault):
            ch.insert(CLICKS, columns, [row])
    assert fake.inserts == []
    flag.unlink()
    ch.insert(CLICKS, columns, [row])
    assert fake.inserts == [(CLICKS, 1)]


def test_the_crash_point_kills_right_after_the_nth_insert_of_the_named_table(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    fake = FakeClickHouse()
    sink, _ = worker_sink(FaultyClickHouse(fake, None, "sink_insert.ledger_entries:2"))
    for i in range(2):
        sink.add(CLICKS, click(i))
        sink.add(LEDGER, entry(i))
        sink.flush()
        assert len(killed) == i, "killed before the second ledger insert"
    assert killed == [faults.signal.SIGKILL]
    assert fake.keys(LEDGER) == ["e0", "e1"], "the kill must come after the rows are written"


def test_any_table_counts_for_the_bare_crash_point(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    sink, _ = worker_sink(FaultyClickHouse(FakeClickHouse(), None, "sink_insert:2"))
    sink.add(CLICKS, click(1))
    sink.add(LEDGER, entry(1))
    sink.flush()
    assert killed == [faults.signal.SIGKILL]


def test_production_gets_the_real_connection() -> None:
    ch = FakeClickHouse()
    assert faults.inject(ch, Settings()) is ch
    assert faults.inject(ch, Settings(FENXIAO_CRASH_AT="after_commit:3")) is ch
    assert isinstance(faults.inject(ch, Settings(FENXIAO_SINK_FAULT="fail:2")), FaultyClickHouse)
    assert isinstance(faults.inject(ch, Settings(FENXIAO_CRASH_AT="sink_insert:1")), FaultyClickHouse)


@pytest.mark.parametrize("bad", ["fail", "fail:x", "lost-ack:", "explode:3", "fail-while:"])
def test_a_malformed_sink_fault_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Settings(FENXIAO_SINK_FAULT=bad)


def test_only_the_sinks_tables_fail_so_migrations_still_run() -> None:
    fake = FakeClickHouse()
    fake.insert = lambda table, columns, rows: fake.inserts.append((table, len(rows)))  # type: ignore[method-assign]
    FaultyClickHouse(fake, "fail:3", None).insert("schema_migrations", ("version",), [(1,)])
    assert fake.inserts == [("schema_migrations", 1)]
