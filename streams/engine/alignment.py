"""Event-time alignment: hold each event until no input partition can still deliver an earlier one.

Each assigned partition has a watermark: the smallest sequence key its next record can have, which is
(ts of the last record read, topic rank, "") because a partition delivers its records in ts order.
An event is released once its key is below every other partition's watermark. A partition that has
no lag and has delivered nothing for `grace` seconds is quiet. Its lag is re-read from the consumer's
current highwater when there is one: records fetched but still queued in faust's buffers, or appended
since the partition's last record, mean it is not quiet, however long it has said nothing.

The consumer's highwater only moves with a fetch response for that partition, so while the consumer is
not fetching (a stalled fetch loop, a busy worker) it goes stale and an unfetched backlog looks like no
lag. With `confirm_idle` a quiet partition is therefore idle only once the broker itself, asked for the
partition's end offset after the moment that matters, shows nothing beyond what it delivered. The
sequencer asks (`due_checks`, `confirm`); see docs/decisions.md.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from streams.engine.ledger import SeqKey

INF_KEY: SeqKey = (2**62, 99, "")
# How long an event waits before it may pass a partition that is idle (see Aligner.release).
ARRIVAL_WAIT_S = 0.5
NEVER = float("-inf")


@dataclass(slots=True)
class PartitionClock:
    """What one input partition has delivered so far."""

    rank: int
    last_ts_ms: int | None = None
    last_arrival: float = 0.0
    lag: int | None = None
    buffered: int = 0
    next_offset: int | None = None
    late: int = 0
    # The broker's end offset for this partition, and when (aligner clock) it was asked for.
    checked_hw: int | None = None
    checked_at: float = NEVER

    def quiet(self, now: float, grace: float, highwater: int | None = None) -> bool:
        """No lag the consumer knows of, and nothing delivered for `grace` seconds."""
        lag = self.lag
        if highwater is not None and self.next_offset is not None:
            lag = highwater - self.next_offset
        return (lag is None or lag <= 0) and now - self.last_arrival >= grace

    def delivered_upto(self, highwater: int | None) -> int | None:
        """The offset this partition's next record will have, as far as known.

        Before its first record: the consumer's highwater, i.e. everything it fetched counts as delivered
        (the old rule, which trusted the consumer for a partition it had not read from yet).
        """
        return self.next_offset if self.next_offset is not None else highwater

    def broker_shows_nothing_more(self, highwater: int | None) -> bool:
        """The last check found no record beyond what this partition delivered."""
        if self.checked_hw is None:
            return False
        upto = self.delivered_upto(highwater)
        return self.checked_hw == 0 if upto is None else self.checked_hw <= upto

    def confirmed(self, since: float, highwater: int | None) -> bool:
        """The broker, asked at or after `since`, had nothing beyond what this partition delivered."""
        return self.checked_at >= since and self.broker_shows_nothing_more(highwater)

    def awaiting_delivery(self, highwater: int | None) -> bool:
        """The last check found records beyond what was delivered: asking again tells nothing new."""
        upto = self.delivered_upto(highwater)
        return self.checked_hw is not None and upto is not None and upto < self.checked_hw

    def watermark(self, now: float, grace: float, highwater: int | None = None, confirm: bool = False) -> SeqKey:
        """The lowest key this partition can still deliver; INF when idle.

        With `confirm`, quiet is not enough: the broker must have been asked since the partition went
        quiet (last arrival + grace) and have shown nothing undelivered.
        """
        idle = self.quiet(now, grace, highwater)
        if idle and confirm:
            idle = self.confirmed(self.last_arrival + grace, highwater)
        return INF_KEY if idle else self.position()

    def position(self) -> SeqKey:
        """The lowest key the partition's next record can have, idle or not (records come in ts order)."""
        if self.last_ts_ms is None:
            return (-(2**62), self.rank, "")
        return (self.last_ts_ms, self.rank, "")


