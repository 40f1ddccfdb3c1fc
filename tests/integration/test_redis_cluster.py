"""The Redis layout on a real 3-node Redis Cluster (redis-server --cluster-enabled yes, started here).

The pipeline's outcome on the cluster equals expected.json and the reference, as on one server; a batch
that reached only some nodes before a crash is completed exactly once by the next worker; a node that
comes back empty is noticed instead of being read as "no such user", and the state is rebuilt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from streams import names
from streams.engine import config, outcome, reference
from streams.ops import flashsale
from streams.ops import stack as stack_mod
from streams.ops.demo import program_toml
from streams.state import redis_conn
from streams.state.recovery import ensure_state
from streams.state.redis_cluster import ClusterStore, fence_slots, key_slot, marker_key, slots_lost
from streams.state.referral_store import BatchRequest, LeaseLost, StateLost, acquire_lease
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_pipeline import EXAMPLES, _wait_log, assert_outcome, run_backlog

FREEZE_CONFIG = program_toml(freeze_seconds=30, grace_seconds=1)


def primaries(url: str) -> list[redis.Redis]:
    """One plain client per primary node of the cluster."""
    rc = redis_conn.connect(url)
    try:
        return [redis.Redis(host=n.host, port=n.port) for n in rc.get_primaries()]
    finally:
        rc.close()


@pytest.mark.parametrize("example", EXAMPLES)
def test_spec_examples_on_the_cluster(cpipe: Env, example: str) -> None:
    """Backlog of each spec example, small batches: outputs, Redis balances and ClickHouse equal expected.json."""
    run_backlog(cpipe, example)


def test_generated_sale_on_the_cluster_equals_the_reference(cpipe: Env) -> None:
    """A generated sale with a 30 s freeze spreads its users over every node; the ledger equals the reference."""
    records = list(flashsale.generate(400, 2500, 7, datetime(2026, 11, 11, tzinfo=UTC), 120))
    program = config.parse(FREEZE_CONFIG)
    ref = reference.run(records, program, now_ms=int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000))
    expected = outcome.summarize(ref.entries, ref.bindings, ref.dead_letters)
    cfg = cpipe.tmp / "freeze.toml"
    cfg.write_text(FREEZE_CONFIG)
    cpipe.produce(records)
    w = scenario.WorkerProcess(cfg, {**cpipe.env, "FENXIAO_BATCH_SIZE": "400"}, cpipe.tmp / "worker.log").start()
    try:
        scenario.wait_http(cpipe.web_port, "/health", 90, w)
        out, diff = cpipe.outcome(expected, timeout=180)
        nodes_used = {n.dbsize() > 100 for n in primaries(cpipe.stack.redis_url)}
        assert nodes_used == {True}, "the sale's keys must be spread over all three nodes"
        assert_outcome(cpipe, expected, out, diff, w)
    finally:
        w.stop()


def _fresh(url: str, epoch: str, owner: str) -> None:
    """An empty cluster holding a fenced state of `epoch`, with `owner` holding the lease."""
    redis_conn.flush(url)
    r = redis_conn.connect(url, decode_responses=True)
    try:
        fence_slots(r, epoch)
        r.set(names.KEY_EPOCH, epoch)
    finally:
        r.close()
    acquire_lease(url, owner, wait_s=1)


BALANCE_USERS = [f"u{i}" for i in range(60)]


def _stage_increments(p: Any) -> None:
    """One batch's worth of non-idempotent writes on keys in many slots: a second run would show."""
    for i, uid in enumerate(BALANCE_USERS):
        p.hincrby(names.KEY_BALANCE + uid, "p", 100 + i)
        p.xadd(names.KEY_FEED + uid, {"c": str(i)})


def _read_increments(url: str) -> tuple[dict[str, int], dict[str, int]]:
    r = redis_conn.connect(url, decode_responses=True)
    try:
        pend = {u: int(r.hget(names.KEY_BALANCE + u, "p") or 0) for u in BALANCE_USERS}
        feed = {u: int(r.xlen(names.KEY_FEED + u)) for u in BALANCE_USERS}
        return pend, feed
    finally:
        r.close()


