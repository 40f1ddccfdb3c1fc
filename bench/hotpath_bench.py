"""The worker's CPU per order record without Kafka or Redis I/O: decode, align, apply, stage, encode outputs.

    .venv/bin/python bench/hotpath_bench.py [--users N --orders M --seed S] [--profile]

On a shared machine wall-clock throughput says more about the neighbours than about the code; process CPU time
of the in-process hot path does not. Runs the same sale through the worker's own stages
(streams.pipeline.consume.classify, the aligner, streams.engine.ledger, the store's command staging, the output
encoding) and prints CPU microseconds per order record for each stage, and the records/s one core would
sustain for this part of the work.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
from aiokafka import TopicPartition  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from streams import names  # noqa: E402
from streams.engine.alignment import Aligner  # noqa: E402
from streams.engine.config import parse  # noqa: E402
from streams.engine.ledger import Ledger, seq_key  # noqa: E402
from streams.ops import flashsale  # noqa: E402
from streams.ops.demo import program_toml  # noqa: E402
from streams.pipeline.consume import DeadLetter, Record, classify  # noqa: E402
from streams.pipeline.sequencer import output_records  # noqa: E402
from streams.state.referral_store import CachedState, RedisStore  # noqa: E402

PARTITIONS = 4


def records(users: int, orders: int, seed: int) -> list[Record]:
    """The sale as input records spread over partitions by key, as a producer would write them."""
    out: list[Record] = []
    offsets: dict[tuple[str, int], int] = {}
    for r in flashsale.generate(users, orders, seed, datetime(2025, 11, 11, tzinfo=UTC), 600.0):
        key = str(r["key"]).encode()
        p = hash(key) % PARTITIONS
        off = offsets.get((r["topic"], p), 0)
        offsets[(r["topic"], p)] = off + 1
        raw = json.dumps(r["value"], separators=(",", ":")).encode()
        out.append(Record(r["topic"], p, off, key, raw, 0))
    return out


def run(recs: list[Record], batch_size: int) -> dict[str, float]:
    """CPU seconds per stage over the whole sale."""
    program = parse(program_toml(freeze_seconds=60, grace_seconds=1))
    state = CachedState()
    store = RedisStore("redis://127.0.0.1:1/0", program.attribution_window_ms)
    enc = msgspec.json.Encoder()
    clock = [0.0]
    aligner = Aligner(1.0, lambda: clock[0])
    for t in names.INPUT_TOPICS:
        for p in range(PARTITIONS):
            aligner.assign(TopicPartition(t, p), names.TOPIC_RANK[t])
    cpu = {"decode": 0.0, "align": 0.0, "apply": 0.0, "stage": 0.0, "encode": 0.0}
    tp_of = {(t, p): TopicPartition(t, p) for t in names.INPUT_TOPICS for p in range(PARTITIONS)}
    pc = time.process_time
    for i in range(0, len(recs), batch_size):
        chunk = recs[i : i + batch_size]
        t0 = pc()
        items = [(r, classify(r)) for r in chunk]
        t1 = pc()
        for r, item in items:
            if not isinstance(item, DeadLetter):
                tp = tp_of[(r.topic, r.partition)]
                aligner.add(tp, seq_key(names.TOPIC_RANK[r.topic], item.event), item, 0, r.offset)
        clock[0] += 2.0  # every partition has delivered past this chunk: release it all
        batch = aligner.release(10**9)
        t2 = pc()
        ledger = Ledger(program, state)
        entries, bindings, limited = [], [], []
        for key, h in batch:
            entries.extend(ledger.settle_due(key[0] - 1))
            res = ledger.apply(h.event, key)
            entries.extend(res.entries)
            bindings.extend(res.bindings)
            if res.limited is not None:
                limited.append(res.limited)
        t3 = pc()
        store.stage(state, batch[-1][0] if batch else None).payload()
        t4 = pc()
        for _, _, value in output_records(entries, bindings, [], limited):
            enc.encode(value)
        t5 = pc()
        cpu["decode"] += t1 - t0
        cpu["align"] += t2 - t1
        cpu["apply"] += t3 - t2
        cpu["stage"] += t4 - t3
        cpu["encode"] += t5 - t4
    return cpu


def cpu_table(title: str, cpu: dict[str, float], n_orders: int) -> float:
    """Print CPU seconds per stage as µs per order record and share; return the total CPU seconds."""
    total = sum(cpu.values())
    t = Table(title=title)
    for col in ("stage", "CPU s", "µs per order record", "share"):
        t.add_column(col, justify="right")
    for k, v in cpu.items():
        t.add_row(k, f"{v:.3f}", f"{v / n_orders * 1e6:.1f}", f"{v / total:.0%}")
    t.add_row("total", f"{total:.3f}", f"{total / n_orders * 1e6:.1f}", "100%")
    Console().print(t)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--orders", type=int, default=25_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="print the 25 most expensive functions (cumulative)")
    a = ap.parse_args(argv)
    from streams.pipeline.agents import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)  # as the worker runs
    recs = records(a.users, a.orders, a.seed)
    n_orders = sum(1 for r in recs if r.topic == names.ORDERS)
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
    cpu = run(recs, a.batch_size)
    if a.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    total = cpu_table(f"hot path CPU, {len(recs):,} records ({n_orders:,} order records), no I/O", cpu, n_orders)
    rates = f"{n_orders / total:,.0f} order records/s ({len(recs) / total:,.0f} records/s)"
    Console().print(f"one core, this part only: {rates}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
