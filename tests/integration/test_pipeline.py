"""The spec's examples through the real pipeline: live, as a backlog, and across SIGKILLs."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import redis

from streams import names
from streams.ops import stack as stack_mod
from tests.integration import scenario
from tests.integration.scenario import Env

EXAMPLES = ["basic", "two-level", "messy"]


def assert_outcome(
    pipe: Env, example: str | dict[str, Any], out: scenario.Outputs, diff: list[str], *workers: Any
) -> None:
    """Topics, Redis balances and ClickHouse equal expected.json; a replayed entry_id carries the same record.

    Stops the workers: embedded ClickHouse can only be read once its owner has let go of it.
    """
    logs = "\n".join(w.log_tail() for w in workers)
    assert not diff, "outputs differ from expected.json:\n" + "\n".join(diff) + "\n--- worker log:\n" + logs
    by_id: dict[str, dict[str, Any]] = {}
    for e in out.entries:
        first = by_id.setdefault(e["entry_id"], e)
        assert first == e, f"entry {e['entry_id']} was rewritten with different content: {first} vs {e}"
    expected = scenario.load_expected(example) if isinstance(example, str) else example
    assert pipe.redis_balances() == expected["balances"]
    scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
    for w in workers:
        assert w.stop() == 0, f"worker did not stop cleanly:\n{w.log_tail()}"
    ch = scenario.clickhouse_outcome(pipe.env)
    for section in ("balances", "bindings", "entries", "totals"):
        assert ch[section] == expected[section], f"ClickHouse {section} differ from expected.json"
    commission = {k: expected["totals"][k] for k in ("accrued", "reversed", "settled", "clawed_back")}
    assert ch["aggregate_totals"] == commission, "the daily aggregate (commission kinds only) disagrees with the ledger"


@pytest.mark.parametrize("example", EXAMPLES)
def test_live(pipe: Env, example: str) -> None:
    """Worker running first, then the scenario arrives."""
    w = pipe.worker(example)
    try:
        pipe.produce(scenario.load_records(example))
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()


@pytest.mark.parametrize("example", EXAMPLES)
def test_backlog(pipe: Env, example: str) -> None:
    """Every topic full before the worker starts: topics are consumed at different event-time speeds."""
    run_backlog(pipe, example)


def run_backlog(pipe: Env, example: str) -> None:
    """Produce the whole example, then start a worker with small batches; the outcome must be expected.json."""
    pipe.produce(scenario.load_records(example))
    w = pipe.worker(example, FENXIAO_BATCH_SIZE="97")
    try:
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()


def test_sigkill_mid_scenario_and_restart(pipe: Env) -> None:
    """SIGKILL after part of the scenario is applied, more input while it is down, then a restart."""
    example = "messy"
    records = scenario.load_records(example)
    third = len(records) // 3
    w = pipe.worker(example, FENXIAO_BATCH_SIZE="40")
    try:
        pipe.produce(records[:third])
        deadline = time.monotonic() + 60
        while scenario.http_json(pipe.web_port, "/status")["applied"] == 0:
            assert time.monotonic() < deadline, "nothing was applied before the kill"
            time.sleep(0.1)
        pipe.produce(records[third : 2 * third])
        w.kill()
        pipe.produce(records[2 * third :])
    finally:
        w.kill()
    w2 = pipe.worker(example, FENXIAO_BATCH_SIZE="40")
    try:
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w2)
    finally:
        w2.stop()


@pytest.mark.parametrize("point", ["before_produce", "after_produce", "after_commit"])
def test_crash_inside_a_batch(pipe: Env, point: str) -> None:
    """The worker dies by SIGKILL at a chosen point of its 3rd batch; the restarted worker ends exact."""
    crash_and_recover(pipe, "messy", point, batch=3, batch_size=50)


def crash_and_recover(pipe: Env, example: str, point: str, batch: int, batch_size: int) -> None:
    """Backlog replay with a worker that kills itself (SIGKILL) at `point` of `batch`; a restart must end exact."""
    pipe.produce(scenario.load_records(example))
    w = scenario.WorkerProcess(
        pipe.config(example),
        {**pipe.env, "FENXIAO_BATCH_SIZE": str(batch_size), "FENXIAO_CRASH_AT": f"{point}:{batch}"},
        pipe.tmp / "worker.log",
    )
    rc = w.run_to_exit()
    assert rc == -9, f"the worker should have killed itself at {point} of batch {batch}, exit {rc}:\n{w.log_tail()}"
    w2 = pipe.worker(example, FENXIAO_BATCH_SIZE=str(batch_size))
    try:
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w2)
    finally:
        w2.stop()


def _wait_log(w: scenario.WorkerProcess, text: str, timeout: float) -> None:
    """Wait until the worker printed `text`; fail with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while text not in w.log_tail(200):
        assert w.proc is not None and w.proc.poll() is None, f"worker exited waiting for {text!r}:\n{w.log_tail()}"
        assert time.monotonic() < deadline, f"worker never printed {text!r}:\n{w.log_tail()}"
        time.sleep(0.2)


