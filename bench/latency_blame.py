"""Which input topic holds order events back in `make bench`'s paced latency levels: an offline model.

    .venv/bin/python bench/latency_blame.py [--rate 2500] [--grace 10 1 0.1] [--seconds 30]

Builds the latency level's sale as pipeline_bench does (same sizes, seed and start), gives each record the
send time `produce` gives it (order records paced at --rate, the others sent between them), puts it on its
partition (murmur2 of the key, 4 partitions per topic), and applies the aligner's release rule
(streams/engine/alignment.py) to every order event: it waits until each other partition has delivered a later
key, or has been quiet for the grace and the event has waited ARRIVAL_WAIT_S. The partition released last is
the one that held it. The model has no network, broker or processing time, so its delays are a floor of
what the worker measures; it shows where the wait comes from, not the wait. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import bisect
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pipeline_bench import PARTITIONS, SALE_START, n_orders, sale  # noqa: E402
from schemas.events import parse_ts_ms  # noqa: E402
from streams import names  # noqa: E402
from streams.engine.alignment import ARRIVAL_WAIT_S  # noqa: E402
from streams.engine.ledger import SeqKey  # noqa: E402

RANK = {names.TIERS: 0, names.CLICKS: 1, names.SIGNUPS: 2, names.ORDERS: 3}
BENCH_USERS, BENCH_ORDERS = 8000, 10000  # pipeline_bench's default sale, whose shape the levels scale


@dataclass
class Partition:
    """One input partition's records in send order: send times and sequence keys."""

    sent: list[float]
    keys: list[SeqKey]
    gap_end: list[int]  # per record: the first record at or after it followed by a gap longer than the grace

    def quiet_from(self, t: float, grace: float) -> float:
        """The first moment at or after t when this partition has delivered nothing for `grace` seconds."""
        j = bisect.bisect_right(self.sent, t)
        if j == 0 or self.sent[j - 1] + grace <= t:
            return t
        return self.sent[self.gap_end[j - 1]] + grace

    def later_key_at(self, key: SeqKey) -> float:
        """When this partition delivers its first record with a key above `key` (never: inf)."""
        i = bisect.bisect_right(self.keys, key)
        return self.sent[i] if i < len(self.sent) else float("inf")


def paced(records: list[dict[str, Any]], rate: float) -> list[tuple[float, str, int, SeqKey]]:
    """(send time, topic, partition, key) per record, as `produce` paces them."""
    out, orders = [], 0
    for r in records:
        orders += r["topic"] == names.ORDERS
        k = r.get("key")
        part = (murmur2(k.encode()) & 0x7FFFFFFF) % PARTITIONS if k else 0
        v = r["value"]
        out.append((orders / rate, r["topic"], part, (parse_ts_ms(v["ts"]), RANK[r["topic"]], v["event_id"])))
    return out


def partitions(rows: list[tuple[float, str, int, SeqKey]], grace: float) -> dict[tuple[str, int], Partition]:
    """Each partition's records, with where its next long gap ends (for quiet_from)."""
    by: dict[tuple[str, int], list[tuple[float, SeqKey]]] = defaultdict(list)
    for sent, topic, part, key in rows:
        by[(topic, part)].append((sent, key))
    out = {}
    for tp, recs in by.items():
        sent = [s for s, _ in recs]
        gap_end, nxt = [0] * len(sent), len(sent) - 1
        for i in range(len(sent) - 1, -1, -1):
            if i == len(sent) - 1 or sent[i + 1] - sent[i] > grace:
                nxt = i
            gap_end[i] = nxt
        out[tp] = Partition(sent, [k for _, k in recs], gap_end)
    return out


def blame(rows: list[tuple[float, str, int, SeqKey]], grace: float) -> tuple[list[float], Counter[str]]:
    """Each order event's modelled wait, and per topic how many waited longest on one of its partitions."""
    parts = partitions(rows, grace)
    waits: list[float] = []
    held_by: Counter[str] = Counter()
    for sent, topic, part, key in rows:
        if topic != names.ORDERS:
            continue
        release, who = sent, "none"
        for tp, p in parts.items():
            if tp == (topic, part):
                continue
            t = min(p.later_key_at(key), p.quiet_from(sent + min(grace, ARRIVAL_WAIT_S), grace))
            if t > release:
                release, who = t, tp[0]
        waits.append(release - sent)
        held_by[who] += 1
    return waits, held_by


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile of sorted xs (nearest rank)."""
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    """Model the 50 % level (or --rate) at each grace and print the waits and which topic held them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2500.0, help="order records/s offered (the bench: 50 %% of max)")
    ap.add_argument("--grace", type=float, nargs="+", default=[10.0, 1.0, 0.1])
    ap.add_argument("--seconds", type=float, default=30.0, help="produce time of the level (the bench: 30)")
    ap.add_argument("--seed", type=int, default=11 + 1 + 1, help="the 50 %% level's seed in pipeline_bench (11+1+k)")
    args = ap.parse_args()
    console = Console()
    n = int(args.rate * max(args.seconds, 2 * max(args.grace)))
    # order records per order, as pipeline_bench measures it on its default sale
    per_order = n_orders(sale(BENCH_USERS, BENCH_ORDERS, 11, SALE_START)) / BENCH_ORDERS
    recs = sale(
        max(1, n * BENCH_USERS // BENCH_ORDERS), max(50, int(n / per_order)), args.seed, SALE_START + timedelta(days=2)
    )
    rows = paced(recs, args.rate)
    per_topic = Counter(t for _, t, _, _ in rows)
    console.print(f"{n_orders(recs):,} order records at {args.rate:,.0f}/s; records per topic: {dict(per_topic)}")
    table = Table(title="modelled wait of order events (no network or processing time)")
    for col in ("grace s", "p50 s", "p95 s", "p99 s", "held longest by"):
        table.add_column(col, justify="right" if col != "held longest by" else "left")
    for grace in args.grace:
        waits, held_by = blame(rows, grace)
        waits.sort()
        share = ", ".join(f"{t.removeprefix('fenxiao.')} {c / len(waits):.1%}" for t, c in held_by.most_common())
        table.add_row(f"{grace:g}", *(f"{quantile(waits, q):.2f}" for q in (0.5, 0.95, 0.99)), share)
    console.print(table)


if __name__ == "__main__":
    main()
