"""Contract v2 through the real pipeline: money-out live, as a backlog, across a SIGKILL, and a withdrawal race.

Each run must equal expected.json in the topics (entries, dead letters, bindings) and in Redis (all four
balances), and leave the withdrawal state of common.md in Redis and on fenxiao.withdrawal-states.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from streams import names
from streams.state import redis_conn
from tests.integration import scenario
from tests.integration.scenario import Env

EXAMPLE = "v2/money-out"

# Paid withdrawals of money-out, hand-computed from its events and [withdrawals] (fee_bps 60, fee_min_cents 10):
# fee = max(10, (amount * 60 + 5000) // 10000); 30000 -> 180, 500 -> 3 -> 10.
PAID = {
    "wd-4-1": ("u4-1", 500, 10),
    "wd-4-2": ("u4-2", 500, 10),
    "wd-4-3": ("u4-4", 30000, 180),
    "wd-4-12": ("u4-1", 30000, 180),
    "wd-4-15": ("u4-5", 500, 10),
}
# Released ones (the entries w:...|released): rejected or failed, nothing paid.
RELEASED = {"wd-4-5": ("u4-2", 500), "wd-4-7": ("u4-0", 100), "wd-4-14": ("u4-2", 100)}


def redis_withdrawals(url: str) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, list[str]]]:
    """fx:w:<id> states, the open queue fx:wq and every fx:wu:<distributor> zset, as Redis holds them."""
    r = redis_conn.connect(url, decode_responses=True)
    try:
        states = {
            k[len(names.KEY_WITHDRAWAL) :]: json.loads(r.hget(k, "s"))
            for k in r.scan_iter(match=names.KEY_WITHDRAWAL + "*", count=1000)
        }
        queue = list(r.zrange(names.KEY_WITHDRAWAL_QUEUE, 0, -1))
        per_user = {
            k[len(names.KEY_DISTRIBUTOR_WITHDRAWALS) :]: list(r.zrange(k, 0, -1))
            for k in r.scan_iter(match=names.KEY_DISTRIBUTOR_WITHDRAWALS + "*", count=1000)
        }
        return states, queue, per_user
    finally:
        r.close()


def assert_money_out(pipe: Env, out: scenario.Outputs, diff: list[str], *workers: scenario.WorkerProcess) -> None:
    """Topics and Redis (balances, withdrawal state) equal money-out's expected outcome."""
    logs = "\n".join(w.log_tail() for w in workers)
    assert not diff, "outputs differ from expected.json:\n" + "\n".join(diff) + "\n--- worker log:\n" + logs
    by_id: dict[str, dict[str, Any]] = {}
    for e in out.entries:
        first = by_id.setdefault(e["entry_id"], e)
        assert first == e, f"entry {e['entry_id']} was rewritten with different content: {first} vs {e}"
    expected = scenario.load_expected(EXAMPLE)
    assert pipe.redis_balances(v2=True) == expected["balances"]
    withdrawn = {e["withdrawal_id"]: e for e in by_id.values() if e["kind"] == "withdrawn"}
    assert {w: (e["beneficiary_id"], -e["amount_cents"], e["fee_cents"]) for w, e in withdrawn.items()} == PAID
    for e in withdrawn.values():
        assert e["payout_cents"] == -e["amount_cents"] - e["fee_cents"]
    assert_states(out.withdrawal_states)
    states, queue, per_user = redis_withdrawals(pipe.stack.redis_url)
    assert queue == [], "every reserved balance is 0, so no withdrawal may be open"
    final = {w: (s["distributor_id"], s["status"], s["amount_cents"]) for w, s in states.items()}
    assert {w: v for w, v in final.items() if v[1] == "paid"} == {w: (u, "paid", a) for w, (u, a, _) in PAID.items()}
    assert {w: (u, a) for w, (u, st, a) in final.items() if st in ("rejected", "failed")} == RELEASED
    assert set(final) == set(PAID) | set(RELEASED), "a refused request must leave no withdrawal behind"
    for w, (u, _, _) in final.items():
        assert w in per_user[u], f"{w} missing from {names.KEY_DISTRIBUTOR_WITHDRAWALS}{u}"
    for w, (_, amount, fee) in PAID.items():
        assert (states[w]["fee_cents"], states[w]["payout_cents"]) == (fee, amount - fee)
    for w in RELEASED:
        assert (states[w]["fee_cents"], states[w]["payout_cents"]) == (None, None)


