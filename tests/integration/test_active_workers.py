"""Active workers sharing the partitions (FENXIAO_TOPOLOGY=staged): the spec's outcome exactly, through kills.

Every worker runs a credit stage over its share of fenxiao.order-steps (12 partitions here, stack.step_partitions,
more than workers); one of them, the lease holder, also runs the attribution stage and the sink. Each test
compares topics, Redis balances and ClickHouse with expected.json (or the reference for a generated sale).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from streams import names
from streams.engine import config as config_mod
from streams.engine import outcome, reference
from streams.ops import flashsale
from streams.ops import stack as stack_mod
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_pipeline import assert_outcome

STAGED = {names.ENV_TOPOLOGY: "staged"}
STEPS = {f"{names.ORDER_STEPS}:{p}" for p in range(stack_mod.step_partitions(4))}


def _workers(pipe: Env, example: str, n: int, **extra: str) -> tuple[list[scenario.WorkerProcess], list[int]]:
    """n staged workers, the first on the test's web port; each on its own port, started alike."""
    ports = [pipe.web_port, *stack_mod.pick_free_ports(n - 1)]
    workers = []
    for i, port in enumerate(ports):
        env = {**pipe.env, **STAGED, "FENXIAO_WEB_PORT": str(port), **extra}
        workers.append(scenario.WorkerProcess(pipe.config(example), env, pipe.tmp / f"w{i}.log", loglevel="info"))
    for w in workers:
        w.start()
    for w, port in zip(workers, ports, strict=True):
        scenario.wait_http(port, "/status", 90, w, scenario.operator_token())
    return workers, ports


def _credit_owned(port: int) -> set[str]:
    st = scenario.http_json(port, "/status", token=scenario.operator_token())
    return {p for p in st.get("owned", []) if p.startswith(names.ORDER_STEPS)}


def _wait_shared(ports: list[int], timeout: float = 90) -> dict[int, set[str]]:
    """Until every order-steps partition is owned by exactly one worker: each but the lease holder owns some,
    and the lease holder (the attribution stage) none unless it is alone."""
    deadline = time.monotonic() + timeout
    seen: dict[int, set[str]] = {}
    while time.monotonic() < deadline:
        try:
            seen = {port: _credit_owned(port) for port in ports}
            leader = _leader_port(ports)
        except (OSError, AssertionError):
            seen, leader = {}, -1
        owned = [p for ps in seen.values() for p in ps]
        others = [ps for port, ps in seen.items() if port != leader]
        lead_ok = len(ports) == 1 or not seen.get(leader)
        if seen and sorted(owned) == sorted(STEPS) and all(others) and lead_ok:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"the order-steps partitions were never shared by the workers: {seen}")


def _leader_port(ports: list[int]) -> int:
    """The worker whose /status shows the input partitions (the attribution stage's lease holder)."""
    for port in ports:
        try:
            st = scenario.http_json(port, "/status", token=scenario.operator_token())
        except OSError:
            continue
        if any(p.startswith(names.ORDERS + ":") for p in st.get("owned", [])):
            return port
    raise AssertionError("no worker holds the input partitions")


def _every_worker_answers_the_api(pipe: Env, example: str, ports: list[int]) -> None:
    """Once the outcome is there, each worker's API gives the same balances (a standby passes requests on)."""
    expected = scenario.load_expected(example)
    pipe.outcome(expected)
    for who, want in expected["balances"].items():
        for port in ports:
            deadline = time.monotonic() + 30
            while True:
                got = scenario.http_json(port, f"/api/distributors/{who}")
                if (got["available_cents"], got["pending_cents"]) == (want["available_cents"], want["pending_cents"]):
                    break
                assert time.monotonic() < deadline, (port, who, got, want)
                time.sleep(0.5)
    no_token = [port for port in ports if _status_code(port, "/api/me", "") != 401]
    assert not no_token, f"workers that answered /api/me without a token other than 401: {no_token}"


def _status_code(port: int, path: str, token: str) -> int:
    import urllib.error

    try:
        scenario.http_json(port, path, token=token)
    except urllib.error.HTTPError as e:
        return e.code
    return 200


def _check_on_the_leader(pipe: Env, example: str, workers: list[scenario.WorkerProcess], ports: list[int]) -> None:
    """Wait for expected.json in the topics, stop all but the lease holder, check Redis and its ClickHouse."""
    out, diff = pipe.outcome(scenario.load_expected(example))
    leader = _leader_port(ports)
    for w, p in zip(workers, ports, strict=True):
        if p != leader:
            assert w.stop() == 0, w.log_tail()
    lead = workers[ports.index(leader)]
    assert_outcome(dataclasses.replace(pipe, web_port=leader), example, out, diff, lead)


