"""The sink reads the source topics that exist, names the ones it cannot read yet, and turns their records into rows."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from streams import names
from streams.sinks import sink_agent
from streams.sinks.sink import BINDINGS, CLICKS, LEDGER, ORDERS, ClickHouseSink
from tests.unit.test_sink import FakeClickHouse, entry


class Cluster:
    """A consumer's view of the cluster's topics, as aiokafka's topics() returns it."""

    def __init__(self, topics: set[str]) -> None:
        self._topics = topics

    async def topics(self) -> set[str]:
        return self._topics


def test_withdrawal_states_are_a_sink_source() -> None:
    assert names.WITHDRAWAL_STATES == "fenxiao.withdrawal-states"
    assert names.WITHDRAWAL_STATES in names.SINK_SOURCES and names.COMMISSIONS in names.SINK_SOURCES


def test_a_missing_source_topic_is_skipped_with_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    older = set(names.SINK_SOURCES) - {names.WITHDRAWAL_STATES} | {"other.topic"}
    with caplog.at_level(logging.WARNING, logger="streams.sinks.sink_agent"):
        got = asyncio.run(sink_agent.existing_sources(Cluster(older)))
    assert got == [t for t in names.SINK_SOURCES if t != names.WITHDRAWAL_STATES]
    assert [r.getMessage() for r in caplog.records] == [
        "ClickHouse sink: fenxiao.withdrawal-states not in the cluster; not read until the sink restarts"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.sinks.sink_agent"):
        assert asyncio.run(sink_agent.existing_sources(Cluster(set(names.SINK_SOURCES)))) == list(names.SINK_SOURCES)
    assert caplog.records == []


def _sink() -> tuple[ClickHouseSink, FakeClickHouse]:
    ch = FakeClickHouse()
    return ClickHouseSink(ch), ch


def test_a_polled_batch_is_buffered_per_table_with_the_same_rows_as_one_record_at_a_time() -> None:
    ts = "2026-11-11T00:00:00.000Z"
    batch: list[tuple[str, bytes | None]] = [
        (names.COMMISSIONS, json.dumps(entry(1)).encode()),
        (names.CLICKS, json.dumps({"event_id": "c1", "ts": ts, "visitor_id": "v1", "ref": "u1"}).encode()),
        (names.COMMISSIONS, None),  # a tombstone
        (names.ORDERS, b'{"event_id": "o1", "ts": "2026-11-11T00:00:00.000Z"}'),  # not a valid event: skipped
        (
            names.ORDERS,
            json.dumps(
                {"event_id": "o2", "ts": ts, "order_id": "o", "type": "paid", "buyer_id": "b", "amount_cents": -5}
            ).encode(),
        ),  # negative cents: not valid either
        (
            names.ORDERS,
            json.dumps(
                {"event_id": "o3", "ts": ts, "order_id": "o", "type": "paid", "buyer_id": "b", "amount_cents": 1999}
            ).encode(),
        ),
        (names.BINDINGS, json.dumps({"user_id": "u2", "inviter_id": None, "ts": ts, "source": "signup"}).encode()),
        (names.COMMISSIONS, json.dumps(entry(1)).encode()),  # redelivered within the batch
        (names.COMMISSIONS, json.dumps(entry(2)).encode()),
    ]
    one, one_ch = _sink()
    for record in batch:  # one record per call, as a poll of one would hand them over
        sink_agent.buffer_records(one, [record])
    many, many_ch = _sink()
    sink_agent.buffer_records(many, batch)
    assert many.buffered() == one.buffered() == {LEDGER: 2, CLICKS: 1, ORDERS: 1, BINDINGS: 1}
    assert many.flush() == one.flush()
    assert many_ch.tables == one_ch.tables
    assert many_ch.tables[ORDERS] == [("o3", ts, "o", "paid", "b", 1999, "", "", "")]
    assert many_ch.tables[BINDINGS] == [("u2", None, ts, "signup")]


def test_a_bad_ledger_row_in_a_batch_fails_the_batch_as_it_fails_add() -> None:
    sink, _ = _sink()
    bad = json.dumps(entry(3, amount_cents=1.5)).encode()
    with pytest.raises(TypeError, match="amount_cents must be integer cents"):
        sink_agent.buffer_records(sink, [(names.COMMISSIONS, json.dumps(entry(1)).encode()), (names.COMMISSIONS, bad)])
    with pytest.raises(TypeError, match="amount_cents must be integer cents"):
        sink_agent.buffer_records(sink, [(names.COMMISSIONS, bad)])
