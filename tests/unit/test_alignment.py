"""Event-time alignment: released order equals the spec's total order, whatever the arrival interleaving."""

from __future__ import annotations

import asyncio
import random

import pytest

from streams.engine.alignment import ARRIVAL_WAIT_S, INF_KEY, Aligner


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _streams(seed: int, parts: int, per_part: int) -> dict[str, list[tuple[int, int, str]]]:
    """Per-partition records in ts order (with ties), as a partition delivers them."""
    rng = random.Random(seed)
    out = {}
    for p in range(parts):
        rank = p % 4
        ts = 0
        recs = []
        for i in range(per_part):
            ts += rng.choice([0, 0, 1, 5, 20])
            recs.append((ts, rank, f"e{p}-{i:04d}"))
        # within one ts a partition may deliver ids in any order
        out[f"p{p}"] = recs
    return out


@pytest.mark.parametrize("seed", range(25))
def test_release_order_is_the_total_order_for_any_interleaving(seed: int) -> None:
    clock = Clock()
    al = Aligner(grace_seconds=10, clock=clock)
    streams = _streams(seed, parts=5, per_part=60)
    for tp, recs in streams.items():
        al.assign(tp, recs[0][1])
    rng = random.Random(seed + 1000)
    cursors = {tp: 0 for tp in streams}
    released: list[tuple[int, int, str]] = []
    while any(cursors[tp] < len(streams[tp]) for tp in streams):
        tp = rng.choice([t for t in streams if cursors[t] < len(streams[t])])
        key = streams[tp][cursors[tp]]
        cursors[tp] += 1
        al.add(tp, key, key, lag=len(streams[tp]) - cursors[tp])
        released.extend(k for k, _ in al.release(rng.randint(1, 7)))
    clock.t += 11  # every partition is drained and idle now
    released.extend(k for k, _ in al.release(10_000))
    everything = sorted(k for recs in streams.values() for k in recs)
    assert released == everything
    assert al.late == 0


def test_held_until_every_other_partition_passes_it() -> None:
    clock = Clock()
    al = Aligner(grace_seconds=10, clock=clock)
    al.assign("orders", 3)
    al.assign("signups", 2)
    al.add("orders", (100, 3, "o1"), "o1", lag=5)
    al.add("orders", (200, 3, "o2"), "o2", lag=4)
    assert al.release(10) == []  # signups has delivered nothing yet
    al.add("signups", (150, 2, "s1"), "s1", lag=3)
    assert [k for k, _ in al.release(10)] == [(100, 3, "o1")]
    al.add("signups", (250, 2, "s2"), "s2", lag=2)
    # o2 also waits for its own partition: it may still deliver another ts-200 order with a smaller id
    assert [k for k, _ in al.release(10)] == [(150, 2, "s1")]
    al.add("orders", (300, 3, "o3"), "o3", lag=3)
    assert [k for k, _ in al.release(10)] == [(200, 3, "o2")]


def test_same_ts_tie_waits_for_a_smaller_id_from_the_same_partition() -> None:
    clock = Clock()
    al = Aligner(grace_seconds=10, clock=clock)
    al.assign("a", 3)
    al.add("a", (100, 3, "z"), "z", lag=1)
    assert al.release(10) == []  # "a" may still deliver (100, 3, "b") which sorts first
    al.add("a", (100, 3, "b"), "b", lag=1)
    al.add("a", (101, 3, "c"), "c", lag=0)
    assert [k for k, _ in al.release(10)] == [(100, 3, "b"), (100, 3, "z")]


def test_idle_partition_releases_after_grace_but_not_while_it_has_lag() -> None:
    clock = Clock()
    al = Aligner(grace_seconds=10, clock=clock)
    al.assign("orders", 3)
    al.assign("tiers", 0)
    al.add("orders", (100, 3, "o1"), "o1", lag=0)
    clock.t += 5
    assert al.release(10) == []
    al.touch("tiers", lag=7)  # tiers has a backlog it has not delivered yet
    clock.t += 20
    assert al.release(10) == []
    al.touch("tiers", lag=0)
    clock.t += 10.5
    assert [k for k, _ in al.release(10)] == [(100, 3, "o1")]
    assert al.frontier() == INF_KEY