def assert_clickhouse(pipe: Env, *workers: scenario.WorkerProcess) -> None:
    """ClickHouse (read once the workers let go of embedded chDB) equals expected.json: all four balances too."""
    expected = scenario.load_expected(EXAMPLE)
    scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
    for w in workers:
        assert w.stop() == 0, f"worker did not stop cleanly:\n{w.log_tail()}"
    ch = scenario.clickhouse_outcome(pipe.env)
    for section in ("balances", "bindings", "entries", "totals"):
        assert ch[section] == expected[section], f"ClickHouse {section} differ from expected.json"


def assert_states(records: Sequence[dict[str, Any]]) -> None:
    """fenxiao.withdrawal-states: every accepted transition once (a replay repeats the same record) in a valid path."""
    by_id: dict[str, dict[str, Any]] = {}
    for rec in records:
        first = by_id.setdefault(rec["id"], rec)
        assert first == rec, f"state {rec['id']} was rewritten with different content: {first} vs {rec}"
        assert rec["id"] == f"{rec['withdrawal_id']}:{rec['status']}"
    path: dict[str, list[str]] = {}
    for rec in sorted(by_id.values(), key=lambda r: (r["ts"], r["event_id"])):
        path.setdefault(rec["withdrawal_id"], []).append(rec["status"])
    for w in PAID:
        assert path[w] == ["requested", "approved", "paid"], (w, path[w])
    for w in RELEASED:
        assert path[w] in (
            ["requested", "rejected"],
            ["requested", "approved", "rejected"],
            ["requested", "approved", "failed"],
        ), (
            w,
            path[w],
        )
    assert set(path) == set(PAID) | set(RELEASED)
    paid = {r["withdrawal_id"]: r for r in by_id.values() if r["status"] == "paid"}
    for w, (u, amount, fee) in PAID.items():
        rec = paid[w]
        assert (rec["distributor_id"], rec["amount_cents"], rec["fee_cents"], rec["payout_cents"]) == (
            u,
            amount,
            fee,
            amount - fee,
        )


def test_money_out_live(pipe: Env) -> None:
    """Worker first, then the example arrives."""
    w = pipe.worker(EXAMPLE)
    try:
        pipe.produce(scenario.load_records(EXAMPLE))
        expected = scenario.load_expected(EXAMPLE)
        out, diff = pipe.outcome(expected)
        assert_money_out(pipe, out, diff, w)
        four = ("pending_cents", "available_cents", "reserved_cents", "withdrawn_cents")
        for uid, balances in expected["balances"].items():
            got = scenario.http_json(pipe.web_port, f"/api/distributors/{uid}")
            assert {k: got[k] for k in four} == balances, uid
        # The example's status events: u4-65 approved (signed up as a non-distributor), u4-77 frozen.
        statuses = {
            u: scenario.http_json(pipe.web_port, f"/api/distributors/{u}")["status"] for u in ("u4-65", "u4-77")
        }
        assert statuses == {"u4-65": "active", "u4-77": "frozen"}
        assert scenario.http_json(pipe.web_port, "/api/distributors/u4-1")["status"] is None
        assert_clickhouse(pipe, w)
    finally:
        w.stop()


