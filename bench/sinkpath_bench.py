"""The sink process's CPU per order record without Kafka or Redis I/O: decode, buffer, chDB flush, read-model plan.

    .venv/bin/python bench/sinkpath_bench.py [--users N --orders M --seed S] [--batch-size B] [--profile]

The `fenxiao sink` process reads every output record and every input record of a sale: the ClickHouse sink
decodes and buffers them and flushes them into embedded chDB, and the projector turns the ledger entries and
bindings into the API's read-model commands. This runs the same sale's records (the outputs from
streams.engine.reference) through those functions in one process and prints CPU microseconds per order record
for each stage, so a change to the sink path can be measured on a shared machine without a whole pipeline.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from bench.hotpath_bench import cpu_table  # noqa: E402
from streams import names  # noqa: E402
from streams.engine import reference  # noqa: E402
from streams.engine.config import parse  # noqa: E402
from streams.ops import flashsale  # noqa: E402
from streams.ops.demo import program_toml  # noqa: E402
from streams.sinks.clickhouse import ChdbBackend, migrate  # noqa: E402
from streams.sinks.sink import ClickHouseSink  # noqa: E402
from streams.sinks.sink_agent import buffer_records  # noqa: E402
from streams.state.projector import Tree, binding_of, entry_of, plan_batch  # noqa: E402


def sale(users: int, orders: int, seed: int) -> tuple[list[tuple[str, bytes]], int]:
    """Every record the sink process reads for the sale (inputs and outputs, as bytes), and the order records."""
    start = datetime(2025, 11, 11, tzinfo=UTC)
    inputs = list(flashsale.generate(users, orders, seed, start, 600.0))
    program = parse(program_toml(freeze_seconds=60, grace_seconds=1))
    out = reference.run(inputs, program, now_ms=int(start.timestamp() * 1000) + 10**10)
    enc = msgspec.json.Encoder()
    records = [(str(r["topic"]), json.dumps(r["value"], separators=(",", ":")).encode()) for r in inputs]
    records += [(names.COMMISSIONS, enc.encode(e)) for e in out.entries]
    records += [(names.BINDINGS, enc.encode(b)) for b in out.bindings]
    records += [(names.CLICKS_LIMITED, enc.encode(c)) for c in out.limited_clicks]
    n_orders = sum(1 for t, _ in records if t == names.ORDERS)
    return [(t, v) for t, v in records if t in names.SINK_SOURCES], n_orders


def run(records: list[tuple[str, bytes]], batch_size: int, path: Path) -> dict[str, float]:
    """CPU seconds per stage over the whole sale."""
    ch = ChdbBackend(path)
    migrate(ch)
    sink = ClickHouseSink(ch)
    tree, already = Tree(), set[str]()
    cpu = {"sink decode+buffer": 0.0, "sink flush (chDB)": 0.0, "projector decode": 0.0, "projector plan": 0.0}
    pc = time.process_time
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        t0 = pc()
        buffer_records(sink, chunk)
        t1 = pc()
        sink.flush()
        t2 = pc()
        entries = [entry_of(json.loads(raw)) for topic, raw in chunk if topic == names.COMMISSIONS]
        bindings = [binding_of(json.loads(raw)) for topic, raw in chunk if topic == names.BINDINGS]
        for b in bindings:
            tree.bind(b)
        paid = {e.source_event_id: 10_000 for e in entries}
        t3 = pc()
        plan_batch(entries, bindings, tree, already, paid, 0)
        t4 = pc()
        cpu["sink decode+buffer"] += t1 - t0
        cpu["sink flush (chDB)"] += t2 - t1
        cpu["projector decode"] += t3 - t2
        cpu["projector plan"] += t4 - t3
    ch.close()
    return cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--orders", type=int, default=25_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch-size", type=int, default=20_000)
    ap.add_argument("--profile", action="store_true", help="print the 25 most expensive functions (cumulative)")
    a = ap.parse_args(argv)
    records, n_orders = sale(a.users, a.orders, a.seed)
    with tempfile.TemporaryDirectory(prefix="fenxiao-sinkpath-") as tmp:
        prof = cProfile.Profile() if a.profile else None
        if prof is not None:
            prof.enable()
        cpu = run(records, a.batch_size, Path(tmp) / "ch")
        if prof is not None:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    cpu_table(f"sink process CPU, {len(records):,} records read ({n_orders:,} order records), no I/O", cpu, n_orders)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
