"""The worker's core loop: read, align, apply in memory, emit outputs, write Redis, then commit offsets.

State lives in memory (a write-through cache of Redis loaded once at start); each batch of aligned events is
applied to it by the pure rules (streams.engine.ledger), and its effects leave in this order, chosen for crash safety
with at-least-once delivery:
1. produce every output and wait for the broker's acks (ids are deterministic, so a replay rewrites them);
2. write the batch's changed keys to Redis in one atomic script (applied event ids go with it);
3. only then may the batch's input offsets be committed.
A crash before 2 replays the batch from the same Redis state and produces the same records again; a crash after
2 replays events the state already shows as applied, which then change nothing. While batch N's outputs and
Redis write are in flight, batch N+1 is applied in memory; writes still land in batch order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition

from schemas.events import Order, Withdrawal, format_ts
from streams import names
from streams.engine.alignment import INF_KEY, Aligner
from streams.engine.config import Program
from streams.engine.ledger import Binding, Entry, Ledger, LimitedClick, State, seq_key
from streams.pipeline.consume import DeadLetter, Held, InputReader, classify
from streams.pipeline.outputs import PlacedRecord
from streams.pipeline.steps import StepValue, pack, step_of
from streams.state.referral_store import CachedState, RedisStore, StagedCommands, withdrawal_view

log = logging.getLogger(__name__)

# Least time between two end-offset requests for quiet partitions (see Aligner.due_checks).
CHECK_INTERVAL_S = 0.05
CHECK_TIMEOUT_S = 5.0
# Offsets are committed at most this often (a crash replays at most this much, which changes nothing).
OFFSET_COMMIT_INTERVAL_S = 1.0
# How often due settlements are looked for while no event arrives.
SETTLE_CHECK_S = 0.5
# Staged topology: least time between two watermarks to the credit stage (each goes to every partition).
WATERMARK_EVERY_S = 0.1
# Events applied between two yields to the event loop while the previous batch is still being written: the apply
# is pure CPU, so without them that write would only move on once the whole next batch is applied.
YIELD_EVERY = 256

OutputRecord = tuple[str, bytes | None, dict[str, object]]

__all__ = ["DeadLetter", "Held", "Outputs", "Sequencer", "Stats", "output_records"]


class Outputs(Protocol):
    """Where a batch's records go; returns once the broker has acknowledged all of them."""

    def send_records(self, records: Sequence[OutputRecord], placed: Sequence[PlacedRecord] = ()) -> Awaitable[None]: ...

    def partition_count(self, topic: str) -> Awaitable[int]: ...


def output_records(
    entries: Sequence[Entry],
    bindings: Sequence[Binding],
    dead: Sequence[DeadLetter],
    limited: Sequence[LimitedClick] = (),
) -> list[OutputRecord]:
    """Commissions by beneficiary, bindings by user, dead letters as their input, limited clicks by visitor."""
    records: list[OutputRecord] = [(names.COMMISSIONS, e.beneficiary_id.encode(), e.as_record()) for e in entries]
    records.extend((names.BINDINGS, b.user_id.encode(), b.as_record()) for b in bindings)
    records.extend((names.DEAD_LETTERS, d.key, d.as_record()) for d in dead)
    records.extend((names.CLICKS_LIMITED, c.visitor_id.encode(), c.as_record()) for c in limited)
    return records


@dataclass
class Stats:
    """Counters for the status view and logs."""

    applied: int = 0
    batches: int = 0
    entries: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    limited_clicks: int = 0
    last_batch_ms: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


