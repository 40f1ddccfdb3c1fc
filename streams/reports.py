"""Reports read from ClickHouse: the outcome in expected.json's shape, and the demo's closing summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streams import sink
from streams.clickhouse import ChdbBackend, ClickHouse


def outcome(ch: ClickHouse) -> dict[str, Any]:
    """Balances, bindings, entry sums and totals as ClickHouse holds them, plus the daily aggregate's totals."""
    daily = sink.daily_commissions(ch)
    agg = {
        "accrued": sum(r.accrued_cents for r in daily.values()),
        "reversed": sum(r.reversed_cents for r in daily.values()),
        "settled": sum(r.settled_cents for r in daily.values()),
        "clawed_back": sum(r.clawed_back_cents for r in daily.values()),
    }
    return {
        "balances": {u: {"available_cents": a, "pending_cents": p} for u, (p, a) in sorted(sink.balances(ch).items())},
        "bindings": dict(sorted(sink.bindings(ch).items())),
        "entries": dict(sorted(sink.entry_sums(ch).items())),
        "totals": sink.ledger_totals(ch),
        "aggregate_totals": agg,
    }


def _yuan(cents: int) -> str:
    return f"¥{cents / 100:,.2f}"


def print_demo_report(path: Path, console: Console) -> None:
    """Commission by level, the top distributors and the busiest minutes of the sale."""
    with ChdbBackend(path) as ch:
        levels = Table(title="commission by level (what the program costs)")
        for col in ("level", "accrued", "reversed", "settled", "clawed back", "entries"):
            levels.add_column(col, justify="right")
        rows = ch.query(
            "SELECT level, sum(accrued_cents), sum(reversed_cents), sum(settled_cents), sum(clawed_back_cents),"
            " sum(entries) FROM commission_daily GROUP BY level ORDER BY level"
        )
        for level, acc, rev, sett, claw, n in rows:
            levels.add_row(str(level), _yuan(acc), _yuan(rev), _yuan(sett), _yuan(claw), f"{n:,}")
        console.print(levels)
        top = Table(title="top 10 distributors (net commission)")
        for col in ("distributor", "net earned", "available 可提现"):
            top.add_column(col, justify="right")
        for user, (pending, available) in sorted(
            sink.balances(ch).items(), key=lambda kv: kv[1][0] + kv[1][1], reverse=True
        )[:10]:
            top.add_row(user, _yuan(pending + available), _yuan(available))
        console.print(top)
        minutes = Table(title="the sale minute by minute (UTC)")
        for col in ("minute", "paid orders", "GMV", "commission accrued"):
            minutes.add_column(col, justify="right")
        per_minute: dict[Any, list[int]] = {}
        for (minute, _campaign), r in sink.campaign_minutes(ch).items():
            acc = per_minute.setdefault(minute, [0, 0, 0])
            acc[0] += r.paid_orders
            acc[1] += r.gmv_cents
            acc[2] += r.accrued_cents
        for minute, (orders, gmv, accrued) in sorted(per_minute.items())[:15]:
            minutes.add_row(f"{minute:%H:%M}", f"{orders:,}", _yuan(gmv), _yuan(accrued))
        console.print(minutes)
