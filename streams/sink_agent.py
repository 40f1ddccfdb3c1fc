"""The ClickHouse sink agent: ledger, bindings, dead letters, limited clicks and the input events, in batches."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from schemas.events import Invalid, decode
from streams import names, runtime
from streams.app import app
from streams.sink import BINDINGS, CLICKS, DEAD_LETTERS, LEDGER, LIMITED_CLICKS, ORDERS, TIER_EVENTS, ClickHouseSink
from streams.topics import sink_sources_topic

log = logging.getLogger(__name__)

TAKE_MAX = 20_000
TAKE_WITHIN_S = 1.0
RETRY_PAUSE_S = 5.0  # after a flush has used up the sink's own retries (5 attempts, 0.5 s doubling): pause, retry


def longest_pause(sink: ClickHouseSink) -> float:
    """The retry policy's longest wait between two insert attempts: how far ClickHouse may lag once it answers."""
    return max([RETRY_PAUSE_S, *(sink.backoff(n) for n in range(1, sink.max_attempts))])


def buffer_record(sink: ClickHouseSink, topic: str, raw: bytes | None) -> None:
    """Turn one record of a sink source topic into a row; input records that are not valid events are skipped."""
    if raw is None:
        return
    if topic == names.COMMISSIONS:
        sink.add(LEDGER, json.loads(raw))
    elif topic == names.BINDINGS:
        sink.add(BINDINGS, json.loads(raw))
    elif topic == names.DEAD_LETTERS:
        sink.add(DEAD_LETTERS, json.loads(raw))
    elif topic == names.CLICKS_LIMITED:
        sink.add(LIMITED_CLICKS, json.loads(raw))
    else:
        ev = decode(topic, raw)
        if not isinstance(ev, Invalid):
            table = {names.CLICKS: CLICKS, names.TIERS: TIER_EVENTS}.get(topic, ORDERS)
            sink.add(table, ev.model_dump())


async def flush_until_written(sink: ClickHouseSink, written: dict[str, int]) -> None:
    """Keep the batch until ClickHouse has it: faust acks a taken batch even when the body fails."""
    while True:
        try:
            for table, n in (await asyncio.to_thread(sink.flush)).items():
                written[table] = written.get(table, 0) + n
            return
        except Exception as e:
            log.error("ClickHouse sink: %s; keeping the batch and trying again in %.0f s", e, RETRY_PAUSE_S)
            await asyncio.sleep(RETRY_PAUSE_S)


@app.agent(sink_sources_topic)
async def sink_to_clickhouse(stream: Any) -> None:
    """Batch rows per poll and write each batch once; offsets are acked only after the write."""
    rt = runtime.get()
    async for events in stream.take_events(TAKE_MAX, within=TAKE_WITHIN_S):
        for event in events:
            buffer_record(rt.sink, event.message.topic, event.message.value)
        await flush_until_written(rt.sink, rt.sink_written)