def test_a_batch_applied_on_one_node_only_is_completed_once_by_the_next_worker(cluster_url: str) -> None:
    """Crash after the journal and the first node's apply: the next store redoes the rest, nothing twice."""
    _fresh(cluster_url, "e1", "w1")
    slots_by_node: dict[str, int] = {}
    rc = redis_conn.connect(cluster_url)
    for u in BALANCE_USERS:
        slots_by_node.setdefault(rc.get_node_from_key(names.KEY_BALANCE + u).name, 0)
    rc.close()
    assert len(slots_by_node) == 3, "the test's keys must live on every node"

    async def crash_after_first_node() -> None:
        store = ClusterStore(cluster_url, 0, owner="w1", epoch="e1")
        real = store._run_on_node
        calls = 0
        first_landed = asyncio.Event()

        async def one_node_then_die(node: Any, script: str, args: list[Any], groups: list[Any]) -> tuple[str, str]:
            nonlocal calls
            calls += 1
            if calls > 1:
                await first_landed.wait()  # the nodes are applied concurrently: die only once one has it
                raise ConnectionError("worker killed mid-commit")
            try:
                return await real(node, script, args, groups)
            finally:
                first_landed.set()

        store._run_on_node = one_node_then_die  # type: ignore[method-assign]
        try:
            with pytest.raises(ConnectionError):
                await store._guarded(_stage_increments)
        finally:
            await store.close()

    async def next_worker_loads() -> None:
        store = ClusterStore(cluster_url, 0, owner="w1", epoch="e1")
        try:
            await store.load(BatchRequest(users={"u0"}), 0)
        finally:
            await store.close()

    asyncio.run(crash_after_first_node())
    _, feed = _read_increments(cluster_url)
    half = sum(1 for v in feed.values() if v)
    assert 0 < half < len(BALANCE_USERS), "the crash must leave the batch on some nodes only"
    asyncio.run(next_worker_loads())
    want_pend = {u: 100 + i for i, u in enumerate(BALANCE_USERS)}
    assert _read_increments(cluster_url) == (want_pend, dict.fromkeys(BALANCE_USERS, 1))
    asyncio.run(next_worker_loads())
    assert _read_increments(cluster_url) == (want_pend, dict.fromkeys(BALANCE_USERS, 1)), "redone twice"

    async def one_more_batch() -> None:
        store = ClusterStore(cluster_url, 0, owner="w1", epoch="e1")
        try:
            await store._guarded(_stage_increments)
        finally:
            await store.close()

    asyncio.run(one_more_batch())
    assert _read_increments(cluster_url) == (
        {u: 2 * v for u, v in want_pend.items()},
        dict.fromkeys(BALANCE_USERS, 2),
    )


def test_a_worker_without_the_lease_writes_nothing(cluster_url: str) -> None:
    """The journal script checks the lease before anything reaches a node."""
    _fresh(cluster_url, "e1", "w1")

    async def stale() -> None:
        store = ClusterStore(cluster_url, 0, owner="w2", epoch="e1")
        try:
            with pytest.raises(LeaseLost):
                await store._guarded(_stage_increments)
        finally:
            await store.close()

    asyncio.run(stale())
    assert _read_increments(cluster_url) == (dict.fromkeys(BALANCE_USERS, 0), dict.fromkeys(BALANCE_USERS, 0))