class Sequencer:
    """Owns the aligner and the in-memory state, and runs the read-apply-write loop."""

    def __init__(
        self,
        program: Program,
        store: RedisStore,
        outputs: Outputs,
        *,
        batch_size: int = 2000,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        crash_at: str | None = None,
        staged: bool = False,
    ) -> None:
        self.program = program
        self.staged = staged
        self._last_wm = -1
        self._applied_ts = -1
        self._last_wm_at = float("-inf")
        self.store = store
        self.outputs = outputs
        self.batch_size = batch_size
        self.aligner = Aligner(program.ordering_grace_seconds, clock)
        self.clock = clock
        self.wall_ms = wall_ms
        self.wakeup = asyncio.Event()
        self.stats = Stats()
        self.state: State = CachedState()
        self.reader: InputReader | None = None
        self._last_settle_check = float("-inf")
        self._stopping = False
        self._crash_point, _, n = (crash_at or "").partition(":")
        self._crash_batch = int(n) if n else 0
        self.end_offsets: Callable[[list[Hashable]], Awaitable[Mapping[Hashable, int]]] | None = None
        self._last_check = float("-inf")
        self._check_deferred = False
        self._pending_dead: list[DeadLetter] = []
        self._formed = 0
        self._flush: asyncio.Task[None] | None = None
        self._committable: dict[Any, int] = {}
        self._committed: dict[Any, int] = {}
        self._last_offset_commit = float("-inf")
        self._lock = asyncio.Lock()
        self._ip_window = -1
        self._tps: dict[tuple[str, int], TopicPartition] = {}  # one TopicPartition per partition, not per event

    def use_broker(self, end_offsets: Callable[[list[Hashable]], Awaitable[Mapping[Hashable, int]]]) -> None:
        """Ask the broker (end_offsets) before treating a quiet partition as idle, not the consumer's highwater."""
        self.end_offsets = end_offsets
        self.aligner.confirm_idle = True

    def _maybe_crash(self, point: str, batch: int) -> None:
        """Fault injection for the crash tests: die like `kill -9` at a chosen point of a chosen batch."""
        if self._crash_point == point and batch == self._crash_batch:
            log.warning("fault injection: SIGKILL at %s of batch %d", point, self._crash_batch)
            os.kill(os.getpid(), signal.SIGKILL)

    def assign(self, tp: Hashable, rank: int) -> None:
        """A partition was assigned: it now holds events back until it delivers or goes idle."""
        self.aligner.assign(tp, rank)

    def revoke(self, tp: Hashable) -> None:
        """A partition went to another worker: forget its held events, the new owner reads them."""
        self.aligner.revoke(tp)

    # ---- wiring to the consumer ------------------------------------------------

    async def attach(self, reader: InputReader) -> None:
        """Load the whole state from Redis, then read: nothing is decided before the cache is complete."""
        self.state = await self.store.load_all()
        self.reader = reader
        reader.on_assign = self._on_assigned
        reader.on_revoke = self._on_revoked
        self.aligner.highwater = reader.end_offset
        self.use_broker(reader.end_offsets)

    async def _on_assigned(self, tps: list[Any]) -> None:
        for tp in tps:
            if tp.topic in names.TOPIC_RANK:
                self.assign(tp, names.TOPIC_RANK[tp.topic])

    async def _on_revoked(self, tps: list[Any]) -> None:
        """Finish the batch in flight and commit what is applied before the partitions move."""
        await self.drain()
        for tp in tps:
            self.revoke(tp)

    # ---- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Read, align and apply until stopped; on the way out, finish the batch in flight and commit offsets."""
        reader = self.reader
        if reader is None:
            raise RuntimeError("the sequencer has no input reader (attach one first)")
        try:
            while not self._stopping:
                records = await reader.poll(self._poll_ms())
                if self._stopping:
                    break
                self._take(reader, records)
                await self._apply_ready()
                if await self.confirm_idle():
                    await self._apply_ready()
                reader.flow_control(self.aligner.buffered_by_partition(), self._ahead)
                await self._commit_offsets()
        finally:
            await self.drain()

    def _poll_ms(self) -> int:
        t = 0.1
        due = self.aligner.next_due()
        if due is not None:
            t = min(t, due + 0.001)
        if self._check_deferred:
            t = min(t, max(0.001, self._last_check + CHECK_INTERVAL_S - self.clock()))
        return max(1, int(t * 1000))

    def _take(self, reader: InputReader, records: Sequence[Any]) -> None:
        """Decode each record once; hold events for the aligner, queue dead letters for the next batch."""
        book = reader.book
        aligner = self.aligner
        tps: dict[tuple[str, int], TopicPartition] = {}
        for rec in records:
            tp = tps.get((rec.topic, rec.partition))
            if tp is None:
                tp = tps[(rec.topic, rec.partition)] = self._tp_of(rec.topic, rec.partition)
                aligner.assign(tp, names.TOPIC_RANK[rec.topic])
            item = classify(rec)
            if isinstance(item, DeadLetter):
                self._pending_dead.append(item)
                aligner.touch(tp, None, rec.offset)
                continue
            book.read(tp, rec.offset)
            aligner.add(tp, seq_key(names.TOPIC_RANK[rec.topic], item.event), item, None, rec.offset)
        for tp in reader.assignment():
            pos = reader.next_offset(tp)
            if pos is not None:
                book.position(tp, pos)
                aligner.advance(tp, pos)

    def _ahead(self, tp: Any) -> bool:
        """Whether a partition's read position is past the frontier (pausing it cannot hold the frontier back)."""
        part = self.aligner.parts.get(tp)
        return part is not None and part.position() > self.aligner.frontier()

    async def confirm_idle(self) -> bool:
        """Ask the broker for quiet partitions' end offsets when a held event or the frontier waits on them.

        The consumer's end offset is only as fresh as its last fetch of that partition: a worker that is behind
        may not have fetched for longer than the grace, and an unfetched backlog then looks idle.
        True if an answer was recorded (so a release may now pass those partitions).
        """
        self._check_deferred = False
        if self.end_offsets is None:
            return False
        tps = self.aligner.due_checks()
        if not tps:
            return False
        asked_at = self.clock()
        if asked_at - self._last_check < CHECK_INTERVAL_S:
            self._check_deferred = True
            return False
        self._last_check = asked_at
        try:
            offsets = await asyncio.wait_for(self.end_offsets(tps), timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # the partitions stay unconfirmed (not idle); asked again next time
            log.warning("end offsets of %d quiet partitions: %r", len(tps), exc)
            return False
        self.aligner.confirm(offsets, asked_at)
        return True

    def stop(self) -> None:
        """Let the loop finish its current batch and return."""
        self._stopping = True
        self.wakeup.set()

    def _settle_until(self) -> int:
        """Settle what the wall clock has passed, but only strictly before every event not yet applied.

        Not yet applied means both: events a partition may still deliver (below its watermark) and
        events already held here but not in this batch (a batch is cut at batch_size). Settling past
        a held refund would turn its reversal into a clawback.
        """
        bound = self.wall_ms()
        frontier = self.aligner.frontier()
        if frontier != INF_KEY:
            bound = min(bound, frontier[0] - 1)
        held = self.aligner.earliest_held()
        if held is not None:
            bound = min(bound, held[0] - 1)
        return bound

    async def _apply_ready(self) -> None:
        """Apply every released batch (and due settlements), handing each to the writer in order."""
        while await self.step():
            pass

    async def step(self) -> bool:
        """Apply one released batch in memory and start writing it out; True if there may be more at once.

        Holds the lock so that a revoke's drain waits for the batch's write to exist, then for it to land.
        """
        async with self._lock:
            return await self._step()

    async def _step(self) -> bool:
        batch = self.aligner.release(self.batch_size)
        now = self.clock()
        if not batch and not self._pending_dead and now - self._last_settle_check < SETTLE_CHECK_S:
            return False
        self._last_settle_check = now
        t0 = time.perf_counter()
        settle_until = self._settle_until()
        state = self.state
        ledger = Ledger(self.program, state)
        entries: list[Entry] = []
        bindings: list[Binding] = []
        dead, self._pending_dead = self._pending_dead, []
        invalid = len(dead)
        limited: list[LimitedClick] = []
        states: list[OutputRecord] = []
        steps: list[tuple[str, StepValue]] = []
        flush = self._flush
        for i, (key, h) in enumerate(batch):
            if i % YIELD_EVERY == YIELD_EVERY - 1 and flush is not None and not flush.done():
                await asyncio.sleep(0)  # the previous batch's produce and Redis commit make progress meanwhile
            if self.staged and isinstance(h.event, Order):
                res, terms, forward = ledger.attribute_order(h.event)
                if forward:
                    steps.append((h.event.order_id, step_of(h, terms)))
            else:
                if self.staged and isinstance(h.event, Withdrawal):
                    raise StagedUnsupported(
                        f"{h.topic}:{h.partition}@{h.offset}: withdrawals need every settlement due by their ts, "
                        f"which the staged topology's credit stage spreads over workers; run this Redis with "
                        f"{names.ENV_TOPOLOGY}=single (nothing was applied past this event)"
                    )
                res = ledger.step(h.event, key)  # global settlement: every order due by the event's ts settles first
            if res.duplicate:
                self.stats.duplicates += 1
            elif isinstance(h.event, Withdrawal) and not res.rejection:
                states.append(withdrawal_state_record(h.event, state))
            entries.extend(res.entries)
            bindings.extend(res.bindings)
            if res.limited is not None:
                limited.append(res.limited)
            if res.rejection:
                dead.append(
                    DeadLetter(
                        h.topic,
                        h.partition,
                        h.offset,
                        h.key,
                        h.event.event_id,
                        res.rejection,
                        res.detail,
                        h.raw,
                        h.event.ts,
                    )
                )
        entries.extend(ledger.settle_due(settle_until))
        mark_now: int | None = None
        # The credit stage settles up to the watermark: what the wall clock passed, and what the global settlement
        # at each applied event's ts settled here on one worker (every later event is at or after the last one).
        if batch:
            self._applied_ts = max(self._applied_ts, batch[-1][0][0])
        mark = max(settle_until, self._applied_ts)
        if self.staged and mark > self._last_wm and now - self._last_wm_at >= WATERMARK_EVERY_S:
            self._last_wm, self._last_wm_at = mark, now
            mark_now = mark
        if not batch and not entries and not dead and mark_now is None:
            return False
        book = self.reader.book if self.reader is not None else None
        if book is not None:
            for _, h in batch:
                book.released(self._tp_of(h.topic, h.partition), h.offset)
        self._formed += 1
        staged = self.store.stage(state, batch[-1][0] if batch else None)
        state.limited_ids.clear()
        if batch:
            self._forget_old_ip_windows(batch[-1][0][0])
        records = output_records(entries, bindings, dead, limited)
        records.extend(states)
        offsets = book.committable() if book is not None else {}
        await self._wait_flush()
        self._flush = asyncio.create_task(self._write(self._formed, records, staged, offsets, steps, mark_now))
        await asyncio.sleep(0)  # let the write send its first requests before the next batch's apply takes the CPU
        self.stats.applied += len(batch)
        self.stats.batches += 1
        self.stats.entries += len(entries)
        self.stats.dead_letters += len(dead)
        self.stats.extra["invalid"] = self.stats.extra.get("invalid", 0) + invalid
        self.stats.limited_clicks += len(limited)
        self.stats.last_batch_ms = (time.perf_counter() - t0) * 1000
        return len(batch) == self.batch_size

    def _tp_of(self, topic: str, partition: int) -> TopicPartition:
        """The partition's one TopicPartition (a NamedTuple built in Python: not one per event)."""
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = _tp(topic, partition)
        return tp

    def _forget_old_ip_windows(self, ts_ms: int) -> None:
        """Per-ip click counts of windows the sequence has left behind are never read again: drop them."""
        limits = self.program.clicks
        window = limits.window(ts_ms)
        if window <= self._ip_window:
            return
        self._ip_window = window
        counts = self.state.ip_clicks
        for k in [k for k in counts if k[0] < window - 1]:
            del counts[k]

    async def _write(
        self,
        n: int,
        records: list[OutputRecord],
        staged: StagedCommands,
        offsets: dict[Any, int],
        steps: Sequence[tuple[str, StepValue]] = (),
        mark: int | None = None,
    ) -> None:
        """Outputs first (acked), then Redis; only then are the batch's offsets committable."""
        self._maybe_crash("before_produce", n)
        placed: list[PlacedRecord] = []
        if steps or mark is not None:
            parts = await self.outputs.partition_count(names.ORDER_STEPS)
            placed = [(names.ORDER_STEPS, p, raw) for p, raw in pack(steps, mark, parts)]
        await self.outputs.send_records(records, placed)
        self._maybe_crash("after_produce", n)
        await self.store.write(staged)
        self._maybe_crash("after_commit", n)
        self._committable.update(offsets)

    async def _wait_flush(self) -> None:
        """The previous batch's writes must land before the next one's start (and a failure stops the loop)."""
        if self._flush is not None:
            task, self._flush = self._flush, None
            await task

    async def _commit_offsets(self, force: bool = False) -> None:
        now = self.clock()
        if self.reader is None or (not force and now - self._last_offset_commit < OFFSET_COMMIT_INTERVAL_S):
            return
        self._last_offset_commit = now
        todo = {tp: off for tp, off in self._committable.items() if self._committed.get(tp) != off}
        if todo:
            await self.reader.commit(todo)
            self._committed.update(todo)

    async def drain(self) -> None:
        """Finish the batch in flight and commit the offsets of everything written."""
        async with self._lock:
            await self._wait_flush()
            with contextlib.suppress(Exception):
                await self._commit_offsets(force=True)

    def status(self) -> dict[str, object]:
        """What the loop holds and has done, for /status and the demo's live view."""
        marks = self.aligner.watermarks()
        frontier = min(marks.values(), default=INF_KEY)
        reader = self.reader
        owned = sorted(f"{tp.topic}:{tp.partition}" for tp in reader.assignment()) if reader is not None else []
        paused = sorted(f"{tp.topic}:{tp.partition}" for tp in reader.paused) if reader is not None else []
        return {
            "held": len(self.aligner),
            "late": self.aligner.late,
            "idle_checks": self.aligner.checks,
            "stale_highwater": self.aligner.stale,
            "frontier": None if frontier == INF_KEY else format_ts(max(frontier[0], 0)),
            "applied": self.stats.applied,
            "batches": self.stats.batches,
            "entries": self.stats.entries,
            "dead_letters": self.stats.dead_letters,
            "duplicates": self.stats.duplicates,
            "limited_clicks": self.stats.limited_clicks,
            "last_batch_ms": round(self.stats.last_batch_ms, 2),
            "owned": owned,
            "paused": paused,
            "error": reader.error if reader is not None else None,
            "partitions": [
                {
                    "partition": f"{getattr(tp, 'topic', tp)}:{getattr(tp, 'partition', '')}",
                    "last_ts": None if p.last_ts_ms is None else format_ts(p.last_ts_ms),
                    "lag": p.lag,
                    "held": p.buffered,
                    "late": p.late,
                    "idle": marks[tp] == INF_KEY,
                }
                for tp, p in sorted(self.aligner.parts.items(), key=lambda kv: str(kv[0]))
            ],
        }


class StagedUnsupported(RuntimeError):
    """An event the staged topology cannot apply exactly: the worker stops before it (nothing lost)."""


def withdrawal_state_record(ev: Withdrawal, state: State) -> OutputRecord:
    """The fenxiao.withdrawal-states record of an accepted transition, taken now (later events mutate the state)."""
    w = state.withdrawals[ev.withdrawal_id]
    assert w is not None
    value: dict[str, object] = {"id": f"{ev.withdrawal_id}:{w.status}", **withdrawal_view(ev.withdrawal_id, w)}
    del value["requested_ts"], value["updated_ts"]
    value["ts"] = ev.ts
    value["event_id"] = ev.event_id
    return (names.WITHDRAWAL_STATES, w.distributor_id.encode(), value)


def _tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)
