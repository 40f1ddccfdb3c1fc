"""`fenxiao tiers evaluate` on a real pipeline: the expected tier events once, nothing on the second run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import names
from tests.integration import report_data as RD
from tests.integration import scenario
from tests.integration.scenario import Env

pytestmark = pytest.mark.integration

GOLD_GMV = 1_000_000  # ¥10,000 of level-1 GMV in the month
SILVER_RECRUITS = 2

RULES = f"""
[tier_rules]
allow_headcount_rules = true  # the test checks recruits still evaluate when an operator allows them
period = "month"
[[tier_rules.rule]]
tier = "gold"
min_gmv_cents = {GOLD_GMV}
[[tier_rules.rule]]
tier = "silver"
min_recruits = {SILVER_RECRUITS}
"""


async def _tier_events(bootstrap: str) -> list[dict[str, Any]]:
    """Every record on fenxiao.tiers so far."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(names.TIERS, p) for p in md.partitions_for_topic(names.TIERS) or set()]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        pos = {tp: 0 for tp in tps}
        while any(pos[tp] < end[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, msgs in (await c.getmany(timeout_ms=200)).items():
                for m in msgs:
                    pos[tp] = m.offset + 1
                    out.append(json.loads(m.value))
        return out
    finally:
        await c.stop()


def expected_changes(example: str) -> dict[str, str]:
    """The tier each distributor should get, computed from the example's files (all its activity is in 2026-11)."""
    paid = RD.accepted_paid(example)
    level1 = RD.level_beneficiaries(example)
    gmv: Counter[str] = Counter()
    for v in paid:
        if (v["order_id"], 1) in level1:
            gmv[level1[(v["order_id"], 1)]] += v["amount_cents"]
    recruits = Counter(i for i in RD.expected(example)["bindings"].values() if i is not None)
    current = {}
    for rec in RD.records(example):
        if rec["topic"] == names.TIERS:
            current[rec["value"]["user_id"]] = rec["value"]["tier"]  # one event per user in the examples
    out = {}
    for user in set(gmv) | set(recruits) | set(current):
        target = "gold" if gmv[user] >= GOLD_GMV else "silver" if recruits[user] >= SILVER_RECRUITS else "standard"
        if target != current.get(user, "standard"):
            out[user] = target
    return out


def evaluate(pipe: Env, config: Path) -> subprocess.CompletedProcess[str]:
    """`fenxiao tiers evaluate --period 2026-11` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "tiers", "evaluate", "--period", "2026-11", "--config", str(config)],
        env={**os.environ, **pipe.env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_tiers_evaluate_publishes_changes_once(pipe: Env) -> None:
    example = "basic"
    config = pipe.tmp / "with-tier-rules.toml"
    config.write_text(pipe.config(example).read_text() + RULES)
    want = expected_changes(example)
    assert want, "the thresholds should change someone's tier"
    w = pipe.worker(example)
    try:
        pipe.produce(scenario.load_records(example))
        _, diff = pipe.outcome(scenario.load_expected(example))
        assert not diff, "\n".join(diff)
        scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
        before = asyncio.run(_tier_events(pipe.stack.bootstrap))
        assert not [e for e in before if e["event_id"].startswith("tier:")]

        first = evaluate(pipe, config)  # the worker holds chDB: read through its /reports page
        assert first.returncode == 0, first.stderr + w.log_tail()
        published = [e for e in asyncio.run(_tier_events(pipe.stack.bootstrap)) if e["event_id"].startswith("tier:")]
        assert {e["user_id"]: e["tier"] for e in published} == want
        assert len(published) == len(want)
        for e in published:
            assert e["event_id"] == f"tier:2026-11:{e['user_id']}:{e['tier']}"
            assert e["ts"] == "2026-12-01T00:00:00.000Z"

        scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
        second = evaluate(pipe, config)
        assert second.returncode == 0, second.stderr
        assert "0 tier change(s) published" in second.stderr
        assert len(asyncio.run(_tier_events(pipe.stack.bootstrap))) == len(before) + len(want)
    finally:
        assert w.stop() == 0, w.log_tail()
    third = evaluate(pipe, config)  # locally, worker stopped: still nothing new
    assert third.returncode == 0 and "0 tier change(s) published" in third.stderr, third.stderr