def test_a_node_that_comes_back_empty_is_noticed_and_the_state_rebuilt(cluster_url: str, stack: Any) -> None:
    """Flush one primary: loads touching its slots refuse, ensure_state rebuilds everything with a new epoch."""
    _fresh(cluster_url, "e1", "w1")
    victim = primaries(cluster_url)[1]
    rc = redis_conn.connect(cluster_url)
    where = f"{victim.connection_pool.connection_kwargs['host']}:{victim.connection_pool.connection_kwargs['port']}"
    victim_slots = {s for s in range(16384) if rc.nodes_manager.get_node_from_slot(s).name == where}
    rc.close()
    assert 4000 < len(victim_slots) < 7000
    assert all(victim.exists(marker_key(s)) for s in list(victim_slots)[:50]), "markers live in their own slot"
    user = next(u for u in (f"user{i}" for i in range(1000)) if key_slot(names.KEY_USER + u) in victim_slots)
    victim.flushdb()
    r = redis_conn.connect(cluster_url, decode_responses=True)
    assert set(slots_lost(r, "e1")) == victim_slots

    async def load() -> None:
        store = ClusterStore(cluster_url, 0, owner="w1", epoch="e1")
        try:
            with pytest.raises(StateLost):
                await store.load(BatchRequest(users={user}), 0)
        finally:
            await store.close()

    asyncio.run(load())
    epoch, rebuilt = ensure_state(cluster_url, stack.bootstrap, "fx-cluster-rebuild", owner="w1")
    assert rebuilt and epoch != "e1"
    assert slots_lost(r, epoch) == []
    assert r.get(names.KEY_LEASE) == "w1"
    assert ensure_state(cluster_url, stack.bootstrap, "fx-cluster-rebuild", owner="w1") == (epoch, False)
    r.close()


def test_team_unions_across_slots_end_as_on_one_server(cluster_url: str, stack: Any) -> None:
    """Team unions end as Redis' own ZUNIONSTORE leaves them, on the cluster (ZADDs) and on one server (script)."""
    from streams.state.projections import team_key
    from streams.state.referral_store import RedisStore

    _fresh(cluster_url, "e1", "w1")
    redis_conn.flush(stack.redis_url)
    plain = redis.Redis.from_url(stack.redis_url)
    plain.set(names.KEY_EPOCH, "e1")
    plain.close()
    acquire_lease(stack.redis_url, "w1", wait_s=1)
    keys = [team_key(lvl, u) for lvl in (1, 2, 3) for u in ("boss", "mid", "new")]

    def before(p: Any) -> None:
        p.zadd(team_key(1, "boss"), {"0000000000001|a": 0, "0000000000002|b": 0})
        p.zadd(team_key(1, "new"), {"0000000000003|c": 0})
        p.zadd(team_key(2, "new"), {"0000000000004|d": 0})

    def batch(p: Any) -> None:
        p.zadd(team_key(1, "new"), {"0000000000005|e": 0})
        p.zadd(team_key(1, "mid"), {"0000000000006|new": 0})
        p.zunionstore(team_key(2, "mid"), [team_key(2, "mid"), team_key(1, "new")], aggregate="MAX")
        p.zunionstore(team_key(3, "mid"), [team_key(3, "mid"), team_key(2, "new")], aggregate="MAX")
        p.zunionstore(team_key(3, "boss"), [team_key(3, "boss"), team_key(2, "mid")], aggregate="MAX")

    async def run(store: RedisStore) -> dict[str, list[Any]]:
        try:
            await store._guarded(before)
            await store._guarded(batch)
            return {k: await store.redis.zrange(k, 0, -1, withscores=True) for k in keys}
        finally:
            await store.close()

    on_cluster = asyncio.run(run(ClusterStore(cluster_url, 0, owner="w1", epoch="e1")))
    on_server = asyncio.run(run(RedisStore(stack.redis_url, 0, owner="w1", epoch="e1")))
    # Both stores rewrite the unions (the server's commit script into ZADD GT); Redis' own ZUNIONSTORE is the oracle.
    redis_conn.flush(stack.redis_url)
    plain = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    with plain.pipeline(transaction=True) as native:
        before(native)
        batch(native)
        native.execute()
    by_redis = {k: [(m, sc) for m, sc in plain.zrange(k, 0, -1, withscores=True)] for k in keys}
    plain.close()
    assert on_server == by_redis
    assert on_cluster == by_redis
    assert [m for m, _ in on_cluster[team_key(3, "boss")]] == ["0000000000003|c", "0000000000005|e"]
    assert len({key_slot(k) for k in keys}) == len(keys), "the team keys must be in different slots"


