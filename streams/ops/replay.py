"""Produce scenario records (JSONL of `{"topic", "key", "value"}`) into Kafka, flat out or paced like live traffic."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_PENDING_MAX = 5_000  # unacknowledged sends before we wait: bounds memory, surfaces broker errors early


class ReplayInputError(ValueError):
    """A scenario line that cannot be replayed; the message names the file and line."""


class BrokerUnreachable(ConnectionError):
    """No Kafka broker answered at the bootstrap address."""


class ReplayError(RuntimeError):
    """The broker answered but would not take the records (unknown topic, refused batch)."""


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a scenario file, one per non-blank line; a bad line stops with its line number."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ReplayInputError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReplayInputError(f"{where}: not valid JSON ({e.msg} at column {e.pos + 1})") from None
            if not isinstance(rec, dict):
                raise ReplayInputError(f"{where}: expected an object with topic, key and value, got {_kind(rec)}")
            missing = [k for k in ("topic", "key", "value") if k not in rec]
            if missing:
                raise ReplayInputError(f"{where}: missing {', '.join(missing)} (each line needs topic, key and value)")
            if not isinstance(rec["topic"], str) or not rec["topic"]:
                raise ReplayInputError(f"{where}: topic must be a non-empty string, got {_kind(rec['topic'])}")
            if rec["key"] is not None and not isinstance(rec["key"], str):
                raise ReplayInputError(f"{where}: key must be a string or null, got {_kind(rec['key'])}")
            yield rec


def _kind(v: Any) -> str:
    """A JSON type name for error messages."""
    return (
        "null"
        if v is None
        else {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(v), "a number")
    )


def _text_bytes(s: str) -> bytes:
    """UTF-8, except that lone surrogates \\udc80-\\udcff stand for raw bytes, so a scenario can carry invalid UTF-8."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def value_bytes(value: Any) -> bytes:
    """A record's value as sent: a string is the payload itself (malformed on purpose), anything else compact JSON."""
    return _text_bytes(value) if isinstance(value, str) else _ENCODE(value).encode("utf-8")


def _ts_ms(value: Any) -> int | None:
    """The event time of a record's value in epoch ms, or None when it has no readable `ts`."""
    ts = value.get("ts") if isinstance(value, dict) else None
    if not isinstance(ts, str):
        return None
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return None if dt.tzinfo is None else int(dt.timestamp() * 1000)


class _RateColumn(ProgressColumn):
    """Records per second, from rich's own moving sample."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rec/s", style="progress.data.speed")


class _NoProgress:
    """Stands in for rich's Progress when the bar is off."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> TaskID:
        return TaskID(0)

    def update(self, task_id: TaskID, *, completed: float) -> None:
        return None


def progress_bar(what: str = "records") -> Progress:
    """The bar replay and generate share: count, rate, elapsed; on stderr so stdout stays clean."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(what),
        _RateColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        refresh_per_second=4,
    )


class _Pacer:
    """Sleeps so that sending keeps under `records_per_s` and/or follows event time at `speed`x."""

    def __init__(self, records_per_s: float | None, speed: float | None) -> None:
        if records_per_s is not None and records_per_s <= 0:
            raise ValueError("rate must be > 0 records/s")
        if speed is not None and speed <= 0:
            raise ValueError("realtime speed must be > 0 (1.0 = real time)")
        self.records_per_s, self.speed = records_per_s, speed
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.ts0: int | None = None
        self.wall0 = 0.0

    async def wait(self, n: int, value: Any) -> bool:
        """Wait before the n-th record (0-based); True if it slept."""
        due = self.start + n / self.records_per_s if self.records_per_s else 0.0
        if self.speed:
            ts = _ts_ms(value)
            if ts is not None:
                if self.ts0 is None:
                    self.ts0, self.wall0 = ts, self.loop.time()
                due = max(due, self.wall0 + (ts - self.ts0) / 1000 / self.speed)
        ahead = due - self.loop.time()
        if ahead > 0.002:  # below that, sleeping costs more than it paces; the next sleep catches up
            await asyncio.sleep(ahead)
            return True
        return False


async def produce(
    bootstrap: str,
    records: Iterable[dict[str, Any]],
    *,
    records_per_s: float | None = None,
    realtime_speed: float | None = None,
    progress: bool = True,
    total: int | None = None,
) -> int:
    """Send every record (acks=all, idempotent, keyed), wait for all acks, and return how many were sent."""
    pacer = _Pacer(records_per_s, realtime_speed) if records_per_s or realtime_speed else None
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="fenxiao-replay",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    try:
        await producer.start()
    except KafkaConnectionError as e:
        await producer.stop()
        raise BrokerUnreachable(f"no Kafka broker answers at {bootstrap} ({e})") from None
    n = 0
    known: set[str] = set()
    pending: list[asyncio.Future[Any]] = []
    bar: Progress | _NoProgress = progress_bar() if progress else _NoProgress()
    try:
        with bar:
            task = bar.add_task("replay", total=total)
            loop = asyncio.get_running_loop()
            shown = loop.time()
            for rec in records:
                topic = rec["topic"]
                if topic not in known:
                    await _require_topic(producer, topic, bootstrap)
                    known.add(topic)
                slept = await pacer.wait(n, rec["value"]) if pacer else False
                key = rec.get("key")
                pending.append(
                    await producer.send(
                        topic, value=value_bytes(rec["value"]), key=None if key is None else _text_bytes(key)
                    )
                )
                n += 1
                if len(pending) >= _PENDING_MAX:
                    await _acked(pending)
                if slept or n % 1000 == 0:
                    now = loop.time()
                    if now - shown > 0.1:
                        bar.update(task, completed=n)
                        shown = now
            await producer.flush()
            await _acked(pending)
            bar.update(task, completed=n)
    finally:
        await producer.stop()
    return n


async def _require_topic(producer: AIOKafkaProducer, topic: str, bootstrap: str, wait_s: float = 5.0) -> None:
    """Fail within seconds on a topic the broker lacks (no auto-creation), not hang; a new one may take a moment."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            cluster = await producer.client.fetch_all_metadata()
        except KafkaError as e:
            raise ReplayError(f"cannot read topic metadata from {bootstrap}: {e}") from None
        if cluster.partitions_for_topic(topic):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise ReplayError(f"topic {topic!r} does not exist on {bootstrap} (`fenxiao stack up` creates the topics)")
        await asyncio.sleep(0.25)


async def _acked(pending: list[asyncio.Future[Any]]) -> None:
    """Wait for the outstanding sends; a refused one becomes a ReplayError."""
    try:
        await asyncio.gather(*pending)
    except KafkaError as e:
        raise ReplayError(f"Kafka refused a record: {e!r}") from None
    finally:
        pending.clear()


def count_records(path: str | Path) -> int:
    """Validate the whole file before anything is sent (a bad line must not leave half a scenario in Kafka)."""
    n = 0
    for _ in read_jsonl(path):
        n += 1
    return n


def run_replay(path: str, bootstrap: str, records_per_s: float | None, speed: float | None) -> int:
    """The CLI's entry: validate the file, then produce it; returns the number of records sent."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    aiokafka_log = logging.getLogger("aiokafka")
    if not aiokafka_log.handlers:
        aiokafka_log.addHandler(logging.NullHandler())  # we report failures ourselves, in one line
    total = count_records(path)
    records = read_jsonl(path)
    return asyncio.run(produce(bootstrap, records, records_per_s=records_per_s, realtime_speed=speed, total=total))