def test_money_out_backlog(pipe: Env) -> None:
    """All seven topics full before the worker starts, small batches: consumed at different event-time speeds."""
    pipe.produce(scenario.load_records(EXAMPLE))
    w = pipe.worker(EXAMPLE, FENXIAO_BATCH_SIZE="97")
    try:
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        assert_money_out(pipe, out, diff, w)
        assert_clickhouse(pipe, w)
    finally:
        w.stop()


def test_money_out_across_a_sigkill(pipe: Env) -> None:
    """SIGKILL mid-scenario with more input arriving while it is down; the restart reloads v2 state and ends exact."""
    records = scenario.load_records(EXAMPLE)
    third = len(records) // 3
    w = pipe.worker(EXAMPLE, FENXIAO_BATCH_SIZE="40")
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
    w2 = pipe.worker(EXAMPLE, FENXIAO_BATCH_SIZE="40")
    try:
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        assert_money_out(pipe, out, diff, w2)
        assert_clickhouse(pipe, w2)
    finally:
        w2.stop()


def test_money_out_crash_after_commit_reloads_withdrawals(pipe: Env) -> None:
    """A SIGKILL right after a batch's Redis write: the restart must see its withdrawals and adjustments."""
    pipe.produce(scenario.load_records(EXAMPLE))
    w = scenario.WorkerProcess(
        pipe.config(EXAMPLE),
        {**pipe.env, "FENXIAO_BATCH_SIZE": "200", "FENXIAO_CRASH_AT": "after_commit:5"},
        pipe.tmp / "worker.log",
    )
    rc = w.run_to_exit()
    assert rc == -9, f"the worker should have killed itself, exit {rc}:\n{w.log_tail()}"
    w2 = pipe.worker(EXAMPLE, FENXIAO_BATCH_SIZE="200")
    try:
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        assert_money_out(pipe, out, diff, w2)
    finally:
        w2.stop()


# ---- a withdrawal racing a clawback, the withdrawals topic read first ------------------------------------------

RACE_TOML = """
[program]
levels = 1
self_purchase = false
attribution_window_seconds = 86400
freeze_seconds = 1
max_total_bps = 3000

[tiers.standard]
rates_bps = [1000]

[withdrawals]
min_cents = 100

[pipeline]
ordering_grace_seconds = 15
"""


def _ev(topic: str, key: str, **value: Any) -> dict[str, Any]:
    return {"topic": topic, "key": key, "value": value}


def _ts(second: int) -> str:
    return f"2026-11-11T00:00:{second:02d}.000Z"


