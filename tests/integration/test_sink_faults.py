"""ClickHouse faults under a running worker: failing inserts, lost acks and a SIGKILL right after a sink insert.

The sink's promise (streams/sinks/sink.py, docs/decisions.md): nothing lost, nothing counted twice in the raw
tables or in the summed aggregates, the commission stream goes on while ClickHouse fails, and once
ClickHouse answers again the sink catches up within the retry policy's longest pause.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from streams import names
from streams.sinks import sink_agent
from streams.sinks.sink import LEDGER, ClickHouseSink
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_pipeline import assert_outcome

EXAMPLE = "messy"
# The write itself once ClickHouse answers (an existence query and an insert per table, chDB in a loaded
# 2-core box) plus the /status poll: added to the policy's longest pause to bound the catch-up.
CATCH_UP_SLACK_S = 4.0

_SUMS = """
import json
from streams.sinks import warehouse
ch = warehouse.connect()
one = lambda sql: [int(v) for v in ch.query(sql)[0]]
print(json.dumps({
    "raw": {t: one(f"SELECT count(), uniqExact({k}) FROM {t}")
            for t, k in [("ledger_entries", "entry_id"), ("orders", "event_id"), ("clicks", "event_id")]},
    "commission_daily": one("SELECT sum(entries), sum(accrued_cents), sum(reversed_cents), sum(settled_cents),"
                            " sum(clawed_back_cents) FROM commission_daily"),
    "ledger": one("SELECT count(), sumIf(amount_cents, kind = 'accrued'), sumIf(amount_cents, kind = 'reversed'),"
                  " sumIf(amount_cents, kind = 'settled'), sumIf(amount_cents, kind = 'clawed_back')"
                  " FROM ledger_entries FINAL"),
    "campaign_minute": one("SELECT sum(paid_orders), sum(gmv_cents), sum(refunded_cents), sum(accrued_cents)"
                           " FROM campaign_minute"),
    "orders_and_accrued": one("SELECT countIf(type = 'paid'), sumIf(ifNull(amount_cents, 0), type = 'paid'),"
                              " sumIf(ifNull(amount_cents, 0), type = 'refunded'),"
                              " (SELECT sumIf(amount_cents, kind = 'accrued') FROM ledger_entries FINAL)"
                              " FROM orders FINAL"),
}))
"""


def assert_nothing_doubled(pipe: Env) -> None:
    """No key stored twice, and every summed aggregate equals the same sums over the deduplicated raw rows."""
    r = subprocess.run(
        [sys.executable, "-c", _SUMS], env={**os.environ, **pipe.env}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    sums: dict[str, Any] = json.loads(r.stdout)
    for table, (rows, keys) in sums["raw"].items():
        assert rows == keys, f"{table}: {rows} rows for {keys} keys: a row was inserted twice"
    assert sums["ledger"][0] > 0, "the ledger is empty, so this check would prove nothing"
    assert sums["commission_daily"] == sums["ledger"], "commission_daily summed a ledger row twice (or missed one)"
    assert sums["campaign_minute"] == sums["orders_and_accrued"], "campaign_minute summed a row twice (or missed one)"


def rows_written(pipe: Env) -> dict[str, int]:
    """Rows the running worker's sink has inserted so far, per table."""
    written: dict[str, int] = scenario.http_json(pipe.web_port, "/status")["sink_rows_written"]
    return written


def worker_policy_longest_pause() -> float:
    """The longest wait between two insert attempts of the sink the worker builds (defaults)."""
    return sink_agent.longest_pause(ClickHouseSink(_NoClickHouse()))


class _NoClickHouse:
    """Enough of a connection to build a sink and read its policy; never queried."""

    def command(self, sql: str, params: Any = None) -> None:
        """Never called."""

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Never called."""
        return []

    def insert(self, table: str, columns: Any, rows: Any) -> None:
        """Never called."""

    def close(self) -> None:
        """Never called."""


def wait_for_log(w: scenario.WorkerProcess, pattern: str, timeout: float) -> str:
    """The worker log once it matches `pattern`; fail with its tail if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        text = w.log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        assert time.monotonic() < deadline, f"the worker never logged {pattern!r}:\n{w.log_tail()}"
        time.sleep(0.5)


