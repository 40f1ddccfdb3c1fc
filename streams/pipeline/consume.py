"""The worker's input: the four input topics read with aiokafka directly, decoded once, offsets tracked by hand.

faust's consumer costs more per record than the rules do, and pausing a partition mid-batch drops what it
fetched; aiokafka's own consumer returns whole fetched batches (`getmany`), keeps a paused partition's
position, and reads committed transactions only. Offsets are committed only up to the first record whose
effects are not yet in Redis (see OffsetBook), so a crash replays exactly what was not applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from schemas.events import Event, Invalid, decode, format_ts
from streams import names
from streams.engine.ledger import INVALID_EVENT, seq_key

log = logging.getLogger(__name__)

# Most records one poll hands over; a fetched batch beyond it stays in the consumer for the next poll.
POLL_MAX_RECORDS = 20_000
# A partition that runs ahead of the frontier is paused once it holds this many events (event-time alignment
# as flow control: a backlog's orders topic cannot fill memory while its signups are still being read).
HOLD_CAP_PER_PARTITION = 40_000


# Every consumer group of the engine's own stages: offsets by hand, committed transactions only, a dead member's
# partitions moved within 10 s.
GROUP_CONSUMER: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 3_000,
    "max_poll_interval_ms": 300_000,
}


@dataclass(slots=True)
class Record:
    """An input record as read: where it came from and its raw bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(slots=True)
class Held:
    """A decoded input record waiting for its turn, with what is needed to dead-letter and commit it."""

    event: Event
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes


@dataclass(slots=True)
class DeadLetter:
    """A refused record: the fenxiao.dead-letters value, keyed as its input."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    event_id: str | None
    reason: str
    detail: str
    raw: bytes
    ts: str

    def as_record(self) -> dict[str, object]:
        """The fenxiao.dead-letters value."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.event_id,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw.decode("utf-8", errors="backslashreplace"),
            "ts": self.ts,
        }


def classify(rec: Record) -> Held | DeadLetter:
    """Decode one record: an event to hold, or a dead letter when it cannot be an event."""
    raw = rec.value if rec.value is not None else b""
    decoded = decode(rec.topic, rec.value)
    if isinstance(decoded, Invalid):
        ts = decoded.ts or format_ts(rec.timestamp_ms)
        return DeadLetter(
            rec.topic, rec.partition, rec.offset, rec.key, decoded.event_id, INVALID_EVENT, decoded.detail, raw, ts
        )
    return Held(decoded, rec.topic, rec.partition, rec.offset, rec.key, raw)


class OffsetBook:
    """Per partition: the offsets read but not yet applied, and so the offset that is safe to commit.

    Events of one partition can be released out of offset order (a record older than its predecessor),
    so released offsets are marked and the front of the queue is trimmed lazily.
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._position: dict[TopicPartition, int] = {}

    def read(self, tp: TopicPartition, offset: int) -> None:
        """A record of tp was read and is held."""
        q = self._open.get(tp)
        if q is None:
            q = self._open[tp] = deque()
        q.append(offset)

    def position(self, tp: TopicPartition, next_offset: int) -> None:
        """Everything of tp before next_offset has been read (markers and aborted records included)."""
        self._position[tp] = next_offset

    def released(self, tp: TopicPartition, offset: int) -> None:
        """A held record of tp is in a batch: once that batch is in Redis, it need not be read again."""
        self._done.setdefault(tp, set()).add(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit: its first record not yet released, else its read position."""
        out: dict[TopicPartition, int] = {}
        for tp, pos in self._position.items():
            q = self._open.get(tp)
            done = self._done.get(tp)
            while q and done and q[0] in done:
                done.discard(q.popleft())
            out[tp] = q[0] if q else pos
        return out

    def position_of(self, tp: TopicPartition) -> int | None:
        """The read position last recorded for tp (everything before it was handed over)."""
        return self._position.get(tp)

    def forget(self, tp: TopicPartition) -> None:
        """tp moved to another worker."""
        self._open.pop(tp, None)
        self._done.pop(tp, None)
        self._position.pop(tp, None)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands rebalances to the reader's owner, awaited before aiokafka rejoins (so offsets are committed first)."""

    def __init__(self, reader: InputReader) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.reader.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.reader.on_assigned(list(assigned))


