"""BI reports against independently computed numbers, replay safety, hostile parameters, and the worker page.

Most tests feed the reference engine's output for a spec example into a fresh chDB through the real
ClickHouseSink (no Kafka needed), then compare every report with totals computed here from
events.jsonl and expected.json. The last test runs the real pipeline and reads a report through the
worker while it holds the embedded ClickHouse (the ChdbLockedError fallback), then again after it stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Invalid, decode
from streams import names
from streams.sinks import reports
from streams.sinks import sink as S
from streams.sinks.clickhouse import ChdbBackend, migrate
from tests.integration import report_data as RD
from tests.integration import scenario
from tests.integration.scenario import Env

pytestmark = pytest.mark.integration

EXAMPLES = ["basic", "two-level", "messy"]


def load(ch: ChdbBackend, example: str, chunk_rows: int = 100_000, batches: int = 1) -> None:
    """Write the example's rows through the sink, split into `batches` flushes."""
    sink = S.ClickHouseSink(ch, chunk_rows=chunk_rows)
    for table, rows in RD.sink_rows(example).items():
        size = max(1, -(-len(rows) // batches))
        for i in range(0, len(rows), size):
            sink.add_many(table, rows[i : i + size])
            sink.flush()


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbBackend]:
    """An empty, migrated chDB for one test."""
    with ChdbBackend(tmp_path / "clickhouse") as backend:
        migrate(backend)
        yield backend


def rows(report: reports.Report) -> list[dict[str, Any]]:
    """A report's rows keyed by column."""
    return report.records()


def _all(ch: ChdbBackend, **params: str) -> dict[str, Any]:
    """Every report's JSON for the example (one per metric of the leaderboard)."""
    out = {}
    for metric in ("earnings", "gmv", "recruits"):
        out[f"leaderboard-{metric}"] = reports.run(ch, "leaderboard", {"at": "2026-11", "metric": metric, **params})
    for name, p in [
        ("funnel", {}),
        ("funnel-d11", {"campaign": "d11"}),
        ("levels", {}),
        ("campaign", {"id": "d11"}),
        ("refunds", {}),
        ("team", {"distributor": "u1-0"}),
        ("performance", {"at": "2026-11"}),
    ]:
        out[name] = reports.run(ch, name.split("-")[0], {**p, **params})
    return {k: v.to_json() for k, v in out.items()}


# --- independent expectations ---------------------------------------------------------------------------------------


def entry_sums_by(example: str, index: int) -> dict[str, dict[str, int]]:
    """expected.json's entries summed per (order|level|user|kind field `index`) and kind."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(S.KINDS, 0))
    for key, cents in RD.expected(example)["entries"].items():
        parts = key.split("|")
        out[parts[index]][parts[3]] += cents
    return out


def team_of(example: str, root: str) -> dict[int, set[str]]:
    """Members under `root` per level from expected.json's bindings."""
    children: dict[str, set[str]] = defaultdict(set)
    for user, inviter in RD.expected(example)["bindings"].items():
        if inviter is not None:
            children[inviter].add(user)
    levels = {1: set(children[root])}
    levels[2] = {c for u in levels[1] for c in children[u]}
    levels[3] = {c for u in levels[2] for c in children[u]}
    return levels


@pytest.mark.parametrize("example", EXAMPLES)
def test_reports_match_independent_totals(chdb: ChdbBackend, example: str) -> None:
    """Every report's numbers equal totals computed from the example's events and expected.json."""
    load(chdb, example)
    exp = RD.expected(example)
    paid = RD.accepted_paid(example)
    benef = RD.level_beneficiaries(example)

    # leaderboard earnings = pending + available per distributor
    board = rows(reports.run(chdb, "leaderboard", {"at": "2026-11", "limit": "100000"}))
    want = {u: b["pending_cents"] + b["available_cents"] for u, b in exp["balances"].items()}
    assert {r["distributor"]: r["earnings_cents"] for r in board} == want
    assert [r["earnings_cents"] for r in board] == sorted(want.values(), reverse=True)

    # leaderboard gmv = accepted paid amounts by level-1 beneficiary
    gmv: Counter[str] = Counter()
    for v in paid:
        if (v["order_id"], 1) in benef:
            gmv[benef[(v["order_id"], 1)]] += v["amount_cents"]
    board = rows(reports.run(chdb, "leaderboard", {"at": "2026-11", "metric": "gmv", "limit": "100000"}))
    assert {r["distributor"]: r["gmv_cents"] for r in board} == dict(gmv)

    # leaderboard recruits = users bound to the distributor (all bound in 2026-11)
    recruits = Counter(i for i in exp["bindings"].values() if i is not None)
    board = rows(reports.run(chdb, "leaderboard", {"at": "2026-Q4", "period": "quarter", "metric": "recruits"}))
    assert {r["distributor"]: r["recruits"] for r in board} == dict(recruits.most_common(20)) or len(recruits) > 20
    assert all(r["recruits"] == recruits[str(r["distributor"])] for r in board)

    # levels = expected entries summed per level, share of the accepted GMV
    total_gmv = sum(v["amount_cents"] for v in paid)
    by_level = entry_sums_by(example, 1)
    lv = {r["level"]: r for r in rows(reports.run(chdb, "levels", {}))}
    for level, sums in by_level.items():
        row = lv[f"level {level}"]
        assert [row[f"{k}_cents"] for k in S.KINDS] == [sums[k] for k in S.KINDS]
        net = sums["accrued"] + sums["reversed"] + sums["clawed_back"]
        assert row["net_cents"] == net
        assert row["share_of_gmv_bps"] == (net * 20000 // total_gmv + 1) // 2
    assert lv["all levels"]["net_cents"] == sum(
        s["accrued"] + s["reversed"] + s["clawed_back"] for s in by_level.values()
    )

    # refunds = reversed + clawed_back per distributor
    by_user = entry_sums_by(example, 2)
    ref = {r["distributor"]: r for r in rows(reports.run(chdb, "refunds", {"limit": "100000"}))}
    assert set(ref) == set(by_user)
    for user, sums in by_user.items():
        assert (ref[user]["reversed_cents"], ref[user]["clawed_back_cents"]) == (sums["reversed"], sums["clawed_back"])
        assert ref[user]["accrued_cents"] == sums["accrued"]

    # campaign d11: accepted orders and GMV, accrued commission of its orders
    d11 = [v for v in paid if v.get("campaign_id") == "d11"]
    d11_orders = {v["order_id"] for v in d11}
    camp = rows(reports.run(chdb, "campaign", {"id": "d11"}))
    assert sum(int(r["orders"]) for r in camp) == len(d11)
    assert sum(int(r["gmv_cents"]) for r in camp) == sum(v["amount_cents"] for v in d11)
    accrued_d11 = sum(c for k, c in exp["entries"].items() if k.endswith("|accrued") and k.split("|")[0] in d11_orders)
    assert sum(int(r["accrued_cents"]) for r in camp) == accrued_d11
    per_minute: Counter[str] = Counter(v["ts"][:16] + "Z" for v in d11)
    assert {str(r["minute"]): r["orders"] for r in camp if r["orders"]} == dict(per_minute)

    # team of the biggest recruiter: members per level and GMV per level
    root = recruits.most_common(1)[0][0]
    members = team_of(example, root)
    tm = rows(reports.run(chdb, "team", {"distributor": root}))
    last = tm[-1]
    assert [last[f"level{n}_members"] for n in (1, 2, 3)] == [len(members[n]) for n in (1, 2, 3)]
    for n in (1, 2, 3):
        want_gmv = sum(v["amount_cents"] for v in paid if benef.get((v["order_id"], n)) == root)
        assert sum(int(r[f"level{n}_gmv_cents"]) for r in tm) == want_gmv

    # funnel: clicks and distinct visitors per sharing distributor, from the valid click events
    clicks: Counter[str] = Counter()
    visitors: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set()
    for rec in RD.records(example):
        if rec["topic"] != names.CLICKS:
            continue
        ev = decode(names.CLICKS, json.dumps(rec["value"]) if isinstance(rec["value"], dict) else rec["value"])
        if isinstance(ev, Invalid) or ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        clicks[ev.ref] += 1
        visitors[ev.ref].add(ev.visitor_id)
    fun = {r["distributor"]: r for r in rows(reports.run(chdb, "funnel", {"limit": "100000"}))}
    total = fun.pop("(all distributors)")
    assert {d: r["clicks"] for d, r in fun.items() if r["clicks"]} == dict(clicks)
    assert {d: r["visitors"] for d, r in fun.items() if r["visitors"]} == {d: len(v) for d, v in visitors.items()}
    assert total["clicks"] == sum(clicks.values())
    buyers = {v["buyer_id"] for v in paid}
    for d, r in fun.items():
        bound = {u for u, i in exp["bindings"].items() if i == d}
        assert r["signups"] <= len(bound)
        assert len(bound & buyers) <= r["first_orders"] <= len(bound)


@pytest.mark.parametrize("example", ["messy", "two-level"])
def test_refused_paid_events_are_not_gmv(chdb: ChdbBackend, example: str) -> None:
    """The raw orders table holds refused paid events; the reports' GMV does not."""
    load(chdb, example)
    raw = chdb.query("SELECT count(), sum(amount_cents) FROM orders FINAL WHERE type = 'paid'")[0]
    paid = RD.accepted_paid(example)
    assert int(raw[0]) - len(paid) == RD.refused_paid(example) > 0, "the example should contain refused paid events"
    title = reports.run(chdb, "levels", {}).title
    gmv = reports._yuan(sum(v["amount_cents"] for v in paid))
    assert title.endswith(f"{gmv} accepted GMV in {len(paid):,} paid orders")
    assert int(raw[1]) > sum(v["amount_cents"] for v in paid)


@pytest.mark.parametrize("example", ["basic", "messy"])
def test_replayed_sink_batches_leave_every_report_unchanged(tmp_path: Path, example: str) -> None:
    """A crash between insert and offset commit replays rows with other batch boundaries: reports do not move."""
    with ChdbBackend(tmp_path / "once") as ch:
        migrate(ch)
        load(ch, example)
        once = _all(ch)
    with ChdbBackend(tmp_path / "replayed") as ch:
        migrate(ch)
        load(ch, example, chunk_rows=37, batches=3)
        load(ch, example, chunk_rows=101, batches=7)  # the whole topic offered again
        load(ch, example, chunk_rows=5, batches=2)
        again = _all(ch)
        # even a duplicate that slips past the sink (a second writer) leaves the GMV figures alone
        ch.insert(
            S.ORDERS,
            S.TABLES[S.ORDERS].columns,
            [S.TABLES[S.ORDERS].values(r) for r in RD.sink_rows(example)[S.ORDERS]],
        )
        assert reports.run(ch, "levels", {}).to_json() == once["levels"]
        assert reports.run(ch, "campaign", {"id": "d11"}).to_json() == once["campaign"]
    assert again == once


HOSTILE = [
    "'; DROP TABLE ledger_entries; --",
    "x' OR '1'='1",
    "\\'; SELECT 1; --",
    "{id:String}",
    "u1-0\t\n\0",
    "🙂" * 300,
    "a" * 100_000,
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_parameters_are_data(chdb: ChdbBackend, value: str) -> None:
    """Quotes, statement separators, placeholders and very long ids match nothing and break nothing."""
    load(chdb, "basic")
    before = chdb.query("SELECT count() FROM ledger_entries")
    assert rows(reports.run(chdb, "campaign", {"id": value})) == []
    tm = rows(reports.run(chdb, "team", {"distributor": value}))
    assert tm == []
    fun = rows(reports.run(chdb, "funnel", {"campaign": value}))
    assert all(r["clicks"] == 0 and r["first_orders"] == 0 for r in fun)
    for name, params in [
        ("leaderboard", {"at": value}),
        ("leaderboard", {"at": "2026-11", "metric": value}),
        ("leaderboard", {"at": "2026-11", "period": value}),
        ("refunds", {"limit": value}),
        ("performance", {"at": value}),
        (value, {}),
        ("levels", {value[:50]: "1"}),
    ]:
        with pytest.raises(reports.ReportError):
            reports.run(chdb, name, params)
    assert chdb.query("SELECT count() FROM ledger_entries") == before


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`fenxiao report ...` in its own process (chDB: one owner per data directory)."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "report", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_reports_through_the_running_worker_then_locally(pipe: Env, tmp_path: Path) -> None:
    """While the worker holds chDB the CLI reads through its /reports page; after it stops, locally: same answers."""
    example = "messy"
    w = pipe.worker(example)
    try:
        pipe.produce(scenario.load_records(example))
        _, diff = pipe.outcome(scenario.load_expected(example))
        assert not diff, "\n".join(diff) + w.log_tail()
        scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=60)
        served = {}
        for name, extra in [("levels", []), ("refunds", ["--limit", "1000"]), ("campaign", ["--id", "d11"])]:
            r = _cli(pipe.env, name, "--format", "json", *extra)
            assert r.returncode == 0, r.stderr + w.log_tail()
            served[name] = json.loads(r.stdout)
        chart = tmp_path / "campaign.png"
        r = _cli(pipe.env, "campaign", "--id", "d11", "--chart", str(chart), "--format", "csv")
        assert r.returncode == 0, r.stderr
        assert chart.stat().st_size > 1000 and r.stdout.startswith("minute,orders,gmv_cents")
        hostile = _cli(pipe.env, "team", "--distributor", "'; DROP TABLE bindings; --", "--format", "json")
        assert hostile.returncode == 0 and json.loads(hostile.stdout)["rows"] == [], hostile.stderr
        refused = _cli({**pipe.env, "FENXIAO_TOKEN_KEY": "not-the-workers-key"}, "levels")
        assert refused.returncode == 2 and "FENXIAO_TOKEN_KEY" in refused.stderr
    finally:
        assert w.stop() == 0, w.log_tail()
    by_user = entry_sums_by(example, 2)
    refunds = {r["distributor"]: r for r in served["refunds"]["rows"]}
    for user, sums in by_user.items():
        assert (refunds[user]["reversed_cents"], refunds[user]["clawed_back_cents"]) == (
            sums["reversed"],
            sums["clawed_back"],
        )
    for name, extra in [("levels", []), ("refunds", ["--limit", "1000"]), ("campaign", ["--id", "d11"])]:
        r = _cli(pipe.env, name, "--format", "json", *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == served[name], f"{name}: the worker's answer differs from the local one"
    # No worker and the data dir free: nothing to fall back to is not needed; a locked dir without a worker is.
    totals = scenario.clickhouse_outcome(pipe.env)
    assert totals["totals"] == scenario.load_expected(example)["totals"]
