"""Time every BI report on a large synthetic dataset in embedded chDB.

Data is generated inside ClickHouse (INSERT ... SELECT FROM numbers(), so the materialized views fill
the aggregates exactly as sink inserts would): N paid orders from U users in a 3-level referral forest,
each paying up to 3 levels (accrued), ~8% refunded (reversed), ~60% settled, ~2% clawed back; ~2%
extra paid events refused and dead-lettered; clicks ~2 per order; one binding per user. Then each
report runs `--runs` times and the min and median wall time are printed.

    .venv/bin/python bench/reports_bench.py --dir /tmp/fx-bench --orders 2000000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streams.sinks import reports
from streams.sinks.clickhouse import ChdbBackend, migrate

START = "toDateTime64('2026-10-01 00:00:00', 3, 'UTC')"
SPAN_S = 92 * 86400  # Q4 2026


def generate(ch: ChdbBackend, orders: int, users: int) -> dict[str, int]:
    """Fill the raw tables (and through the views, the aggregates) with a realistic-ish program."""
    p = {"orders": orders, "users": users}
    # Users u0..u{U-1}: u<1% are roots; others bound to a user with a smaller id (a forest, ≤ ~log depth).
    ch.command(
        "INSERT INTO bindings (user_id, inviter_id, ts, source)"
        " SELECT concat('u', toString(number)),"
        " if(number < greatest(1, intDiv({users:UInt64}, 100)), NULL,"
        "    concat('u', toString(intDiv(number * (cityHash64(number) % 1000 + 1), 1001)))),"
        f" {START} + toIntervalMillisecond(cityHash64(number, 1) % ({SPAN_S} * 1000)),"
        " ['signup', 'click', 'order'][1 + cityHash64(number, 2) % 3]"
        " FROM numbers({users:UInt64})",
        p,
    )
    # Orders: buyer = random user, level-1 = the buyer's inviter approximated by the same hash rule, etc.
    order = (
        "SELECT number AS n, concat('o', toString(n)) AS order_id, concat('p', toString(n)) AS paid_id,"
        " cityHash64(n, 3) % {users:UInt64} AS b, concat('u', toString(b)) AS buyer,"
        " intDiv(b * (cityHash64(b) % 1000 + 1), 1001) AS i1, intDiv(i1 * (cityHash64(i1) % 1000 + 1), 1001) AS i2,"
        " intDiv(i2 * (cityHash64(i2) % 1000 + 1), 1001) AS i3,"
        " 500 + toInt64(exp(cityHash64(n, 4) % 1000 / 180.0)) AS amount,"
        f" {START} + toIntervalMillisecond(cityHash64(n, 5) % ({SPAN_S} * 1000)) AS ts,"
        " if(cityHash64(n, 6) % 10 < 4, 'd11', if(cityHash64(n, 6) % 10 < 5, 'spring', '')) AS campaign,"
        " cityHash64(n, 7) % 100 AS fate"
        " FROM numbers({orders:UInt64})"
    )
    ch.command(
        "INSERT INTO orders (event_id, ts, order_id, type, buyer_id, amount_cents, campaign_id, ref, visitor_id)"
        f" SELECT paid_id, ts, order_id, 'paid', buyer, amount, campaign, '', concat('v', buyer) FROM ({order})",
        p,
    )
    ch.command(
        "INSERT INTO orders (event_id, ts, order_id, type, buyer_id, amount_cents, campaign_id, ref, visitor_id)"
        f" SELECT concat('r', toString(n)), ts + toIntervalHour(30), order_id, 'refunded', buyer, intDiv(amount, 2),"
        f" campaign, '', '' FROM ({order}) WHERE fate < 8",
        p,
    )
    # Refused duplicates: a second paid event for 2% of orders, dead-lettered as order_already_paid.
    ch.command(
        "INSERT INTO orders (event_id, ts, order_id, type, buyer_id, amount_cents, campaign_id, ref, visitor_id)"
        f" SELECT concat('x', toString(n)), ts + toIntervalSecond(5), order_id, 'paid', buyer, amount, campaign, '',"
        f" '' FROM ({order}) WHERE fate >= 98",
        p,
    )
    ch.command(
        "INSERT INTO dead_letters (offset, topic, partition, event_id, reason, detail, raw, ts)"
        f" SELECT n, 'fenxiao.orders', 0, concat('x', toString(n)), 'order_already_paid', '', '', ts"
        f" FROM ({order}) WHERE fate >= 98",
        p,
    )
    levels = "arrayJoin([(1, i1, 1000), (2, i2, 500), (3, i3, 200)])"
    ledger = (
        "INSERT INTO ledger_entries (entry_id, source_event_id, ts, order_id, buyer_id, beneficiary_id, level, kind,"
        " amount_cents, campaign_id) SELECT concat(@src, ':', toString(l.1), ':', @kind), @src, @ts, order_id,"
        " buyer, concat('u', toString(l.2)), l.1, @kind, @amount, campaign"
        f" FROM (SELECT *, {levels} AS l FROM ({order})) WHERE @where"
    )
    cut = "intDiv(amount * l.3 + 5000, 10000)"
    for kind, src, ts, amount, where in [
        ("'accrued'", "paid_id", "ts", cut, "1"),
        ("'reversed'", "concat('r', toString(n))", "ts + toIntervalHour(30)", f"-intDiv({cut}, 2)", "fate < 6"),
        (
            "'settled'",
            "concat('c', toString(n))",
            "ts + toIntervalDay(8)",
            f"{cut} - if(fate < 6, intDiv({cut}, 2), 0)",
            "fate < 60",
        ),
        (
            "'clawed_back'",
            "concat('r', toString(n))",
            "ts + toIntervalHour(30)",
            f"-intDiv({cut}, 2)",
            "fate >= 6 AND fate < 8",
        ),
    ]:
        sql = ledger
        for name, text in (("@kind", kind), ("@src", src), ("@ts", ts), ("@amount", amount), ("@where", where)):
            sql = sql.replace(name, text)  # fixed SQL fragments of this script, no user input
        ch.command(sql, p)
    ch.command(
        "INSERT INTO clicks (event_id, ts, visitor_id, ref, campaign_id, product_id, ip, user_agent)"
        " SELECT concat('k', toString(number)),"
        f" {START} + toIntervalMillisecond(cityHash64(number, 8) % ({SPAN_S} * 1000)),"
        " concat('v', toString(cityHash64(number, 9) % ({users:UInt64} * 3))),"
        " concat('u', toString(cityHash64(number, 10) % {users:UInt64})),"
        " if(number % 10 < 4, 'd11', ''), '', '', '' FROM numbers({orders:UInt64} * 2)",
        p,
    )
    return {
        table: int(ch.query(f"SELECT count() FROM {table}")[0][0])
        for table in ("ledger_entries", "orders", "bindings", "clicks", "dead_letters", "paid_orders", "funnel_daily")
    }


CASES: list[tuple[str, dict[str, str]]] = [
    ("leaderboard", {"at": "2026-11", "metric": "earnings"}),
    ("leaderboard", {"at": "2026-11", "metric": "gmv"}),
    ("leaderboard", {"at": "2026-Q4", "period": "quarter", "metric": "recruits"}),
    ("funnel", {}),
    ("funnel", {"campaign": "d11"}),
    ("levels", {}),
    ("campaign", {"id": "d11"}),
    ("refunds", {}),
    ("team", {"distributor": "u7"}),
    ("performance", {"at": "2026-11"}),
]


def main() -> None:
    """Generate (unless --reuse), then time each report."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default="var/reports-bench", help="chDB data directory (recreated unless --reuse)")
    ap.add_argument("--orders", type=int, default=2_000_000, help="paid orders (≈ 5 ledger entries each)")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="keep an existing generated directory")
    args = ap.parse_args()
    console = Console()
    path = Path(args.dir)
    if not args.reuse:
        shutil.rmtree(path, ignore_errors=True)
    with ChdbBackend(path) as ch:
        migrate(ch)
        if not args.reuse:
            started = time.perf_counter()
            counts = generate(ch, args.orders, args.users)
            console.print(f"generated in {time.perf_counter() - started:.1f}s: {counts}")
        table = Table(title=f"report timings, {args.runs} runs each (seconds)")
        for col in ("report", "params", "rows", "min", "median"):
            table.add_column(col, justify="left" if col in ("report", "params") else "right")
        for name, params in CASES:
            times = []
            n = 0
            for _ in range(args.runs):
                started = time.perf_counter()
                n = len(reports.run(ch, name, params).rows)
                times.append(time.perf_counter() - started)
            table.add_row(
                name,
                " ".join(f"{k}={v}" for k, v in params.items()),
                f"{n:,}",
                f"{min(times):.3f}",
                f"{statistics.median(times):.3f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