@pytest.mark.parametrize(
    ("highwater", "idle"),
    [
        (None, True),  # the consumer has not fetched the partition: fall back to the lag seen with the record
        (6, True),  # the record at offset 5 was the last one
        (7, False),  # one more record was fetched (queued in faust) or appended since
        (40, False),
    ],
)
def test_a_quiet_partition_is_idle_only_if_the_consumers_highwater_says_nothing_follows(
    highwater: int | None, idle: bool
) -> None:
    """The lag seen with the last record goes stale: a later fetch may have found more, still queued."""
    clock = Clock()
    al = Aligner(grace_seconds=1, clock=clock, highwater=lambda tp: highwater if tp == "tiers" else None)
    al.assign("orders", 3)
    al.assign("tiers", 0)
    al.add("tiers", (90, 0, "t1"), "t1", lag=0, offset=5)
    al.add("orders", (100, 3, "o1"), "o1", lag=0)
    clock.t += 2
    released = [k for k, _ in al.release(10)]
    assert released == ([(90, 0, "t1"), (100, 3, "o1")] if idle else [])


def test_revoke_hands_back_that_partitions_events() -> None:
    clock = Clock()
    al = Aligner(grace_seconds=10, clock=clock)
    al.assign("a", 3)
    al.assign("b", 3)
    al.add("a", (1, 3, "a1"), "a1", lag=9)
    al.add("b", (2, 3, "b1"), "b1", lag=9)
    assert al.revoke("a") == ["a1"]
    assert len(al) == 1


def test_late_event_is_released_and_counted() -> None:
    clock = Clock()
    al = Aligner(grace_seconds=1, clock=clock)
    al.assign("a", 3)
    al.add("a", (100, 3, "x"), "x", lag=0)
    clock.t += 2
    assert [k for k, _ in al.release(10)] == [(100, 3, "x")]
    al.add("a", (50, 3, "late"), "late", lag=0)
    clock.t += 2
    assert [k for k, _ in al.release(10)] == [(50, 3, "late")]
    assert al.late == 1


def test_an_event_waits_before_passing_a_partition_that_has_been_quiet_for_long() -> None:
    """A burst after a quiet hour: the record of the quiet partition, produced first, may arrive second."""
    clock = Clock()
    al = Aligner(grace_seconds=1, clock=clock)
    al.assign("p1", 3)
    al.assign("p2", 3)
    al.add("p1", (10, 3, "old1"), "old1", lag=0)
    al.add("p2", (11, 3, "old2"), "old2", lag=0)
    clock.t += 3600
    assert [k for k, _ in al.release(10)] == [(10, 3, "old1"), (11, 3, "old2")]
    al.add("p2", (5000, 3, "b"), "b", lag=0)
    clock.t += ARRIVAL_WAIT_S / 2
    assert al.release(10) == []
    al.add("p1", (4999, 3, "a"), "a", lag=0)
    clock.t += ARRIVAL_WAIT_S / 2
    assert al.release(10) == []
    clock.t += 1.0
    assert [k for k, _ in al.release(10)] == [(4999, 3, "a"), (5000, 3, "b")]
    assert al.late == 0


def test_no_wait_for_an_idle_partition_that_is_already_past_the_event() -> None:
    """A quiet partition whose last record is later than the event can deliver nothing earlier: no wait."""
    clock = Clock()
    al = Aligner(grace_seconds=1, clock=clock)
    al.assign("p1", 3)
    al.assign("p2", 3)
    al.add("p1", (9000, 3, "late-ts"), "x", lag=0)
    clock.t += 5
    al.release(10)
    al.add("p2", (8000, 3, "e"), "e", lag=0)
    al.add("p2", (8001, 3, "f"), "f", lag=0)
    assert [k for k, _ in al.release(10)] == [(8000, 3, "e")]


