"""Issue 6: how long a worker takes to rebuild Redis from the input topics after Redis lost everything.

    .venv/bin/python bench/rebuild_bench.py [--users N] [--orders M] [--seed S] [--grace G]

On its own private stack (streams.ops.stack.isolated_stack in a temp dir) it produces a generated flash sale
(streams.ops.flashsale, every input topic), lets a worker build the state from it ("initial build"), snapshots
Redis (users, every balance, used_memory), stops the worker, FLUSHALLs Redis and starts a fresh worker in the
same consumer group and var dir: that worker finds no fx:epoch, rewinds the group's input offsets
(streams.state.recovery.ensure_state) and replays every input topic. The rebuilt state must equal the snapshot.

Caught up (both builds): /status shows applied >= records produced (applied counts every decoded record,
including those the rules refuse; dead_letters counts those refusals too and adds undecodable records, of which
a generated sale has none), held 0, no partition with a positive lag, no order whose settlement is due
(ZCOUNT fx:settle -inf now), and applied, entries and dead_letters unchanged for --stable seconds. The time
reported is the first poll at which that final state was seen, not the end of the stability window.
Writes bench/results/rebuild-<UTC stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.bench_stats import rate  # noqa: E402
from bench.pipeline_bench import PARTITIONS, SALE_START, Worker, fmt, n_orders, produce, sale  # noqa: E402
from streams import names  # noqa: E402
from streams.ops import stack as stack_mod  # noqa: E402

console = Console(emoji=False, width=None if sys.stdout.isatty() else 132)  # "fx:b:" is no emoji
LABEL = "rebuild"
TARGET_USERS = 1_000_000
REPLAY_MARK = "replaying the input topics from the start"


class NotCaughtUp(Exception):
    """Ends the bench when a worker died or never caught up, carrying what it had done so the cause is visible."""


def successor(st: Any, tmp: Path, prev: Worker, args: argparse.Namespace) -> Worker:
    """A fresh worker with prev's consumer group and var dir, as an operator restarts one after Redis was lost."""
    nxt = Worker(st, tmp, args.grace, LABEL, args.batch_size)
    nxt.proc.env[names.ENV_APP_ID] = prev.proc.env[names.ENV_APP_ID]
    return nxt


def wait_caught_up(
    w: Worker, r: redis.Redis, produced: int, stable_s: float, timeout_s: float
) -> tuple[float, Any, int]:
    """Poll /status until caught up and stable, timing from the first sight so the quiet window does not count."""
    deadline = time.monotonic() + timeout_s
    seen: tuple[int, int, int] | None = None
    since = 0.0
    last: Any = None
    held_peak = 0
    while time.monotonic() < deadline:
        if w.proc.proc is not None and w.proc.proc.poll() is not None:
            raise NotCaughtUp(f"worker exited with {w.proc.proc.returncode}:\n{w.proc.log_tail()}")
        w.rss_peak_kb = max(w.rss_peak_kb, w.rss_kb()[0])
        try:
            last = w.scenario.http_json(w.port, "/status", timeout=5.0)
        except OSError:
            time.sleep(0.5)
            continue
        held_peak = max(held_peak, last["held"])
        now = time.time()
        due = int(r.zcount(names.KEY_SETTLE, "-inf", int(now * 1000)))
        done = (
            last["applied"] >= produced
            and last["held"] == 0
            and all((p["lag"] or 0) == 0 for p in last["partitions"])
            and due == 0
        )
        counters = (last["applied"], last["entries"], last["dead_letters"])
        if not done:
            seen = None
        elif counters != seen:
            seen, since = counters, now
        elif now - since >= stable_s:
            return since, last, held_peak
        time.sleep(0.25)
    raise NotCaughtUp(f"not caught up within {timeout_s:.0f} s; last /status: {json.dumps(last)[:2000]}")


def snapshot(r: redis.Redis) -> dict[str, Any]:
    """The state a rebuild must reproduce (users, every balance) and its memory; SCAN, so Redis is never blocked."""
    users = sum(1 for _ in r.scan_iter(match=names.KEY_USER + "*", count=5000))
    keys = list(r.scan_iter(match=names.KEY_BALANCE + "*", count=5000))
    balances: dict[str, dict[str, str]] = {}
    for i in range(0, len(keys), 5000):
        chunk = keys[i : i + 5000]
        pipe = r.pipeline(transaction=False)
        for k in chunk:
            pipe.hgetall(k)
        for k, v in zip(chunk, pipe.execute(), strict=True):
            balances[k[len(names.KEY_BALANCE) :]] = v
    return {
        "users": users,
        "balances": balances,
        "order_keys": sum(1 for _ in r.scan_iter(match=names.KEY_ORDER + "*", count=5000)),
        "used_memory": int(r.info("memory")["used_memory"]),
        "keys": int(r.dbsize()),
    }