def test_four_workers_on_the_cluster_hand_over_through_a_sigkill_and_a_stop(cpipe: Env) -> None:
    """One owner and three standbys: the owner is SIGKILLed mid-scenario, its successor stops cleanly later.

    Whichever standbys take over, the outcome is exact: a kill that lands between the journal and the last
    node's apply is completed by the next owner, and nothing is applied twice.
    """
    example = "messy"
    records = scenario.load_records(example)
    n = len(records)
    parts = [records[: n // 3], records[n // 3 : 2 * n // 3], records[2 * n // 3 :]]
    config = cpipe.config(example)
    ports = stack_mod.pick_free_ports(3)

    def standby(i: int) -> scenario.WorkerProcess:
        env = {**cpipe.env, "FENXIAO_WEB_PORT": str(ports[i]), "FENXIAO_BATCH_SIZE": "7"}
        return scenario.WorkerProcess(config, env, cpipe.tmp / f"standby{i}.log", loglevel="info", args=["--standby"])

    first = cpipe.worker(example, FENXIAO_BATCH_SIZE="7")
    standbys = [standby(i).start() for i in range(3)]

    def new_owner(among: list[scenario.WorkerProcess], timeout: float) -> scenario.WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for w in among:
                if "took the lease" in w.log_tail(200):
                    return w
            time.sleep(0.2)
        raise AssertionError("no standby took the lease:\n" + "\n".join(w.log_tail() for w in among))

    try:
        for w in standbys:
            _wait_log(w, "holds the lease", 60)
        cpipe.produce(parts[0])
        time.sleep(1.5)
        first.kill()
        cpipe.produce(parts[1])
        second = new_owner(standbys, 60)
        waiting = [w for w in standbys if w is not second]
        scenario.wait_http(ports[standbys.index(second)], "/health", 90, second)
        time.sleep(1.0)
        assert second.stop() == 0, f"the second owner did not stop cleanly:\n{second.log_tail()}"
        cpipe.produce(parts[2])
        third = new_owner(waiting, 30)
        port = ports[standbys.index(third)]
        scenario.wait_http(port, "/health", 90, third)
        final = dataclasses.replace(cpipe, web_port=port)
        out, diff = final.outcome(scenario.load_expected(example))
        for w in waiting:
            if w is not third:
                assert w.stop() == 0, f"the idle standby did not stop cleanly:\n{w.log_tail()}"
        assert_outcome(final, example, out, diff, third)
    finally:
        for w in (first, *standbys):
            w.kill()


@pytest.mark.parametrize("point", ["projector_after_journal:2", "projector_after_write:1"])
def test_read_models_on_the_cluster_equal_one_servers(stack: Any, cluster_url: str, tmp_path: Path, point: str) -> None:
    """The projector killed between its journal and its applies (or after both) ends as on one server, unkilled."""
    from tests.integration.test_sink_process import run_once

    one, _ = run_once(stack, tmp_path / "one", "pj-one")
    on_cluster, _ = run_once(
        stack_mod.ClusterStack(stack, cluster_url), tmp_path / "cluster", "pj-cluster", **{names.ENV_CRASH_AT: point}
    )
    assert on_cluster == one


def test_money_out_on_the_cluster(cpipe: Env) -> None:
    """Contract v2 on three primaries: withdrawals, adjustments and statuses land in their slots through the journal."""
    from tests.integration.test_money_out import EXAMPLE, assert_money_out

    cpipe.produce(scenario.load_records(EXAMPLE))
    w = cpipe.worker(EXAMPLE, FENXIAO_BATCH_SIZE="97")
    try:
        out, diff = cpipe.outcome(scenario.load_expected(EXAMPLE))
        assert_money_out(cpipe, out, diff, w)
    finally:
        w.stop()