@pytest.mark.parametrize("example", ["basic", "two-level", "messy"])
def test_two_active_workers_live(pipe: Env, example: str) -> None:
    """Two workers share the credit partitions (shown on /status); the scenario arrives live: exact."""
    workers, ports = _workers(pipe, example, 2)
    try:
        shared = _wait_shared(ports)
        assert sorted(len(s) for s in shared.values()) == [0, len(STEPS)], shared
        pipe.produce(scenario.load_records(example))
        _every_worker_answers_the_api(pipe, example, ports)
        _check_on_the_leader(pipe, example, workers, ports)
    finally:
        for w in workers:
            w.kill()


@pytest.mark.parametrize("example", ["two-level", "messy"])
def test_three_active_workers_backlog(pipe: Env, example: str) -> None:
    """The whole scenario first, then three workers with small batches: exact."""
    pipe.produce(scenario.load_records(example))
    workers, ports = _workers(pipe, example, 3, FENXIAO_BATCH_SIZE="9")
    try:
        _wait_shared(ports)
        _check_on_the_leader(pipe, example, workers, ports)
    finally:
        for w in workers:
            w.kill()


def test_kill_leave_and_join_while_orders_flow(pipe: Env) -> None:
    """Three workers; the lease holder is SIGKILLed, another leaves with SIGTERM, a new one joins: exact."""
    example = "messy"
    records = scenario.load_records(example)
    thirds = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3]]
    thirds.append(records[2 * len(records) // 3 :])
    workers, ports = _workers(pipe, example, 3, FENXIAO_BATCH_SIZE="7")
    joined: scenario.WorkerProcess | None = None
    try:
        _wait_shared(ports)
        pipe.produce(thirds[0])
        time.sleep(1.5)
        leader = _leader_port(ports)
        workers[ports.index(leader)].kill()
        alive = [(w, p) for w, p in zip(workers, ports, strict=True) if p != leader]
        pipe.produce(thirds[1])
        _wait_shared([p for _, p in alive])
        time.sleep(1.0)
        leaving, staying = alive
        assert leaving[0].stop() == 0, leaving[0].log_tail()
        join_port = stack_mod.pick_free_ports(1)[0]
        env = {**pipe.env, **STAGED, "FENXIAO_WEB_PORT": str(join_port), "FENXIAO_BATCH_SIZE": "7"}
        joined = scenario.WorkerProcess(pipe.config(example), env, pipe.tmp / "joined.log", loglevel="info").start()
        scenario.wait_http(join_port, "/status", 90, joined, scenario.operator_token())
        _wait_shared([staying[1], join_port])
        pipe.produce(thirds[2])
        out, diff = pipe.outcome(scenario.load_expected(example))
        lead_port = _leader_port([staying[1], join_port])
        lead, other = (staying[0], joined) if lead_port == staying[1] else (joined, staying[0])
        assert other.stop() == 0, other.log_tail()
        assert_outcome(dataclasses.replace(pipe, web_port=lead_port), example, out, diff, lead)
    finally:
        for w in [*workers, *([joined] if joined else [])]:
            w.kill()


def test_a_credit_worker_killed_mid_sale_of_a_generated_sale(pipe: Env) -> None:
    """A generated sale (binds at first purchase, refunds, settlements) with a non-leader SIGKILLed mid-run."""
    start = datetime.now(UTC).replace(microsecond=0)
    records = [{"topic": r["topic"], "key": r.get("key"), "value": r["value"]} for r in _sale(start)]
    cfg = pipe.tmp / "sale.toml"
    from streams.ops.demo import program_toml

    cfg.write_text(program_toml(freeze_seconds=1, grace_seconds=1))
    program = config_mod.load(cfg)
    ports = [pipe.web_port, *stack_mod.pick_free_ports(1)]
    workers = []
    for i, port in enumerate(ports):
        env = {**pipe.env, **STAGED, "FENXIAO_WEB_PORT": str(port), "FENXIAO_BATCH_SIZE": "50"}
        workers.append(scenario.WorkerProcess(cfg, env, pipe.tmp / f"s{i}.log", loglevel="info").start())
    try:
        for w, port in zip(workers, ports, strict=True):
            scenario.wait_http(port, "/status", 90, w, scenario.operator_token())
        _wait_shared(ports)
        half = len(records) // 2
        pipe.produce(records[:half])
        time.sleep(2.0)
        leader = _leader_port(ports)
        victim = workers[1 - ports.index(leader)]
        victim.kill()
        pipe.produce(records[half:])
        time.sleep(3.0)  # past the 1 s freeze of the last completions
        ref = reference.run(records, program, int(time.time() * 1000))
        expected = outcome.summarize(ref.entries, ref.bindings, ref.dead_letters)
        assert expected["totals"]["settled"] > 0 and expected["totals"]["reversed"] < 0
        out, diff = pipe.outcome(expected)
        lead = workers[ports.index(leader)]
        assert_outcome(dataclasses.replace(pipe, web_port=leader), expected, out, diff, lead)
    finally:
        for w in workers:
            w.kill()


def _sale(start: datetime) -> list[dict[str, Any]]:
    return list(flashsale.generate(200, 400, 5, start, 20))


def test_a_withdrawal_stops_the_staged_worker_naming_the_setting(pipe: Env) -> None:
    """Withdrawals need the single topology: the attribution stage stops before one and says how to go on."""
    example = "v2/money-out"
    pipe.produce(scenario.load_records(example))
    env = {**pipe.env, **STAGED}
    w = scenario.WorkerProcess(pipe.config(example), env, pipe.tmp / "refused.log", loglevel="info")
    try:
        w.start()
        deadline = time.monotonic() + 90
        while "FENXIAO_TOPOLOGY=single" not in w.log_tail(400):
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.3)
    finally:
        w.kill()


def test_the_credit_commit_is_fenced_by_the_partition_position(pipe: Env) -> None:
    """A batch read at an old position (a redo, or a worker that lost the partition) writes nothing."""
    import asyncio

    import redis as redis_lib

    from streams.engine.ledger import Balance, State
    from streams.state.credit_store import CreditStore, PositionMoved
    from streams.state.referral_store import StateLost

    r = redis_lib.Redis.from_url(pipe.stack.redis_url, decode_responses=True)
    r.set(names.KEY_EPOCH, "e1")
    r.hset(names.KEY_CREDIT_POS, mapping={"0": "10", "1": "4"})

    def batch() -> State:
        state = State(complete=False)
        state.balance_deltas["u"] = Balance(pending=500, earned=500)
        return state

    async def go() -> None:
        store = CreditStore(pipe.stack.redis_url, 0, epoch="e1")
        try:
            await store.commit_credit(batch(), {0: (10, 15), 1: (4, 9)})
            with pytest.raises(PositionMoved):
                await store.commit_credit(batch(), {0: (10, 15)})  # the same batch again
            with pytest.raises(PositionMoved):
                await store.commit_credit(batch(), {1: (9, 12), 0: (12, 20)})  # one of two moved: neither
            store.epoch = "e0"
            with pytest.raises(StateLost):
                await store.commit_credit(batch(), {0: (15, 20)})
        finally:
            await store.close()

    asyncio.run(go())
    assert r.hgetall(names.KEY_CREDIT_POS) == {"0": "15", "1": "9"}
    assert r.hget(names.KEY_BALANCE + "u", "p") == "500"


def test_the_lease_holder_counts_other_credit_stages_by_unexpired_status(pipe: Env) -> None:
    """Only other owners whose status has not expired count; expired ones are removed; Redis down reads -1."""
    import redis as redis_lib

    from streams.pipeline.credit import others_alive

    r = redis_lib.Redis.from_url(pipe.stack.redis_url, decode_responses=True)
    now_ms = int(time.time() * 1000)
    r.zadd(names.KEY_CREDIT_ALIVE, {"me": now_ms + 5000, "w2": now_ms + 5000, "w3": now_ms + 3000, "gone": now_ms - 1})
    assert others_alive(r, "me") == 2
    assert others_alive(r, "w2") == 2
    assert r.zscore(names.KEY_CREDIT_ALIVE, "gone") is None
    r.zadd(names.KEY_CREDIT_ALIVE, {"w2": now_ms - 10, "w3": now_ms - 10})
    assert others_alive(r, "me") == 0
    down = redis_lib.Redis(port=stack_mod.pick_free_ports(1)[0], socket_timeout=0.5, socket_connect_timeout=0.5)
    assert others_alive(down, "me") == -1


def test_a_state_staged_before_the_positions_were_renamed_keeps_its_positions(pipe: Env) -> None:
    """fx:cr:pos (the old name) is renamed at start, not replaced by the topic's end: no step is skipped."""
    import redis as redis_lib

    from streams.pipeline.credit import claim_topology

    r = redis_lib.Redis.from_url(pipe.stack.redis_url, decode_responses=True)
    r.set(names.KEY_TOPOLOGY, "staged")
    r.hset(names.KEY_CREDIT_POS_BEFORE, mapping={"0": "7", "1": "0", "2": "3", "3": "0"})
    pipe.produce([{"topic": names.ORDER_STEPS, "key": "o1", "value": {"x": 1}}] * 5)
    assert claim_topology(pipe.stack.redis_url, pipe.stack.bootstrap, "staged") is None
    got = r.hgetall(names.KEY_CREDIT_POS)
    assert {p: got[p] for p in "0123"} == {"0": "7", "1": "0", "2": "3", "3": "0"}
    assert set(got) == {p.rsplit(":", 1)[1] for p in STEPS}  # partitions the old state never had start at the end
    assert not r.exists(names.KEY_CREDIT_POS_BEFORE)
    r.delete(names.KEY_CREDIT_POS)
    assert claim_topology(pipe.stack.redis_url, pipe.stack.bootstrap, "staged") is None
    assert sum(int(v) for v in r.hgetall(names.KEY_CREDIT_POS).values()) == 5  # a new state starts at the end
