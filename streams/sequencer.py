"""The worker's core loop: release aligned events in batches, apply them, emit outputs, then commit.

Order of effects per batch, chosen for crash safety with at-least-once delivery:
1. load the batch's state from Redis (one Lua call);
2. apply the rules in memory (streams.ledger);
3. produce every output and wait for the broker's acks (ids are deterministic, so a replay rewrites them);
4. write the state back in one atomic Lua call (applied event ids go with it, so a replay is recognised);
5. ack the input records, so their offsets can be committed.
A crash before 4 replays the batch from the same state and produces the same records again; a crash
after 4 replays events the state already shows as applied, which then change nothing.
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

from schemas.events import Event, format_ts
from streams.alignment import INF_KEY, Aligner
from streams.config import Program
from streams.ledger import Binding, Entry, Ledger, LimitedClick, SeqKey, State
from streams.referral_store import BatchRequest, RedisStore

log = logging.getLogger(__name__)

# Least time between two end-offset requests for quiet partitions (see Aligner.due_checks).
CHECK_INTERVAL_S = 0.05
CHECK_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Held:
    """A decoded input record waiting for its turn, with what is needed to dead-letter and ack it."""

    event: Event
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    ack: Callable[[], Any]


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


class Projection(Protocol):
    """A read model kept in Redis from a batch's results, written in the batch's own transaction."""

    def stage(self, pipe: Any, state: State, entries: Sequence[Entry], bindings: Sequence[Binding]) -> None: ...


class Outputs(Protocol):
    """Where a batch's records go; returns once the broker has acknowledged all of them."""

    def send_all(
        self,
        entries: Sequence[Entry],
        bindings: Sequence[Binding],
        dead: Sequence[DeadLetter],
        limited: Sequence[LimitedClick] = (),
    ) -> Awaitable[None]: ...


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
    """Owns the aligner and runs the apply loop; agents only offer records to it."""

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
        projections: Sequence[Projection] = (),
    ) -> None:
        self.program = program
        self.store = store
        self.outputs = outputs
        self.batch_size = batch_size
        self.aligner = Aligner(program.ordering_grace_seconds, clock)
        self.clock = clock
        self.wall_ms = wall_ms
        self.wakeup = asyncio.Event()
        self.stats = Stats()
        self._last_settle_check = 0.0
        self._stopping = False
        self.projections = tuple(projections)
        self._crash_point, _, n = (crash_at or "").partition(":")
        self._crash_batch = int(n) if n else 0
        self.end_offsets: Callable[[list[Hashable]], Awaitable[Mapping[Hashable, int]]] | None = None
        self._last_check = float("-inf")
        self._check_deferred = False

    def use_broker(self, end_offsets: Callable[[list[Hashable]], Awaitable[Mapping[Hashable, int]]]) -> None:
        """Ask the broker (end_offsets) before treating a quiet partition as idle, not the consumer's highwater."""
        self.end_offsets = end_offsets
        self.aligner.confirm_idle = True

    def _maybe_crash(self, point: str) -> None:
        """Fault injection for the crash tests: die like `kill -9` at a chosen point of a chosen batch."""
        if self._crash_point == point and self.stats.batches + 1 == self._crash_batch:
            log.warning("fault injection: SIGKILL at %s of batch %d", point, self._crash_batch)
            os.kill(os.getpid(), signal.SIGKILL)

    def assign(self, tp: Hashable, rank: int) -> None:
        """A partition was assigned: it now holds events back until it delivers or goes idle."""
        self.aligner.assign(tp, rank)

    def revoke(self, tp: Hashable) -> None:
        """A partition went to another worker: forget its held events unacked, the new owner reads them."""
        self.aligner.revoke(tp)

    def offer(
        self, tp: Hashable, rank: int, key: SeqKey, held: Held, lag: int | None, offset: int | None = None
    ) -> None:
        """Hold a decoded event until alignment releases it."""
        self.aligner.assign(tp, rank)
        self.aligner.add(tp, key, held, lag, offset)
        self.wakeup.set()

    async def dead_letter_now(self, dl: DeadLetter) -> None:
        """Refuse a record that is not an event at all; it needs no place in the sequence."""
        await self.outputs.send_all([], [], [dl])
        self.stats.dead_letters += 1

    async def run(self) -> None:
        """Apply batches until stopped; wakes on new events, when a held event may pass an idle partition,
        and at least every 100 ms."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=self._sleep_for())
            self.wakeup.clear()
            while await self.step():
                pass
            if await self.confirm_idle():
                while await self.step():
                    pass

    def _sleep_for(self) -> float:
        t = 0.1
        due = self.aligner.next_due()
        if due is not None:
            t = min(t, due + 0.001)
        if self._check_deferred:
            t = min(t, max(0.001, self._last_check + CHECK_INTERVAL_S - self.clock()))
        return t

    async def confirm_idle(self) -> bool:
        """Ask the broker for quiet partitions' end offsets when a held event or the frontier waits on them.

        The consumer's highwater is only as fresh as its last fetch of that partition: a worker that is
        behind may not have fetched for longer than the grace, and an unfetched backlog then looks idle.
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

    async def step(self) -> bool:
        """Apply one released batch (and due settlements); True if there may be more to do at once."""
        batch = self.aligner.release(self.batch_size)
        now = self.clock()
        if not batch and now - self._last_settle_check < 0.5:
            return False
        self._last_settle_check = now
        settle_until = self._settle_until()
        t0 = time.perf_counter()
        events = [h.event for _, h in batch]
        state = await self.store.load(BatchRequest.for_events(events, self.program.clicks), settle_until)
        if not batch and not state.settle_index:
            return False
        ledger = Ledger(self.program, state)
        entries: list[Entry] = []
        bindings: list[Binding] = []
        dead: list[DeadLetter] = []
        limited: list[LimitedClick] = []
        for key, h in batch:
            entries.extend(ledger.settle_due(min(key[0] - 1, settle_until)))
            res = ledger.apply(h.event, key)
            if res.duplicate:
                self.stats.duplicates += 1
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
        self._maybe_crash("before_produce")
        await self.outputs.send_all(entries, bindings, dead, limited)
        self._maybe_crash("after_produce")

        def stage(pipe: Any) -> None:
            for proj in self.projections:
                proj.stage(pipe, state, entries, bindings)

        await self.store.commit(state, batch[-1][0] if batch else None, stage if self.projections else None)
        self._maybe_crash("after_commit")
        for _, h in batch:
            h.ack()
        self.stats.applied += len(batch)
        self.stats.batches += 1
        self.stats.entries += len(entries)
        self.stats.dead_letters += len(dead)
        self.stats.limited_clicks += len(limited)
        self.stats.last_batch_ms = (time.perf_counter() - t0) * 1000
        return len(batch) == self.batch_size

    def status(self) -> dict[str, object]:
        """What the loop holds and has done, for /status and the demo's live view."""
        marks = self.aligner.watermarks()
        frontier = min(marks.values(), default=INF_KEY)
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
