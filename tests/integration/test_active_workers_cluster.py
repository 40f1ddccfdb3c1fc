"""Active workers (FENXIAO_TOPOLOGY=staged) on the 3-node Redis Cluster: the same outcomes, and the credit journal.

The scenarios are test_active_workers' own, run with the cluster's URL. The journal tests crash a credit commit
between its steps (after the journal, after one node) and check that the next process lands it exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from streams import names
from streams.engine.ledger import Balance, State
from streams.state import redis_conn
from streams.state.credit_cluster import ClusterCreditStore
from streams.state.credit_store import PositionMoved
from streams.state.redis_cluster import fence_slots, key_slot
from streams.state.referral_store import StateLost
from tests.integration import test_active_workers as active
from tests.integration.scenario import Env

USERS = [f"u{i}" for i in range(24)]


@pytest.mark.parametrize("example", ["two-level", "messy"])
def test_two_active_workers_live_on_the_cluster(cpipe: Env, example: str) -> None:
    """Two workers share the credit partitions; the scenario arrives live: exact."""
    active.test_two_active_workers_live(cpipe, example)


def test_three_active_workers_backlog_on_the_cluster(cpipe: Env) -> None:
    """The whole messy scenario first, then three workers with small batches: exact."""
    active.test_three_active_workers_backlog(cpipe, "messy")


def test_kill_leave_and_join_on_the_cluster(cpipe: Env) -> None:
    """Three workers; the lease holder SIGKILLed, another leaving with SIGTERM, a new one joining: exact."""
    active.test_kill_leave_and_join_while_orders_flow(cpipe)


def test_a_credit_worker_killed_mid_sale_on_the_cluster(cpipe: Env) -> None:
    """A generated sale with settlements and refunds, a credit worker SIGKILLed mid-way: equals the reference."""
    active.test_a_credit_worker_killed_mid_sale_of_a_generated_sale(cpipe)


def _batch(cents: int) -> State:
    """A credit batch's state change: every test user earns `cents` pending."""
    state = State(complete=False)
    for u in USERS:
        state.balance_deltas[u] = Balance(pending=cents, earned=cents)
    return state


def _pending(r: Any) -> dict[str, int]:
    return {u: int(r.hget(names.KEY_BALANCE + u, "p") or 0) for u in USERS}


def _journal(cpipe: Env, body: Callable[[ClusterCreditStore, ClusterCreditStore, Any], Awaitable[None]]) -> Any:
    """A fenced cluster state (epoch e1, partitions 0 and 1 at 10 and 4) and two credit stores, as two processes."""
    url = cpipe.stack.redis_url
    r = redis_conn.connect(url, decode_responses=True)
    assert len({key_slot(names.KEY_BALANCE + u) for u in USERS}) == len(USERS)
    fence_slots(r, "e1")
    r.set(names.KEY_EPOCH, "e1")
    r.hset(names.KEY_CREDIT_POS, mapping={"0": "10", "1": "4"})

    async def go() -> None:
        a = ClusterCreditStore(url, 0, epoch="e1")
        b = ClusterCreditStore(url, 0, epoch="e1")
        try:
            await body(a, b, r)
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())
    return r


async def _crash_after_journal(store: ClusterCreditStore, cents: int, moves: dict[int, tuple[int, int]]) -> None:
    """Commit with the process dying after step 1: the positions moved, no node has the batch."""

    async def die(*args: Any) -> None:
        raise ConnectionError("killed after the journal")

    land = store._land
    store._land = die  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError):
            await store.commit_credit(_batch(cents), moves)
    finally:
        store._land = land  # type: ignore[method-assign]


def test_a_commit_that_died_after_the_journal_is_landed_once_by_the_next_process(cpipe: Env) -> None:
    """Positions moved, nothing landed: the next seek's redo lands it once; a second redo changes nothing."""

    async def body(a: ClusterCreditStore, b: ClusterCreditStore, r: Any) -> None:
        await _crash_after_journal(a, 500, {0: (10, 15)})
        assert set(_pending(r).values()) == {0}
        assert await b.positions([0]) == {0: 15}
        await b.redo_journal()
        await b.redo_journal()
        assert set(_pending(r).values()) == {500}
        assert not any(f.startswith("n:") for f in r.hkeys(names.KEY_CREDIT_JOURNAL))
        with pytest.raises(PositionMoved):
            await b.commit_credit(_batch(500), {0: (10, 15)})  # the dead process's batch, read again
        await b.commit_credit(_batch(7), {0: (15, 20), 1: (4, 6)})

    r = _journal(cpipe, body)
    assert set(_pending(r).values()) == {507}
    assert r.hgetall(names.KEY_CREDIT_POS) == {"0": "20", "1": "6"}


def test_a_commit_that_reached_one_node_is_completed_without_doubling_it(cpipe: Env) -> None:
    """The process dies after one node ran its share: the redo runs the other nodes' shares only."""

    async def body(a: ClusterCreditStore, b: ClusterCreditStore, r: Any) -> None:
        run = a._run_on_node
        calls: list[int] = []
        first_done = asyncio.Event()

        async def first_node_only(node: Any, script: str, args: list[Any], groups: list[list[Any]]) -> tuple[str, str]:
            calls.append(1)
            if len(calls) == 1:
                try:
                    return await run(node, script, args, groups)
                finally:
                    first_done.set()
            await first_done.wait()
            raise ConnectionError("killed after the first node")

        a._run_on_node = first_node_only  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await a.commit_credit(_batch(500), {0: (10, 15)})
        landed = _pending(r)
        assert sorted(set(landed.values())) == [0, 500], landed  # some users have it, some do not
        await b.redo_journal()

    r = _journal(cpipe, body)
    assert set(_pending(r).values()) == {500}


def test_a_stale_redo_neither_doubles_nor_drops_the_lanes_next_entry(cpipe: Env) -> None:
    """Another process redoes entry 1 late, after the lane wrote entry 2: entry 1 is skipped, entry 2 survives."""

    async def body(a: ClusterCreditStore, b: ClusterCreditStore, r: Any) -> None:
        await a.commit_credit(_batch(500), {0: (10, 15)})
        lane = await a.lane()
        first = a._state_commands(_batch(500), None)
        await _crash_after_journal(a, 20, {0: (15, 18)})
        assert r.hget(names.KEY_CREDIT_JOURNAL, "n:" + lane) == "2"
        await b._land(lane, 1, first)  # read while entry 1 was pending, run now
        assert set(_pending(r).values()) == {500}
        assert r.hget(names.KEY_CREDIT_JOURNAL, "n:" + lane) == "2"
        await a.commit_credit(_batch(1), {0: (18, 19)})  # the lane's own next commit finishes entry 2 first

    r = _journal(cpipe, body)
    assert set(_pending(r).values()) == {521}
    assert r.hget(names.KEY_CREDIT_POS, "0") == "19"


def test_a_changed_epoch_refuses_the_commit_on_the_cluster(cpipe: Env) -> None:
    """A rebuilt state (another epoch) takes no batch of the old one."""

    async def body(a: ClusterCreditStore, b: ClusterCreditStore, r: Any) -> None:
        a.epoch = "e0"
        with pytest.raises(StateLost):
            await a.commit_credit(_batch(500), {0: (10, 15)})

    r = _journal(cpipe, body)
    assert set(_pending(r).values()) == {0}
    assert r.hget(names.KEY_CREDIT_POS, "0") == "10"