def compare(want: dict[str, Any], got: dict[str, Any], limit: int = 10) -> list[str]:
    """What the rebuild got wrong, as lines to print; empty when it reproduced the snapshot exactly."""
    out = []
    if want["users"] != got["users"]:
        out.append(f"users: {got['users']:,} rebuilt, {want['users']:,} before")
    wb, gb = want["balances"], got["balances"]
    if len(wb) != len(gb):
        out.append(f"balance keys: {len(gb):,} rebuilt, {len(wb):,} before")
    differ = sorted(u for u in wb.keys() | gb.keys() if wb.get(u) != gb.get(u))
    if differ:
        out.append(f"{len(differ):,} balances differ")
    out.extend(f"  {u}: rebuilt {gb.get(u)} before {wb.get(u)}" for u in differ[:limit])
    return out


def run_build(
    w: Worker, r: redis.Redis, produced: int, args: argparse.Namespace, empty_memory: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Spawn the worker, wait until caught up, snapshot Redis; spawn-to-caught-up is what an operator waits."""
    log_from = w.proc.log.stat().st_size if w.proc.log.exists() else 0
    t0 = time.time()
    w.start()
    t_ready = time.time()
    console.print(f"  worker answers after {t_ready - t0:.1f} s; waiting until it has applied {produced:,} records")
    t_done, status, held_peak = wait_caught_up(w, r, produced, args.stable, args.timeout)
    snap = snapshot(r)
    secs = t_done - t0
    with w.proc.log.open("rb") as f:
        f.seek(log_from)
        replayed = REPLAY_MARK in f.read().decode(errors="replace")
    m = {
        "records": produced,
        "users": snap["users"],
        "balances": len(snap["balances"]),
        "order_keys": snap["order_keys"],
        "redis_keys": snap["keys"],
        "seconds_from_spawn": secs,
        "worker_start_s": t_ready - t0,
        "seconds_after_start": t_done - t_ready,
        "records_per_s": rate(produced, secs),
        "users_per_s": rate(snap["users"], secs),
        "used_memory": snap["used_memory"],
        "used_memory_empty": empty_memory,
        "bytes_per_user": (snap["used_memory"] - empty_memory) / snap["users"] if snap["users"] else math.nan,
        "rss_peak_mb": w.rss_peak_kb / 1024,
        "held_peak": held_peak,
        "rewound_inputs": replayed,
        "status": {k: v for k, v in status.items() if k != "partitions"},
    }
    return m, snap


async def produce_sale(st: Any, records: list[dict[str, Any]]) -> float:
    """Produce the whole sale before any worker starts, so both builds replay the same backlog; returns seconds."""
    t0 = time.time()
    await produce(st.bootstrap, records)
    return time.time() - t0


def bench(st: Any, tmp: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Both builds on one stack and topics, so the rebuild replays exactly what the initial build applied."""
    console.print(f"generating the sale: {args.users:,} users, {args.orders:,} orders, seed {args.seed} ...")
    recs = sale(args.users, args.orders, args.seed, SALE_START)
    produced = len(recs)
    by_topic = {t: sum(1 for x in recs if x["topic"] == t) for t in names.INPUT_TOPICS}
    res["sale"] = {"records": produced, "order_records": n_orders(recs), "by_topic": by_topic}
    console.print(f"  {produced:,} records: {by_topic}")
    res["sale"]["produce_s"] = asyncio.run(produce_sale(st, recs))
    del recs
    console.print(f"  produced in {res['sale']['produce_s']:.1f} s")
    r = redis.Redis.from_url(st.redis_url, decode_responses=True)
    try:
        console.rule("initial build: a new worker, empty Redis, the sale already in the topics")
        first = Worker(st, tmp, args.grace, LABEL, args.batch_size)
        try:
            res["initial"], before = run_build(first, r, produced, args, int(r.info("memory")["used_memory"]))
        finally:
            res["initial_exit_code"] = first.proc.stop()
        console.print({k: v for k, v in res["initial"].items() if k != "status"})

        console.rule("rebuild: FLUSHALL, then a fresh worker in the same group and var dir")
        r.flushall()
        res["keys_after_flushall"] = int(r.dbsize())
        res["used_memory_empty"] = int(r.info("memory")["used_memory"])
        nxt = successor(st, tmp, first, args)
        try:
            res["rebuild"], after = run_build(nxt, r, produced, args, res["used_memory_empty"])
        finally:
            res["rebuild_exit_code"] = nxt.proc.stop()
        console.print({k: v for k, v in res["rebuild"].items() if k != "status"})
    finally:
        r.close()
    res["mismatch"] = compare(before, after)
    res["matched"] = not res["mismatch"]


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss, because extrapolated rebuilds run into hours."""
    if math.isnan(seconds):
        return "n/a"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def extrapolate(res: dict[str, Any]) -> dict[str, Any]:
    """What 1M users of the same shape would cost, linear in users, since 1M is too slow to measure here."""
    rb = res["rebuild"]
    scale = TARGET_USERS / rb["users"] if rb["users"] else math.nan
    return {
        "users": TARGET_USERS,
        "records": round(res["sale"]["records"] * scale),
        "rebuild_s": TARGET_USERS / rb["users_per_s"],
        "used_memory_mb": rb["bytes_per_user"] * TARGET_USERS / 1e6,
    }


def print_report(res: dict[str, Any]) -> None:
    """Both builds side by side with the extrapolation, so a rebuild reads against a first build and 1M users."""
    ini, rb, ex = res["initial"], res["rebuild"], res["extrapolated"]
    t = Table(title=f"fenxiao Redis rebuild ({res['when']}, {res['cpus']} CPUs, grace {res['args']['grace']} s)")
    for col in ("measure", "initial build", "rebuild"):
        t.add_column(col)
    t.add_column(f"{TARGET_USERS:,} users (extrapolated)")
    rows = [
        ("records (input)", fmt(ini["records"]), fmt(rb["records"]), fmt(ex["records"])),
        ("users (fx:u:)", fmt(ini["users"]), fmt(rb["users"]), fmt(ex["users"])),
        ("balances (fx:b:)", fmt(ini["balances"]), fmt(rb["balances"]), ""),
        ("worker start-up s", fmt(ini["worker_start_s"], "", 1), fmt(rb["worker_start_s"], "", 1), ""),
        (
            "spawn -> caught up s",
            fmt(ini["seconds_from_spawn"], "", 1),
            fmt(rb["seconds_from_spawn"], "", 1),
            f"{fmt(ex['rebuild_s'])} ({hms(ex['rebuild_s'])})",
        ),
        ("records/s", fmt(ini["records_per_s"]), fmt(rb["records_per_s"]), ""),
        ("users/s", fmt(ini["users_per_s"]), fmt(rb["users_per_s"]), ""),
        (
            "Redis used_memory",
            fmt(ini["used_memory"] / 1e6, " MB", 1),
            fmt(rb["used_memory"] / 1e6, " MB", 1),
            fmt(ex["used_memory_mb"], " MB"),
        ),
        ("(used_memory - empty) / user", fmt(ini["bytes_per_user"], " B"), fmt(rb["bytes_per_user"], " B"), ""),
        ("worker RSS peak", fmt(ini["rss_peak_mb"], " MB"), fmt(rb["rss_peak_mb"], " MB"), ""),
        ("aligner held peak (events)", fmt(ini["held_peak"]), fmt(rb["held_peak"]), ""),
        ("ledger entries emitted", fmt(ini["status"]["entries"]), fmt(rb["status"]["entries"]), ""),
        ("inputs rewound (log)", str(ini["rewound_inputs"]), str(rb["rewound_inputs"]), ""),
        ("load average 1/5/15 min", f"before {res['loadavg_before']}", f"after {res['loadavg_after']}", ""),
    ]
    for row in rows:
        t.add_row(*row)
    console.print(t)
    if res["matched"]:
        console.print(
            f"[green]MATCH[/]: rebuilt state equals the snapshot ({rb['users']:,} users, {rb['balances']:,} balances)"
        )
    else:
        for line in res["mismatch"]:
            console.print(f"[red]MISMATCH[/] {line}", highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Sizes and knobs; --orders defaults to a quarter of --users, the shape the 1M extrapolation assumes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000, help="users in the sale (default 100,000)")
    ap.add_argument("--orders", type=int, default=None, help="orders in the sale (default users // 4)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--grace", type=float, default=1.0, help="[pipeline] ordering_grace_seconds of the worker")
    ap.add_argument("--batch-size", type=int, default=None, help="FENXIAO_BATCH_SIZE (default: the worker's)")
    ap.add_argument("--stable", type=float, default=2.0, help="seconds the caught-up state must hold (default 2)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up on a build after this many seconds")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    a.orders = a.orders if a.orders is not None else a.users // 4
    return a


def loadavg() -> list[float]:
    """The 1/5/15 min load averages: on a shared box they explain most of the variance between runs."""
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    """Run both builds on a private stack, print the table, write the JSON; 1 if the rebuilt state differs."""
    args = parse_args(argv)
    now = datetime.now(UTC)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` still stops the workers and the stack
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "when": now.strftime("%Y-%m-%d %H:%M UTC"),
        "stamp": now.strftime("%Y-%m-%dT%H%M%SZ"),
        "cpus": os.cpu_count(),
        "loadavg_before": loadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fenxiao-rebuild-") as d:
        tmp = Path(d)
        console.print("starting a private Kafka + Redis ...")
        # faust puts its "<app id>-data" directory in the working directory: keep it in the temp dir
        with stack_mod.isolated_stack(tmp / "stack", partitions=PARTITIONS) as st, contextlib.chdir(tmp):
            bench(st, tmp, args, res)
    res["loadavg_after"] = loadavg()
    res["wall_s"] = round(time.monotonic() - t_start, 1)
    res["extrapolated"] = extrapolate(res)
    out = args.out_dir / f"rebuild-{res['stamp']}.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print_report(res)
    console.print(f"results: {out}  (wall {res['wall_s']} s)")
    return 0 if res["matched"] else 1


if __name__ == "__main__":
    sys.exit(main())
