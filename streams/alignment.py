"""Event-time alignment: hold each event until no input partition can still deliver an earlier one.

Each assigned partition has a watermark: the smallest sequence key its next record can have, which is
(ts of the last record read, topic rank, "") because a partition delivers its records in ts order.
An event is released once its key is below every other partition's watermark. A partition that has
no lag and has delivered nothing for `grace` seconds is idle and holds nothing back. Its lag is re-read
from the consumer's current highwater when there is one: records fetched but still queued in faust's
buffers, or appended since the partition's last record, mean it is not idle, however quiet it looks.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from streams.ledger import SeqKey

INF_KEY: SeqKey = (2**62, 99, "")
# How long an event waits before it may pass a partition that is idle (see Aligner.release).
ARRIVAL_WAIT_S = 0.5


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

    def watermark(self, now: float, grace: float, highwater: int | None = None) -> SeqKey:
        """The lowest key this partition can still deliver; INF when idle."""
        lag = self.lag
        if highwater is not None and self.next_offset is not None:
            lag = highwater - self.next_offset
        idle = (lag is None or lag <= 0) and now - self.last_arrival >= grace
        return INF_KEY if idle else self.position()

    def position(self) -> SeqKey:
        """The lowest key the partition's next record can have, idle or not (records come in ts order)."""
        if self.last_ts_ms is None:
            return (-(2**62), self.rank, "")
        return (self.last_ts_ms, self.rank, "")


@dataclass(order=True, slots=True)
class _Held:
    key: SeqKey
    seq: int
    tp: Hashable = field(compare=False)
    item: Any = field(compare=False)
    arrived: float = field(compare=False, default=0.0)


class Aligner:
    """A min-heap of held events plus one clock per assigned partition."""

    def __init__(
        self,
        grace_seconds: float,
        clock: Callable[[], float],
        highwater: Callable[[Hashable], int | None] | None = None,
    ) -> None:
        self.grace = grace_seconds
        self.clock = clock
        self.highwater = highwater
        self.parts: dict[Hashable, PartitionClock] = {}
        self._heap: list[_Held] = []
        self._seq = itertools.count()
        self.released_upto: SeqKey | None = None
        self.late = 0

    def assign(self, tp: Hashable, rank: int) -> None:
        """Start tracking a partition; it holds events back until it delivers or goes idle."""
        if tp not in self.parts:
            self.parts[tp] = PartitionClock(rank=rank, last_arrival=self.clock())

    def revoke(self, tp: Hashable) -> list[Any]:
        """Stop tracking a partition and hand back its held events (the new owner reads them again)."""
        self.parts.pop(tp, None)
        dropped = [h.item for h in self._heap if h.tp == tp]
        if dropped:
            self._heap = [h for h in self._heap if h.tp != tp]
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
        heapq.heappush(self._heap, _Held(key, next(self._seq), tp, item, part.last_arrival))

    def touch(self, tp: Hashable, lag: int | None, offset: int | None = None) -> None:
        """Record a partition's lag without an event (e.g. a skipped or invalid record)."""
        part = self.parts.get(tp)
        if part is not None:
            part.last_arrival = self.clock()
            part.lag = lag
            if offset is not None:
                part.next_offset = offset + 1

    def earliest_held(self) -> SeqKey | None:
        """The key of the first event still waiting (released or not, nothing before it may be skipped)."""
        return self._heap[0].key if self._heap else None

    def frontier(self) -> SeqKey:
        """The lowest watermark over all partitions: everything below it is safe to apply."""
        return min(self.watermarks().values(), default=INF_KEY)

    def watermarks(self) -> dict[Hashable, SeqKey]:
        """Every partition's watermark now, with its lag re-read from the consumer when it knows one."""
        now = self.clock()
        hw = self.highwater
        return {tp: p.watermark(now, self.grace, hw(tp) if hw else None) for tp, p in self.parts.items()}

    def release(self, limit: int) -> list[tuple[SeqKey, Any]]:
        """Pop, in key order, up to `limit` events that are below every partition's watermark.

        Passing an idle partition also needs the event to have waited ARRIVAL_WAIT_S (at most the grace):
        records produced together reach different partitions, and the consumer, a few ms apart, so a
        partition quiet for an hour may be about to deliver a record older than the one that just came.
        """
        now = self.clock()
        hw = self.highwater
        busy, quiet = INF_KEY, INF_KEY
        for tp, p in self.parts.items():
            if p.watermark(now, self.grace, hw(tp) if hw else None) == INF_KEY:
                quiet = min(quiet, p.position())
            else:
                busy = min(busy, p.position())
        wait = min(self.grace, ARRIVAL_WAIT_S)
        out: list[tuple[SeqKey, Any]] = []
        while self._heap and len(out) < limit:
            top = self._heap[0]
            if not top.key < busy or (not top.key < quiet and now - top.arrived < wait):
                break
            heapq.heappop(self._heap)
            if top.tp in self.parts:
                self.parts[top.tp].buffered -= 1
            if self.released_upto is not None and top.key < self.released_upto:
                self.late += 1
                if top.tp in self.parts:
                    self.parts[top.tp].late += 1
            else:
                self.released_upto = top.key
            out.append((top.key, top.item))
        return out

    def __len__(self) -> int:
        return len(self._heap)

    def buffered_by_partition(self) -> dict[Hashable, int]:
        """How many held events each partition has, for backpressure and the status view."""
        return {tp: p.buffered for tp, p in self.parts.items()}