# A held event is a plain tuple (ts, rank, event_id, seq, key, tp, item, arrived): the heap compares its leading
# ints and string in C without descending into a nested key tuple, seq is unique so key, tp and item are never
# compared, and a tuple literal costs a fraction of a NamedTuple's Python-level __new__ (a heap push per event).
_Held = tuple[int, int, str, int, SeqKey, Hashable, Any, float]
_KEY: Final = 4
_TP: Final = 5
_ITEM: Final = 6
_ARRIVED: Final = 7


class Aligner:
    """A min-heap of held events plus one clock per assigned partition."""

    def __init__(
        self,
        grace_seconds: float,
        clock: Callable[[], float],
        highwater: Callable[[Hashable], int | None] | None = None,
        confirm_idle: bool = False,
    ) -> None:
        self.grace = grace_seconds
        self.clock = clock
        self.highwater = highwater
        # Require the broker's word (confirm) before treating a quiet partition as idle.
        self.confirm_idle = confirm_idle
        self.parts: dict[Hashable, PartitionClock] = {}
        self._heap: list[_Held] = []
        self._seq = itertools.count()
        self.released_upto: SeqKey | None = None
        self.late = 0
        self.checks = 0  # broker end-offset answers recorded
        self.stale = 0  # of those, partitions where the broker had records the consumer's highwater did not show

    def assign(self, tp: Hashable, rank: int) -> None:
        """Start tracking a partition; it holds events back until it delivers or goes idle."""
        if tp not in self.parts:
            self.parts[tp] = PartitionClock(rank=rank, last_arrival=self.clock())

    def revoke(self, tp: Hashable) -> list[Any]:
        """Stop tracking a partition and hand back its held events (the new owner reads them again)."""
        self.parts.pop(tp, None)
        dropped = [h[_ITEM] for h in self._heap if h[_TP] == tp]
        if dropped:
            self._heap = [h for h in self._heap if h[_TP] != tp]
            heapq.heapify(self._heap)
        return dropped

    def add(self, tp: Hashable, key: SeqKey, item: Any, lag: int | None = None, offset: int | None = None) -> None:
        """Hold an event read from tp and advance that partition's watermark."""
        part = self.parts[tp]
        part.last_arrival = self.clock()
        part.lag = lag
        if offset is not None:
            part.next_offset = offset + 1
        if part.last_ts_ms is None or key[0] > part.last_ts_ms:
            part.last_ts_ms = key[0]
        part.buffered += 1
        heapq.heappush(self._heap, (key[0], key[1], key[2], next(self._seq), key, tp, item, part.last_arrival))

    def touch(self, tp: Hashable, lag: int | None, offset: int | None = None) -> None:
        """Record a partition's lag without an event (e.g. a skipped or invalid record)."""
        part = self.parts.get(tp)
        if part is not None:
            part.last_arrival = self.clock()
            part.lag = lag
            if offset is not None:
                part.next_offset = offset + 1

    def advance(self, tp: Hashable, next_offset: int) -> None:
        """The consumer's position moved (records returned, or transaction markers and aborted records skipped)."""
        part = self.parts.get(tp)
        if part is not None and (part.next_offset is None or next_offset > part.next_offset):
            part.next_offset = next_offset

    def earliest_held(self) -> SeqKey | None:
        """The key of the first event still waiting (released or not, nothing before it may be skipped)."""
        return self._heap[0][_KEY] if self._heap else None

    def frontier(self) -> SeqKey:
        """The lowest watermark over all partitions: everything below it is safe to apply."""
        return min(self.watermarks().values(), default=INF_KEY)

    def watermarks(self) -> dict[Hashable, SeqKey]:
        """Every partition's watermark now, with its lag re-read from the consumer when it knows one."""
        now = self.clock()
        hw = self.highwater
        c = self.confirm_idle
        return {tp: p.watermark(now, self.grace, hw(tp) if hw else None, c) for tp, p in self.parts.items()}

    def _wait(self) -> float:
        return min(self.grace, ARRIVAL_WAIT_S)

    def due_checks(self) -> list[Hashable]:
        """Quiet partitions whose end offset the broker should be asked for now (empty without confirm_idle).

        One is due when it went quiet after its last check (the frontier needs the broker's word), or when
        the first held event has waited ARRIVAL_WAIT_S and must pass it but was not checked since then.
        One whose last check found records not yet delivered is not due: they will come. When any is
        due, every quiet partition is (one request either way, and the next events need them too).
        """
        if not self.confirm_idle:
            return []
        now = self.clock()
        hw = self.highwater
        top = self._heap[0] if self._heap else None
        top_due = top is not None and now - top[_ARRIVED] >= self._wait()
        quiet, due = [], False
        for tp, p in self.parts.items():
            h = hw(tp) if hw else None
            if not p.quiet(now, self.grace, h) or p.awaiting_delivery(h):
                continue
            quiet.append(tp)
            since = p.last_arrival + self.grace
            if top is not None and top_due and not top[_KEY] < p.position():
                since = max(since, top[_ARRIVED] + self._wait())
            due = due or p.checked_at < since
        return quiet if due else []

    def confirm(self, end_offsets: Mapping[Hashable, int], asked_at: float) -> None:
        """Record the broker's end offsets, as asked for at `asked_at` (aligner clock, before the request)."""
        hw = self.highwater
        for tp, end in end_offsets.items():
            p = self.parts.get(tp)
            if p is None:
                continue
            p.checked_hw, p.checked_at = int(end), asked_at
            self.checks += 1
            h = hw(tp) if hw else None
            upto = p.delivered_upto(h)
            if upto is not None and upto < end and (h is None or h <= upto):
                self.stale += 1

    def next_due(self) -> float | None:
        """Seconds until the first held event will have waited long enough to pass a quiet partition.

        None when nothing is held or it already has (then only a delivery or a check can free it).
        """
        if not self._heap:
            return None
        left = self._heap[0][_ARRIVED] + self._wait() - self.clock()
        return left if left > 0 else None

    def release(self, limit: int) -> list[tuple[SeqKey, Any]]:
        """Pop, in key order, up to `limit` events that are below every partition's watermark.

        Passing an idle partition also needs the event to have waited ARRIVAL_WAIT_S (at most the grace):
        records produced together reach different partitions, and the consumer, a few ms apart, so a
        partition quiet for an hour may be about to deliver a record older than the one that just came.
        With confirm_idle it further needs the broker, asked at least that long after the event arrived,
        to show nothing undelivered on that partition (the consumer's highwater may be stale).
        """
        now = self.clock()
        hw = self.highwater
        busy = INF_KEY
        quiet: list[tuple[SeqKey, PartitionClock, int | None]] = []
        for tp, p in self.parts.items():
            h = hw(tp) if hw else None
            if p.quiet(now, self.grace, h):
                quiet.append((p.position(), p, h))
            else:
                busy = min(busy, p.position())
        quiet.sort(key=lambda q: q[0])
        wait = self._wait()
        confirm = self.confirm_idle
        passed = 0  # quiet[:passed] lie at or below the current event: it must pass each of them
        checked = float("inf")  # the oldest broker check among those
        out: list[tuple[SeqKey, Any]] = []
        heap, parts = self._heap, self.parts
        while heap and len(out) < limit:
            top = heap[0]
            key = top[_KEY]
            if not key < busy:
                break
            while passed < len(quiet) and not key < quiet[passed][0]:
                _, p, h = quiet[passed]
                if confirm and p.checked_hw is not None and not p.broker_shows_nothing_more(h):
                    busy = quiet[passed][0]  # the broker showed it has more: it is not idle
                    break
                checked = min(checked, p.checked_at)
                passed += 1
            if not key < busy:
                break
            arrived = top[_ARRIVED]
            if passed and (now - arrived < wait or (confirm and checked < arrived + wait)):
                break
            heapq.heappop(heap)
            part = parts.get(top[_TP])
            if part is not None:
                part.buffered -= 1
            if self.released_upto is not None and key < self.released_upto:
                self.late += 1
                if part is not None:
                    part.late += 1
            else:
                self.released_upto = key
            out.append((key, top[_ITEM]))
        return out

    def __len__(self) -> int:
        return len(self._heap)

    def buffered_by_partition(self) -> dict[Hashable, int]:
        """How many held events each partition has, for backpressure and the status view."""
        return {tp: p.buffered for tp, p in self.parts.items()}