class InputReader:
    """One aiokafka consumer in the workers' group over the input topics, read_committed."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        client_id: str,
        topics: Iterable[str] = names.INPUT_TOPICS,
    ) -> None:
        self.topics = tuple(topics)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=client_id,
            **GROUP_CONSUMER,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=2 * 1024 * 1024,
        )
        self.group = group
        self.book = OffsetBook()
        self.paused: set[TopicPartition] = set()
        self.stuck: set[TopicPartition] = set()  # paused for good: a batch there cannot be decoded
        self.error: str | None = None
        self.on_assign: Callable[[list[TopicPartition]], Awaitable[None]] | None = None
        self.on_revoke: Callable[[list[TopicPartition]], Awaitable[None]] | None = None
        self._started = False

    async def start(self) -> None:
        """Connect and join the group."""
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Listener(self))
        self._started = True

    async def stop(self) -> None:
        """Leave the group (the owner committed what was applied before this)."""
        if self._started:
            self._started = False
            await self.consumer.stop()

    async def on_assigned(self, tps: list[TopicPartition]) -> None:
        """Tell the owner, so a new partition holds events back until it delivers or goes idle."""
        self.paused -= set(tps) - self.stuck
        for tp in self.stuck & set(tps):
            self.consumer.pause(tp)
        if self.on_assign is not None:
            await self.on_assign(tps)

    async def on_revoked(self, tps: list[TopicPartition]) -> None:
        """Let the owner finish and commit what it applied, then forget the partitions."""
        if self.on_revoke is not None:
            await self.on_revoke(tps)
        for tp in tps:
            self.book.forget(tp)
            self.paused.discard(tp)
            self.stuck.discard(tp)

    def assignment(self) -> set[TopicPartition]:
        """The input partitions this worker reads now."""
        return set(self.consumer.assignment())

    async def poll(self, timeout_ms: int) -> list[Record]:
        """The records fetched since the last poll (every assigned, unpaused partition), in offset order each."""
        try:
            got = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=POLL_MAX_RECORDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a batch the client cannot decode: stop reading it, say where
            found = undecodable_at(exc)
            if found is None:
                raise
            await self._isolate(found[0], found[1], exc)
            return []
        out: list[Record] = []
        for tp, msgs in got.items():
            topic, part = tp.topic, tp.partition
            out.extend(Record(topic, part, m.offset, m.key, m.value, m.timestamp) for m in msgs)
        return out

    async def _isolate(self, tp: TopicPartition, offset: int, exc: Exception) -> None:
        """Pause the partition for good and record why; rewind the others to what was handed over.

        The failed poll may already have moved other partitions' positions past records it never returned;
        seeking them back to the positions recorded after the last poll loses nothing. The stuck partition
        holds every later event back (the spec's order cannot skip it): applying waits at it until the operator
        acts, while the process stays up and /status says where and what to do.
        """
        self._undecodable(tp, offset, exc)
        for other in self.assignment() - {tp}:
            pos = self.book.position_of(other)
            if pos is None:
                committed = await self.consumer.committed(other)
                if committed is None:
                    await self.consumer.seek_to_beginning(other)
                    continue
                pos = committed
            self.consumer.seek(other, pos)

    def _undecodable(self, tp: TopicPartition, offset: int, exc: Exception) -> None:
        self.consumer.pause(tp)
        self.paused.add(tp)
        self.stuck.add(tp)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.error = (
            f"{tp.topic} partition {tp.partition} offset {offset}: a record batch the client cannot decode "
            f"({reason}); applying stopped at it (every later event waits). Check the producer's codec; a missing "
            f"codec library is a pinned dependency (pip install -e .); to skip the batch, move group "
            f"{self.group} past it (kafka-consumer-groups --reset-offsets --to-offset <next> --topic "
            f"{tp.topic}:{tp.partition}) with the workers stopped, then start them"
        )
        log.error("%s", self.error)

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The consumer's position in tp: past every record returned and every marker or aborted record skipped."""
        try:
            state = self.consumer._subscription.subscription.assignment.state_value(tp)
        except (AttributeError, KeyError):
            return None
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    def end_offset(self, tp: TopicPartition) -> int | None:
        """The last stable offset from the latest fetch (read_committed: nothing at or past it is deliverable yet)."""
        try:
            lso = self.consumer.last_stable_offset(tp)
            hw = self.consumer.highwater(tp)
        except (AssertionError, KafkaError):
            return None
        v = lso if lso is not None and lso >= 0 else hw
        return None if v is None or v < 0 else int(v)

    def flow_control(self, held: dict[Any, int], ahead: Callable[[TopicPartition], bool]) -> None:
        """Pause a partition that holds too much and is ahead of the frontier; resume it once it has drained."""
        for tp in self.assignment():
            n = held.get(tp, 0)
            if tp in self.stuck:
                continue
            if tp in self.paused:
                if n <= HOLD_CAP_PER_PARTITION // 2 or not ahead(tp):
                    self.consumer.resume(tp)
                    self.paused.discard(tp)
            elif n >= HOLD_CAP_PER_PARTITION and ahead(tp):
                self.consumer.pause(tp)
                self.paused.add(tp)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit offsets of partitions still assigned; a failed commit is retried with the next one."""
        mine = self.assignment()
        todo = {tp: off for tp, off in offsets.items() if tp in mine}
        if not todo:
            return
        try:
            await self.consumer.commit(todo)
        except KafkaError as exc:
            log.warning("offset commit failed (retried with the next one): %r", exc)

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        """The broker's last stable offsets now (a ListOffsets request), for idle checks."""
        got = await asyncio.wait_for(self.consumer.end_offsets(list(tps)), timeout=5.0)
        return {tp: int(v) for tp, v in got.items()}


def undecodable_at(exc: BaseException) -> tuple[TopicPartition, int] | None:
    """The partition and offset of the record batch whose decoding raised exc, from aiokafka's own frames.

    aiokafka raises a codec's or CRC check's error from inside its per-partition record iterator without
    naming the partition; that iterator (its `_tp` and `next_fetch_offset`, the failing batch's first offset)
    is on the traceback.
    """
    found: tuple[TopicPartition, int] | None = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        tp = getattr(owner, "_tp", None)
        offset = getattr(owner, "next_fetch_offset", None)
        if isinstance(tp, TopicPartition) and isinstance(offset, int):
            found = (tp, offset)
        tb = tb.tb_next
    return found


def rank_of(topic: str) -> int:
    """The spec's same-ts tie-break rank of an input topic."""
    return names.TOPIC_RANK[topic]


__all__ = ["DeadLetter", "Held", "InputReader", "OffsetBook", "Record", "classify", "rank_of", "seq_key"]


async def unread(consumer: Any, parts: Iterable[TopicPartition]) -> int | None:
    """Records still to read on these partitions, None until each has been fetched once.

    Read committed: an open transaction's records are not readable yet, so count up to the stable offset.
    """
    total = 0
    for tp in parts:
        hw = consumer.last_stable_offset(tp)
        if hw is None:
            hw = consumer.highwater(tp)
        if hw is None:
            return None
        total += max(0, hw - await consumer.position(tp))
    return total