def test_a_standby_worker_joins_and_takes_over_twice_mid_scenario(pipe: Env) -> None:
    """Workers join as standbys and the owner leaves twice while events flow: every handover is exact."""
    example = "messy"
    records = scenario.load_records(example)
    thirds = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3]]
    thirds.append(records[2 * len(records) // 3 :])
    config = pipe.config(example)
    other_port = stack_mod.pick_free_ports(1)[0]

    def standby(name: str, port: int) -> scenario.WorkerProcess:
        env = {**pipe.env, "FENXIAO_WEB_PORT": str(port), "FENXIAO_BATCH_SIZE": "7"}
        return scenario.WorkerProcess(config, env, pipe.tmp / f"{name}.log", loglevel="info", args=["--standby"])

    first = pipe.worker(example, FENXIAO_BATCH_SIZE="7")
    second = standby("second", other_port).start()
    third = standby("third", pipe.web_port)
    try:
        _wait_log(second, "holds the lease", 60)
        pipe.produce(thirds[0])
        time.sleep(1.5)
        assert first.stop() == 0, f"the first worker did not stop cleanly:\n{first.log_tail()}"
        holder = redis.Redis.from_url(pipe.stack.redis_url, decode_responses=True).get(names.KEY_LEASE)
        assert first.proc is not None and not str(holder).endswith(f":{first.proc.pid}"), "a clean stop keeps the lease"
        pipe.produce(thirds[1])
        _wait_log(second, "took the lease", 30)
        scenario.wait_http(other_port, "/health", 90, second)
        third.start()
        _wait_log(third, "holds the lease", 60)
        pipe.produce(thirds[2])
        time.sleep(1.0)
        assert second.stop() == 0, f"the second worker did not stop cleanly:\n{second.log_tail()}"
        _wait_log(third, "took the lease", 30)
        scenario.wait_http(pipe.web_port, "/health", 90, third)
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, third)
    finally:
        for w in (first, second, third):
            w.kill()


def test_a_worker_of_another_group_on_the_same_redis_is_refused(pipe: Env) -> None:
    """Another consumer group writing to the same Redis is a misconfiguration: it must not start."""
    example = "basic"
    w = pipe.worker(example)
    other_port = stack_mod.pick_free_ports(1)[0]
    intruder = scenario.WorkerProcess(
        pipe.config(example),
        {**pipe.env, "FENXIAO_APP_ID": "fx-test-intruder", "FENXIAO_WEB_PORT": str(other_port)},
        pipe.tmp / "intruder.log",
    ).start()
    try:
        pipe.produce(scenario.load_records(example))
        assert intruder.proc is not None
        rc = intruder.proc.wait(60)
        assert rc == 2, f"the second worker should refuse to start, exit {rc}:\n{intruder.log_tail()}"
        assert "another consumer group" in intruder.log_tail() and "FENXIAO_REDIS_URL" in intruder.log_tail()
        assert "--standby" in intruder.log_tail()
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w)
    finally:
        intruder.kill()
        w.stop()


def _active(workers: list[scenario.WorkerProcess], timeout: float) -> scenario.WorkerProcess:
    """The one of `workers` that took the lease (printed it), waiting for a handover to happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            if "took the lease" in w.log_tail(200):
                return w
        time.sleep(0.2)
    raise AssertionError("no standby took over:\n" + "\n".join(w.log_tail() for w in workers))


def test_workers_started_alike_share_one_topic_set_through_kill_leave_and_join(pipe: Env) -> None:
    """Three `fenxiao worker` processes started the same way: one applies, the others wait and say so on
    /status; the owner is SIGKILLed, its successor leaves with SIGTERM, a fourth joins: the outcome is exact."""
    example = "messy"
    records = scenario.load_records(example)
    parts = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3]]
    parts.append(records[2 * len(records) // 3 :])
    config = pipe.config(example)
    ports = stack_mod.pick_free_ports(3)

    def alike(name: str, port: int) -> scenario.WorkerProcess:
        env = {**pipe.env, "FENXIAO_WEB_PORT": str(port), "FENXIAO_BATCH_SIZE": "7"}
        return scenario.WorkerProcess(config, env, pipe.tmp / f"{name}.log", loglevel="info")

    first = pipe.worker(example, FENXIAO_BATCH_SIZE="7")
    b, c = alike("b", ports[0]).start(), alike("c", ports[1]).start()
    d = alike("d", ports[2])
    try:
        for w in (b, c):
            _wait_log(w, "holds the lease", 60)
        for port in ports[:2]:
            scenario.wait_http(port, "/status", 30, b)
            st = scenario.http_json(port, "/status")
            assert st["role"] == "standby" and st["owned"] == [], st
        owned = scenario.http_json(pipe.web_port, "/status")["owned"]
        assert sorted(owned) == sorted(f"{t}:{p}" for t in names.INPUT_TOPICS for p in range(4)), owned
        pipe.produce(parts[0])
        time.sleep(1.5)
        first.kill()
        pipe.produce(parts[1])
        successor = _active([b, c], 60)
        port = ports[0] if successor is b else ports[1]
        scenario.wait_http(port, "/status", 90, successor)
        time.sleep(1.0)
        assert successor.stop() == 0, f"the successor did not leave cleanly:\n{successor.log_tail()}"
        last = c if successor is b else b
        d.start()
        _wait_log(last, "took the lease", 60)
        _wait_log(d, "holds the lease", 60)
        pipe.produce(parts[2])
        last_port = ports[1] if last is c else ports[0]
        scenario.wait_http(last_port, "/status", 90, last)
        out, diff = pipe.outcome(scenario.load_expected(example))
        d.kill()
        assert_outcome(dataclasses.replace(pipe, web_port=last_port), example, out, diff, last)
    finally:
        for w in (first, b, c, d):
            w.kill()