def test_an_outage_does_not_block_the_stream_and_clickhouse_catches_up_within_the_policy(pipe: Env) -> None:
    """Every insert fails until the test ends the outage: commissions and balances are exact meanwhile; then CH."""
    expected = scenario.load_expected(EXAMPLE)
    outage = pipe.tmp / "clickhouse-down"
    outage.touch()
    w = pipe.worker(EXAMPLE, **{names.ENV_SINK_FAULT: f"fail-while:{outage}"})
    try:
        pipe.produce(scenario.load_records(EXAMPLE))
        out, diff = pipe.outcome(expected)
        assert not diff, "the commission stream did not reach expected.json while ClickHouse failed:\n" + "\n".join(
            [*diff, w.log_tail()]
        )
        assert pipe.redis_balances() == expected["balances"]
        assert sum(rows_written(pipe).values()) == 0, "rows reached ClickHouse during the outage"
        # Past the sink's own attempts and into the agent's pause: the whole schedule has run at least once.
        log = wait_for_log(w, r"ClickHouse sink: .*keeping the batch and trying again in 5 s", timeout=60)
        assert re.search(r"sink: writing \w+ failed \(attempt 1/5\), retrying in 0\.50s: fault injection", log), log
        assert re.search(r"sink: writing \w+ failed \(attempt 4/5\), retrying in 4\.00s", log), log
        assert "failed after 5 attempts" in log
        outage.unlink()
        ended = time.monotonic()
        while not sum(rows_written(pipe).values()):
            waited = time.monotonic() - ended
            assert waited < worker_policy_longest_pause() + CATCH_UP_SLACK_S, (
                f"ClickHouse still empty {waited:.1f}s after the outage ended:\n{w.log_tail()}"
            )
            time.sleep(0.25)
        assert_outcome(pipe, EXAMPLE, out, diff, w)
    finally:
        w.stop()
    assert_nothing_doubled(pipe)


@pytest.mark.parametrize(
    "fault",
    [
        "fail:7",  # five failed attempts use up one flush, the agent pauses, two more fail, the eighth lands
        "lost-ack:4",  # four inserts land but report failure: the retries must find those rows and skip them
    ],
)
def test_failed_inserts_are_retried_and_land_exactly_once(pipe: Env, fault: str) -> None:
    """The first inserts fail (or land and then fail) as a chDB error would: the final ClickHouse state is exact."""
    w = pipe.worker(EXAMPLE, **{names.ENV_SINK_FAULT: fault})
    try:
        pipe.produce(scenario.load_records(EXAMPLE))
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        failures = int(fault.split(":")[1])
        log = wait_for_log(w, rf"fault injection: insert {failures} into", timeout=60)
        assert len(re.findall(r"sink: writing \w+ failed \(attempt \d/5\)", log)) >= min(failures, 5), log
        assert_outcome(pipe, EXAMPLE, out, diff, w)
    finally:
        w.stop()
    assert_nothing_doubled(pipe)


def _killed_after_first_insert(pipe: Env, table: str) -> scenario.WorkerProcess:
    """Produce the example to a worker whose sink SIGKILLs itself right after its first insert into `table`.

    The worker runs on and starts its sink again (without the fault): that restart is the replay under test.
    """
    pipe.produce(scenario.load_records(EXAMPLE))
    w = pipe.worker(EXAMPLE, **{names.ENV_CRASH_AT: f"sink_insert.{table}:1"})
    wait_for_log(w, rf"SIGKILL after sink insert \d+ \({table}, \d+ rows\)", timeout=90)
    wait_for_log(w, r"the sink process exited with -9; starting it again", timeout=30)
    return w


def test_sigkill_right_after_a_ledger_insert_before_the_ack(pipe: Env) -> None:
    """The sink dies once its first ledger rows are in ClickHouse, offsets unacked: the replay must skip them."""
    w = _killed_after_first_insert(pipe, LEDGER)
    try:
        killed = re.search(
            rf"SIGKILL after sink insert \d+ \({LEDGER}, (\d+) rows\)", w.log.read_text(errors="replace")
        )
        assert killed, w.log_tail()
        before_kill = int(killed.group(1))
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        assert not diff, diff
        scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
        entries = len({e["entry_id"] for e in out.entries})
        assert rows_written(pipe).get(LEDGER, 0) == entries - before_kill, (
            f"{entries} ledger entries, {before_kill} written before the kill: the restart must write exactly the rest"
        )
        assert_outcome(pipe, EXAMPLE, out, diff, w)
    finally:
        w.stop()
    assert_nothing_doubled(pipe)


def test_sigkill_right_after_an_orders_insert_before_the_ack(pipe: Env) -> None:
    """Same kill after the first orders insert (campaign_minute sums orders): exact after the restart."""
    w = _killed_after_first_insert(pipe, "orders")
    try:
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        assert_outcome(pipe, EXAMPLE, out, diff, w)
    finally:
        w.stop()
    assert_nothing_doubled(pipe)
