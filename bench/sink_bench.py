"""Insert rate of ledger rows through ClickHouseSink into embedded chDB: prints numbers, asserts nothing.

    .venv/bin/python bench/sink_bench.py [--rows 1000000] [--path DIR] [--chunk-rows 100000]

Measures a first flush (all rows new) and a replay of the same rows (all found, none inserted),
the two costs a worker pays per batch. CPU us/row is the process's CPU time (chDB's threads
included): on a shared machine it moves less with the neighbours' load than rows/s does. Uses a
fresh temporary data directory unless --path is given (it must not be the running worker's: chDB
lets one process own a directory).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streams.sinks.clickhouse import ChdbBackend, migrate
from streams.sinks.sink import KINDS, LEDGER, ClickHouseSink, ledger_totals


def ledger_rows(count: int, seed: int = 7) -> list[dict[str, object]]:
    """Plausible ledger entries: 3 levels per order, random-looking ids, a campaign on a fifth of them."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 11, tzinfo=UTC)
    rows: list[dict[str, object]] = []
    for i in range(count):
        ts = start + timedelta(milliseconds=37 * i)
        kind = KINDS[i % 4]
        amount = rng.randrange(1, 100_000)
        rows.append(
            {
                "entry_id": f"{rng.getrandbits(128):032x}",
                "source_event_id": f"o-ev-{i // 3}",
                "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
                "order_id": f"o-{i // 3}",
                "buyer_id": f"u-{rng.randrange(200_000)}",
                "beneficiary_id": f"u-{rng.randrange(50_000)}",
                "level": i % 3 + 1,
                "kind": kind,
                "amount_cents": amount if kind in ("accrued", "settled") else -amount,
                "campaign_id": "d11" if i % 5 == 0 else None,
            }
        )
    return rows


def measure(sink: ClickHouseSink, rows: list[dict[str, object]], bulk: bool) -> tuple[float, float, int]:
    """Seconds spent buffering all rows (add() per row, or add_many()), seconds in flush(), rows inserted."""
    started = time.perf_counter()
    if bulk:
        sink.add_many(LEDGER, rows)
    else:
        for row in rows:
            sink.add(LEDGER, row)
    added = time.perf_counter()
    inserted = sink.flush().get(LEDGER, 0)
    return added - started, time.perf_counter() - added, inserted


def main() -> None:
    """Run the benchmark and print rows/s for a first write and a replay, buffering per row and in bulk."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--path", type=Path, default=None, help="chDB data directory (default: a fresh temp dir)")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="rows per existence check and INSERT")
    args = parser.parse_args()

    print(f"generating {args.rows:,} ledger rows ...")
    rows = ledger_rows(args.rows)
    with tempfile.TemporaryDirectory(prefix="fenxiao-bench-") as tmp:
        path = args.path or Path(tmp) / "clickhouse"
        for bulk in (False, True):
            database = "bench_add_many" if bulk else "bench_add"
            with ChdbBackend(path, database=database) as ch:
                ch.command(f"DROP DATABASE IF EXISTS {database}")
                ch.command(f"CREATE DATABASE {database}")
                migrate(ch)
                sink = ClickHouseSink(ch, chunk_rows=args.chunk_rows)
                for label in ("first write", "replay"):
                    cpu_started = time.process_time()
                    add_s, flush_s, inserted = measure(sink, rows, bulk)
                    cpu_us = (time.process_time() - cpu_started) / len(rows) * 1e6
                    total = add_s + flush_s
                    print(
                        f"{'add_many()' if bulk else 'add()':>10} {label:>11}: {inserted:>9,} inserted"
                        f" | buffer {add_s:5.2f}s  flush {flush_s:5.2f}s  total {total:5.2f}s"
                        f" | {len(rows) / total:>9,.0f} rows/s  (flush alone {len(rows) / flush_s:>9,.0f} rows/s)"
                        f" | CPU {cpu_us:5.2f} us/row"
                    )
                stored = ch.query(f"SELECT count() FROM {LEDGER}")[0][0]
                print(f"{'':>10} rows stored: {stored:,}; totals: {ledger_totals(ch)}")


if __name__ == "__main__":
    main()
