"""The spec's examples through the real pipeline: live, as a backlog, and across SIGKILLs."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from streams import names
from streams import stack as stack_mod
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
    assert ch["aggregate_totals"] == expected["totals"], "the daily aggregate disagrees with the ledger"


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


def test_a_second_worker_on_the_same_redis_is_refused(pipe: Env) -> None:
    """Another consumer group writing to the same Redis would pay everything twice: it must not start."""
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
        assert "another worker" in intruder.log_tail() and "FENXIAO_REDIS_URL" in intruder.log_tail()
        assert "--standby" in intruder.log_tail()
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w)
    finally:
        intruder.kill()
        w.stop()