RACE_FIRST = [
    _ev(names.SIGNUPS, "u1", event_id="s1", ts=_ts(0), user_id="u1"),
    _ev(names.SIGNUPS, "b1", event_id="s2", ts=_ts(1), user_id="b1", ref="u1"),
    _ev(names.ORDERS, "b1", event_id="o1-p", ts=_ts(2), order_id="o1", type="paid", buyer_id="b1", amount_cents=10000),
]
RACE_WITHDRAWALS = [
    # 800 > the 500 left after the clawback at 00:05: refused. Applied before the refund it would double spend.
    _ev(names.WITHDRAWALS, "u1", event_id="w1-r", ts=_ts(6), withdrawal_id="w1", distributor_id="u1",
        type="requested", amount_cents=800),
    _ev(names.WITHDRAWALS, "u1", event_id="w2-r", ts=_ts(7), withdrawal_id="w2", distributor_id="u1",
        type="requested", amount_cents=500),
    # At 00:09 exactly o2 settles (completed 00:08 + 1 s): global settlement lets this request see its 200.
    _ev(names.WITHDRAWALS, "u1", event_id="w3-r", ts=_ts(9), withdrawal_id="w3", distributor_id="u1",
        type="requested", amount_cents=200),
]  # fmt: skip
RACE_LAST = [
    _ev(names.ORDERS, "b1", event_id="o1-c", ts=_ts(3), order_id="o1", type="completed", buyer_id="b1"),
    _ev(names.ORDERS, "b1", event_id="o1-r", ts=_ts(5), order_id="o1", type="refunded", buyer_id="b1",
        amount_cents=5000),
    _ev(names.ORDERS, "b1", event_id="o2-p", ts=_ts(7), order_id="o2", type="paid", buyer_id="b1", amount_cents=2000),
    _ev(names.ORDERS, "b1", event_id="o2-c", ts=_ts(8), order_id="o2", type="completed", buyer_id="b1"),
]  # fmt: skip
# By hand: o1 accrues 10% of 10000 = 1000, settles at 00:04; the refund of half recomputes 500: clawed_back -500
# (available 500). w1 (800) is refused, w2 holds 500 (available 0). o2 accrues 200 and settles at 00:09; w3 holds
# 200. u1 ends pending 0, available 0, reserved 700.
RACE_EXPECTED = {
    "balances": {"u1": {"available_cents": 0, "pending_cents": 0, "reserved_cents": 700, "withdrawn_cents": 0}},
    "bindings": {"b1": "u1", "u1": None},
    "dead_letters": {"insufficient_balance": 1},
    "entries": {
        "o1|1|u1|accrued": 1000,
        "o1|1|u1|clawed_back": -500,
        "o1|1|u1|settled": 1000,
        "o2|1|u1|accrued": 200,
        "o2|1|u1|settled": 200,
        "w:w2|0|u1|held": -500,
        "w:w3|0|u1|held": -200,
    },
    "totals": {
        "accrued": 1200,
        "reversed": 0,
        "settled": 1200,
        "clawed_back": -500,
        "held": -700,
        "released": 0,
        "withdrawn": 0,
        "adjusted": 0,
    },
}


def _withdrawals_read_and_held(port: int) -> bool:
    """The worker has read every race withdrawal (its partition is at 00:09) and holds them undecided."""
    status = scenario.http_json(port, "/status")
    read = any(
        p["partition"].startswith(names.WITHDRAWALS + ":") and p["last_ts"] == _ts(9) for p in status["partitions"]
    )
    return read and status["held"] >= len(RACE_WITHDRAWALS)


def test_a_withdrawal_read_before_the_orders_cannot_spend_a_clawed_back_balance(pipe: Env) -> None:
    """The withdrawals are read (and held) before the refund that claws back is even produced: still exact.

    The buyer's orders partition delivered o1's payment just before, so within the grace it holds every later
    event back until it has passed their ts; the clawback then lands first and the 800 request is refused.
    """
    config = pipe.tmp / "race.toml"
    config.write_text(RACE_TOML)
    w = scenario.WorkerProcess(config, pipe.env, pipe.tmp / "worker.log").start()
    try:
        scenario.wait_http(pipe.web_port, "/health", 90, w)
        pipe.produce(RACE_FIRST)
        pipe.produce(RACE_WITHDRAWALS)
        deadline = time.monotonic() + 10
        while not _withdrawals_read_and_held(pipe.web_port):
            assert time.monotonic() < deadline, f"the worker never read the withdrawals:\n{w.log_tail()}"
            time.sleep(0.1)
        pipe.produce(RACE_LAST)
        out, diff = pipe.outcome(RACE_EXPECTED)
        assert not diff, "\n".join(diff) + "\n" + w.log_tail()
        assert pipe.redis_balances(v2=True) == RACE_EXPECTED["balances"]
        states, queue, per_user = redis_withdrawals(pipe.stack.redis_url)
        assert queue == ["w2", "w3"], "both held requests wait for review, oldest first"
        assert per_user == {"u1": ["w2", "w3"]}
        assert {wid: s["status"] for wid, s in states.items()} == {"w2": "requested", "w3": "requested"}
        dead = [d for d in out.dead_letters if d["reason"] == "insufficient_balance"]
        assert [d["event_id"] for d in dead] == ["w1-r"]
        assert sorted(r["id"] for r in out.withdrawal_states) == ["w2:requested", "w3:requested"]
    finally:
        w.stop()