def test_a_stale_consumer_highwater_does_not_make_a_partition_idle() -> None:
    """The worker fell behind: the consumer has not fetched clicks for longer than the grace, so its
    highwater still says 'nothing more', but the broker already holds an older click. The order may pass
    clicks only once the broker, asked after the order had waited, shows clicks has nothing undelivered."""
    clock = Clock()
    consumer_hw = {"clicks": 6, "orders": 11}  # as of the consumer's last fetch of each partition
    al = Aligner(grace_seconds=1, clock=clock, highwater=consumer_hw.get, confirm_idle=True)
    al.assign("clicks", 1)
    al.assign("orders", 3)
    al.add("clicks", (100, 1, "c1"), "c1", lag=0, offset=5)
    al.add("orders", (300, 3, "o1"), "o1", lag=0, offset=10)
    clock.t += 1.5  # both quiet for longer than the grace; o1 waited longer than ARRIVAL_WAIT_S
    assert al.release(10) == []  # the consumer's highwater alone no longer makes a partition idle
    assert al.due_checks() == ["clicks", "orders"]
    al.confirm({"clicks": 7, "orders": 11}, clock())  # the broker has click offset 6, not yet fetched
    assert al.stale == 1
    assert al.release(10) == []
    assert al.frontier() == (100, 1, "")  # not idle for settlement either
    assert al.due_checks() == []  # nothing new to learn until offset 6 is delivered
    clock.t += 0.1
    consumer_hw["clicks"] = 7
    al.add("clicks", (200, 1, "c2"), "c2", lag=0, offset=6)
    assert [k for k, _ in al.release(10)] == [(100, 1, "c1")]
    clock.t += 1.5
    assert al.release(10) == []  # quiet again: the broker is asked again
    assert al.due_checks() == ["clicks", "orders"]
    al.confirm({"clicks": 7, "orders": 11}, clock())
    assert [k for k, _ in al.release(10)] == [(200, 1, "c2"), (300, 3, "o1")]
    assert al.late == 0


def test_a_broker_answer_asked_for_before_the_event_had_waited_does_not_let_it_pass() -> None:
    clock = Clock()
    al = Aligner(grace_seconds=1, clock=clock, highwater=lambda tp: None, confirm_idle=True)
    al.assign("tiers", 0)
    al.assign("orders", 3)
    al.add("orders", (10, 3, "o0"), "o0", lag=0, offset=0)
    al.add("tiers", (50, 0, "t1"), "t1", lag=0, offset=0)
    clock.t += 2
    assert al.frontier() == (10, 3, "")  # quiet, but the broker has not been asked
    al.confirm({"tiers": 1, "orders": 1}, clock())
    assert [k for k, _ in al.release(10)] == [(10, 3, "o0"), (50, 0, "t1")]
    assert al.frontier() == INF_KEY
    asked = clock()
    clock.t += 0.001
    al.add("orders", (100, 3, "o1"), "o1", lag=0, offset=1)
    clock.t += 1.1
    al.confirm({"tiers": 1, "orders": 2}, asked)  # the answer to a request sent before o1 arrived
    assert al.release(10) == []
    assert al.due_checks() == ["tiers", "orders"]
    al.confirm({"tiers": 1, "orders": 2}, clock())
    assert [k for k, _ in al.release(10)] == [(100, 3, "o1")]


def test_the_sequencer_asks_the_broker_only_when_a_quiet_partition_holds_something_back() -> None:
    from streams.pipeline.sequencer import CHECK_INTERVAL_S, Sequencer
    from tests.unit.test_ledger import program

    clock = Clock()
    asked: list[list[object]] = []
    broker = {"clicks": 7, "orders": 11}

    async def end_offsets(tps: list[object]) -> dict[object, int]:
        asked.append(sorted(map(str, tps)))
        return {tp: broker[str(tp)] for tp in tps}

    seq = Sequencer(program(), store=None, outputs=None, clock=clock)  # type: ignore[arg-type]
    seq.use_broker(end_offsets)
    seq.aligner.highwater = {"clicks": 6, "orders": 11}.get
    seq.aligner.grace = 1
    seq.assign("clicks", 1)
    seq.assign("orders", 3)
    seq.aligner.add("clicks", (100, 1, "c1"), "c1", lag=0, offset=5)
    seq.aligner.add("orders", (300, 3, "o1"), "o1", lag=0, offset=10)

    async def scenario() -> None:
        assert not await seq.confirm_idle()  # nobody is quiet yet
        clock.t += 1.5
        assert await seq.confirm_idle()
        assert asked == [["clicks", "orders"]]
        assert seq.aligner.release(10) == []  # the broker has a click the consumer has not fetched
        assert seq.status()["stale_highwater"] == 1
        clock.t += CHECK_INTERVAL_S
        assert not await seq.confirm_idle()  # and asking again tells nothing until it is delivered
        seq.aligner.add("clicks", (200, 1, "c2"), "c2", lag=0, offset=6)
        clock.t += 1.5
        assert await seq.confirm_idle()
        assert not await seq.confirm_idle()  # answered just now
        assert [k for k, _ in seq.aligner.release(10)] == [(100, 1, "c1"), (200, 1, "c2"), (300, 3, "o1")]

    asyncio.run(scenario())
