"""The sink reads the source topics that exist, and names the ones it cannot read yet."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams import names
from streams.sinks import sink_agent


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
