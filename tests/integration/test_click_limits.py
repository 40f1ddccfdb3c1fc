"""Click spam through the real pipeline (Kafka, Redis, chDB) under the default [clicks] limits.

A spam visitor floods distributor X's link, then clicks Y's: with no limit Y's click would be the latest
and would win the signup and the commission; with the defaults (10 binding clicks per visitor per minute,
300 per ip) it is the 11th of the minute and is only counted, apart, in the funnel. 300 visitors behind
one carrier-NAT address use up that ip's minute, so one more visitor there binds nobody. The input is
delivered twice (same event ids) and applied as a backlog in small batches, so the counts must cross
batches through Redis and a redelivery must count nothing twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from streams import names
from streams.engine import config, reference
from tests.integration import scenario
from tests.integration.scenario import Env

T0 = "2026-11-11T00:00:"  # a minute boundary: every click below falls in the minute [00:00, 01:00)
NAT_IP = "10.9.9.9"


def ts(sec: float) -> str:
    return f"{T0}{sec:06.3f}Z"


def rec(topic: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "key": key, "value": value}


def click(sec: float, eid: str, visitor: str, ref: str, ip: str | None = None) -> dict[str, Any]:
    value = {"event_id": eid, "ts": ts(sec), "visitor_id": visitor, "ref": ref, "campaign_id": "d11"}
    if ip is not None:
        value["ip"] = ip
    return rec(names.CLICKS, visitor, value)


def signup(sec: float, user: str, visitor: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"event_id": f"s-{user}", "ts": ts(sec), "user_id": user}
    if visitor is not None:
        value["visitor_id"] = visitor
    return rec(names.SIGNUPS, user, value)


def records() -> list[dict[str, Any]]:
    """The scenario; the spammer's clicks and the NAT's clicks are sent twice (redeliveries)."""
    spam = [click(1 + i, f"spam-x-{i}", "spam", "X", "1.2.3.4") for i in range(10)]
    spam += [click(11 + i, f"spam-y-{i}", "spam", "Y", "1.2.3.4") for i in range(4)]
    nat = [click(round(0.1 * i, 1), f"nat-{i}", f"nat{i}", "X", NAT_IP) for i in range(300)]
    return [
        signup(0, "X"),
        signup(0, "Y"),
        *spam,
        *nat,
        click(5, "legit-y", "legit", "Y", "5.6.7.8"),
        click(31, "late-y", "late", "Y", NAT_IP),
        *spam,
        *nat[:50],
        signup(40, "victim", "spam"),
        signup(41, "fan", "legit"),
        signup(42, "late-user", "late"),
        rec(
            names.ORDERS,
            "victim",
            {
                "event_id": "p-o1",
                "ts": ts(50),
                "order_id": "o1",
                "type": "paid",
                "buyer_id": "victim",
                "amount_cents": 10000,
            },
        ),
    ]


# Hand-computed: victim's latest binding click is spam-x-9 (X), its 10th; fan's is legit-y (Y); late-y is the
# 301st binding-eligible click of NAT_IP in the minute, so late-user binds nobody. o1 pays X 10% (no campaign).
EXPECTED = {
    "balances": {"X": {"available_cents": 0, "pending_cents": 1000}},
    "bindings": {"X": None, "Y": None, "victim": "X", "fan": "Y", "late-user": None},
    "dead_letters": {},
    "entries": {"o1|1|X|accrued": 1000},
    "totals": {"accrued": 1000, "reversed": 0, "settled": 0, "clawed_back": 0},
}
LIMITED = {**{f"spam-y-{i}": "visitor_rate" for i in range(4)}, "late-y": "ip_rate"}

CONFIG = """
[program]
levels = 3
attribution_window_seconds = 86400
freeze_seconds = 604800
max_total_bps = 3000

[tiers.standard]
rates_bps = [1000, 500, 200]

[pipeline]
ordering_grace_seconds = 1
"""


def test_the_scenario_needs_the_limit() -> None:
    """Without limits the spammer's last click (Y) would bind the victim: the pipeline test below tells them apart."""
    off = config.parse(CONFIG + "[clicks]\nmax_per_visitor = 0\nmax_per_ip = 0\n")
    run = reference.run(records(), off, 0)
    latest = {b["user_id"]: b["inviter_id"] for b in run.bindings}
    assert (latest["victim"], latest["late-user"]) == ("Y", "Y")
    assert run.limited_clicks == []


def _funnel(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "streams.cli", "report", "funnel", "--format", "json", "--limit", "1000"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return {row["distributor"]: row for row in json.loads(r.stdout)["rows"]}


def test_spam_clicks_are_limited_for_attribution_and_counted_apart(pipe: Env, tmp_path: Path) -> None:
    cfg = tmp_path / "fenxiao.toml"
    cfg.write_text(CONFIG)
    pipe.produce(records())
    w = scenario.WorkerProcess(cfg, {**pipe.env, "FENXIAO_BATCH_SIZE": "13"}, tmp_path / "worker.log").start()
    try:
        scenario.wait_http(pipe.web_port, "/health", 90, w)
        out, diff = pipe.outcome(EXPECTED)
        assert not diff, "\n".join(diff) + "\n" + w.log_tail()
        limited = {c["event_id"]: c for c in out.limited_clicks}
        assert {eid: c["reason"] for eid, c in limited.items()} == LIMITED
        assert limited["late-y"] == {
            "event_id": "late-y",
            "visitor_id": "late",
            "ip": NAT_IP,
            "ref": "Y",
            "campaign_id": "d11",
            "ts": "2026-11-11T00:00:31.000Z",
            "reason": "ip_rate",
        }
        assert pipe.redis_balances() == EXPECTED["balances"]
        r = redis.Redis.from_url(pipe.stack.redis_url, decode_responses=True)
        minute = 1_794_355_200_000 // 60_000
        assert r.hgetall(names.KEY_CLICK + "spam")["n"] == "10", "redelivered clicks were counted twice"
        assert r.get(f"{names.KEY_IP_CLICKS}{minute}:{NAT_IP}") == "300"
        assert 0 < r.pttl(f"{names.KEY_IP_CLICKS}{minute}:{NAT_IP}") <= 300_000
        scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
    finally:
        assert w.stop() == 0, w.log_tail()
    funnel = _funnel(pipe.env)
    assert (funnel["X"]["clicks"], funnel["X"]["limited_clicks"]) == (310, 0)
    assert (funnel["Y"]["clicks"], funnel["Y"]["limited_clicks"]) == (1, 5)
    assert (funnel["Y"]["visitors"], funnel["Y"]["signups"]) == (3, 1)
    assert (funnel["X"]["signups"], funnel["X"]["first_orders"]) == (1, 1)
    total = funnel["(all distributors)"]
    assert (total["clicks"], total["limited_clicks"]) == (311, 5)
