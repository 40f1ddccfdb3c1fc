"""The ClickHouse sink loop: ledger, bindings, dead letters, limited clicks and the input events, in batches.

It runs in the `fenxiao sink` process (streams/sinks/sink_process.py) with its own consumer group
`<app id>.sink`, so a ClickHouse outage only delays ClickHouse, and neither its CPU nor its chDB
engine shares the worker's process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError

from schemas.events import Invalid, decode
from streams import names
from streams.pipeline.consume import undecodable_at, unread
from streams.sinks.sink import (
    BINDINGS,
    CLICKS,
    DEAD_LETTERS,
    LEDGER,
    LIMITED_CLICKS,
    ORDERS,
    TIER_EVENTS,
    WITHDRAWAL_STATES,
    ClickHouseSink,
)

log = logging.getLogger(__name__)

TAKE_MAX = 20_000
TAKE_WITHIN_S = 1.0
RETRY_PAUSE_S = 5.0  # after a flush has used up the sink's own retries (5 attempts, 0.5 s doubling): pause, retry


def longest_pause(sink: ClickHouseSink) -> float:
    """The retry policy's longest wait between two insert attempts: how far ClickHouse may lag once it answers."""
    return max([RETRY_PAUSE_S, *(sink.backoff(n) for n in range(1, sink.max_attempts))])


_json = msgspec.json.Decoder().decode  # the engine's own output records: plain JSON objects, decoded in C

# The engine's output topics carry rows as they are; any other sink source is an input topic (decoded as events).
_OUTPUT_TABLES: dict[str, str] = {
    names.COMMISSIONS: LEDGER,
    names.BINDINGS: BINDINGS,
    names.DEAD_LETTERS: DEAD_LETTERS,
    names.CLICKS_LIMITED: LIMITED_CLICKS,
    names.WITHDRAWAL_STATES: WITHDRAWAL_STATES,
}
_INPUT_TABLES: dict[str, str] = {names.CLICKS: CLICKS, names.TIERS: TIER_EVENTS}


def _input_row(topic: str, raw: bytes) -> tuple[str, dict[str, Any]] | None:
    """The table and row of an input record, None when it is not a valid event (the engine dead-letters those)."""
    ev = decode(topic, raw)
    if isinstance(ev, Invalid):
        return None
    return _INPUT_TABLES.get(topic, ORDERS), ev.as_dict()


def buffer_records(sink: ClickHouseSink, records: Iterable[tuple[str, bytes | None]]) -> None:
    """A polled batch of (topic, value) as rows, grouped per table for add_many; invalid input events are skipped."""
    by_table: dict[str, list[Any]] = {}
    for topic, raw in records:
        if raw is None:
            continue
        table = _OUTPUT_TABLES.get(topic)
        if table is not None:
            row = _json(raw)
        else:
            found = _input_row(topic, raw)
            if found is None:
                continue
            table, row = found
        rows = by_table.get(table)
        if rows is None:
            rows = by_table[table] = []
        rows.append(row)
    for table, rows in by_table.items():
        sink.add_many(table, rows)


async def flush_until_written(sink: ClickHouseSink, written: dict[str, int]) -> None:
    """Keep the batch until ClickHouse has it: its offsets are committed only after this returns."""
    while True:
        try:
            for table, n in (await asyncio.to_thread(sink.flush)).items():
                written[table] = written.get(table, 0) + n
            return
        except Exception as e:
            log.error("ClickHouse sink: %s; keeping the batch and trying again in %.0f s", e, RETRY_PAUSE_S)
            await asyncio.sleep(RETRY_PAUSE_S)


async def take(consumer: Any, progress: SinkProgress | None = None) -> list[Any]:
    """Up to TAKE_MAX records: whatever is there, then at most TAKE_WITHIN_S more to fill the batch.

    A record batch the client cannot decode pauses its partition for good (named in the log and in
    progress.error) and rewinds every partition to its committed offset, so nothing the failed poll had
    already passed over is skipped; the batch taken so far is dropped and read again.
    """
    loop = asyncio.get_running_loop()
    out: list[Any] = []
    deadline: float | None = None
    while len(out) < TAKE_MAX:
        wait_ms = 1000 if deadline is None else max(0, int((deadline - loop.time()) * 1000))
        try:
            got = await consumer.getmany(timeout_ms=wait_ms, max_records=TAKE_MAX - len(out))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            found = undecodable_at(exc)
            if found is None:
                raise
            tp, offset = found
            consumer.pause(tp)
            error = (
                f"{tp.topic} partition {tp.partition} offset {offset}: the ClickHouse sink cannot decode this "
                f"batch ({type(exc).__name__}); its partition is paused"
            )
            log.error("%s", error)
            if progress is not None:
                progress.error = error
            for other in consumer.assignment():
                committed = await consumer.committed(other)
                if committed is None:
                    await consumer.seek_to_beginning(other)
                else:
                    consumer.seek(other, committed)
            return []
        for records in got.values():
            out.extend(records)
        if not out:
            return out
        if deadline is None:
            deadline = loop.time() + TAKE_WITHIN_S
        if loop.time() >= deadline:
            break
    return out


async def lag(consumer: Any) -> int | None:
    """Records the sink has still to read, None until it is assigned and has fetched every partition once."""
    parts = consumer.assignment()
    return await unread(consumer, parts) if parts else None


async def existing_sources(consumer: Any) -> list[str]:
    """The sink's source topics that exist: subscribing to a missing one would fail the consumer's start."""
    available = await consumer.topics()
    missing = [t for t in names.SINK_SOURCES if t not in available]
    if missing:
        # The worker creates every topic before it spawns the sink, so this is a stack older than the sink.
        log.warning("ClickHouse sink: %s not in the cluster; not read until the sink restarts", ", ".join(missing))
    return [t for t in names.SINK_SOURCES if t in available]


@dataclass
class SinkProgress:
    """What the sink loop has done, for the sink process's /status."""

    written: dict[str, int] = field(default_factory=dict)
    lag: int | None = None  # records still to read; None until its consumer is assigned and has fetched
    error: str | None = None  # a partition paused for good: a batch there cannot be decoded


async def sink_to_clickhouse(
    bootstrap: str, group_id: str, sink: ClickHouseSink, progress: SinkProgress, stopping: asyncio.Event
) -> None:
    """Batch rows per poll and write each batch once; offsets are committed only after the write."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=TAKE_MAX,
        isolation_level="read_committed",  # as the engine reads: an aborted transaction's records never land
    )
    await consumer.start()
    try:
        consumer.subscribe(await existing_sources(consumer))
        while not stopping.is_set():
            batch = await take(consumer, progress)
            if not batch:
                progress.lag = await lag(consumer)
                continue
            buffer_records(sink, ((record.topic, record.value) for record in batch))
            await flush_until_written(sink, progress.written)
            try:
                await consumer.commit()
            except CommitFailedError as e:
                log.warning("ClickHouse sink: offsets not committed (%s); the rows are stored, a re-read skips them", e)
            progress.lag = await lag(consumer)
    finally:
        await consumer.stop()
