"""Issue 5's benchmark on one private stack: baseline, pipeline, latency, backlog, memory, sink. Asserts nothing.

    .venv/bin/python bench/pipeline_bench.py [--quick] [--users N --orders M --seed S] [--backlog N]

Starts its own Kafka + redis-server (streams.stack.isolated_stack in a temp dir; never a developer's
stack) and measures, in one run:
  baseline  a plain aiokafka consume -> produce (acks=all) passthrough of the sale's order records,
            in its own process: the ceiling for a Python consumer on this machine;
  pipeline  one `fenxiao worker` process: the flash sale produced as fast as possible, orders/s from
            the first order produced to the last expected ledger entry read back; the ledger is
            checked against streams.reference at the end; py-spy profiles the worker meanwhile;
  memory    Redis MEMORY USAGE per user key (fx:u:) and per open order key (fx:o:), worker RSS;
  latency   produce -> ledger entry read back, p50/p95/p99, paced at 25/50/75% of the pipeline's max;
  backlog   N orders already in the topics when a fresh worker starts: time to drain;
  sink      rows/s into embedded chDB (bench/sink_bench.py's add_many path).
Writes bench/results/<date>.json and a chart PNG next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.bench_stats import latency_summary, meets, rate  # noqa: E402
from bench.profile_summary import summarize_file  # noqa: E402
from streams import flashsale, names, outcome, reference  # noqa: E402
from streams import stack as stack_mod  # noqa: E402
from streams.config import load as load_program  # noqa: E402
from streams.demo import program_toml  # noqa: E402

console = Console()
PARTITIONS = 4
BENCH_IN, BENCH_OUT = "bench.passthrough.in", "bench.passthrough.out"
SALE_START = datetime(2025, 11, 11, tzinfo=UTC)  # in the past: freezes end during the run, settlement is exercised
SALE_SECONDS = 600.0
LOADS = (0.25, 0.5, 0.75)


def _enc(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- Kafka helpers


class Tail:
    """Reads a topic from given offsets in the background, recording each record's arrival time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.got: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._c: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5, max_poll_records=5000
        )
        await self._c.start()
        parts = self._c.partitions_for_topic(self.topic) or set()
        if not parts:
            md = await self._c._client.fetch_all_metadata()
            parts = md.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._c.assign(tps)
        await self._c.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._c is not None
        while True:
            batch = await self._c.getmany(timeout_ms=50)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    self.got.append((now, json.loads(m.value)))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._c:
            await self._c.stop()


@dataclass
class Produced:
    """What a produce run did: when each order event was sent, when the first order went out, when all were acked."""

    sent_at: dict[str, float] = field(default_factory=dict)
    first_order: float = math.nan
    last_sent: float = math.nan
    done: float = math.nan
    records: int = 0
    orders: int = 0


async def produce(
    bootstrap: str, records: Iterable[dict[str, Any]], rate_per_s: float | None = None, topic: str | None = None
) -> Produced:
    """Produce records in order (keyed, acks=all), order records paced at rate_per_s; remember their send times."""
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, max_batch_size=256 * 1024
    )
    await p.start()
    out = Produced()
    pending: list[asyncio.Future[Any]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        for rec in records:
            is_order = rec["topic"] == names.ORDERS
            if rate_per_s and is_order:  # pace the order records; clicks/signups/tiers go out between them
                ahead = t0 + out.orders / rate_per_s - loop.time()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            now = time.time()
            if is_order:
                if out.orders == 0:
                    out.first_order = now
                out.orders += 1
                out.sent_at[rec["value"]["event_id"]] = now
            key = rec.get("key")
            pending.append(
                await p.send(topic or rec["topic"], value=_enc(rec["value"]), key=None if key is None else key.encode())
            )
            out.records += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        out.last_sent = time.time()
        await p.flush()
        await asyncio.gather(*pending)
        out.done = time.time()
    finally:
        await p.stop()
    return out


async def create_bench_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics([BENCH_IN, BENCH_OUT])
            await asyncio.sleep(1.0)
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (BENCH_IN, BENCH_OUT)])
    finally:
        await admin.close()
    await asyncio.sleep(1.0)


async def passthrough_child(bootstrap: str, count: int) -> None:
    """The baseline: consume BENCH_IN, produce every record unchanged to BENCH_OUT, wait for acks, commit.

    The same at-least-once shape as the worker (send, await the acks, then commit), without any logic.
    Prints one JSON line: when the first record was consumed and when the count-th was acknowledged.
    """
    c = AIOKafkaConsumer(
        BENCH_IN,
        bootstrap_servers=bootstrap,
        group_id=f"bench-pass-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
    )
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await c.start()
    await p.start()
    done, first = 0, math.nan
    try:
        while done < count:
            batch = await c.getmany(timeout_ms=100)
            msgs = [m for ms in batch.values() for m in ms]
            if msgs and math.isnan(first):
                first = time.time()
            futs = [await p.send(BENCH_OUT, value=m.value, key=m.key) for m in msgs]
            if futs:
                await asyncio.gather(*futs)
                await c.commit()
                done += len(futs)
        print(json.dumps({"first": first, "end": time.time(), "records": done}), flush=True)
    finally:
        await p.stop()
        await c.stop()


# ---------------------------------------------------------------- the worker


class Worker:
    """`fenxiao worker` as a subprocess (tests/integration/scenario.WorkerProcess) with its own group and data."""

    def __init__(self, st: Any, tmp: Path, grace: float, label: str, batch_size: int | None) -> None:
        from tests.integration import scenario

        self.scenario = scenario
        (self.port,) = stack_mod.pick_free_ports(1)
        cfg = tmp / "fenxiao.toml"
        cfg.write_text(program_toml(freeze_seconds=60, grace_seconds=grace))
        env = {
            names.ENV_KAFKA: st.bootstrap,
            names.ENV_REDIS_URL: st.redis_url,
            names.ENV_APP_ID: f"fx-bench-{label}-{uuid.uuid4().hex[:6]}",
            names.ENV_WEB_PORT: str(self.port),
            names.ENV_VAR_DIR: str(tmp / f"var-{label}"),
            names.ENV_PARTITIONS: str(PARTITIONS),
            names.ENV_TOKEN_KEY: scenario.TEST_TOKEN_KEY,
        }
        if batch_size:
            env[names.ENV_BATCH_SIZE] = str(batch_size)
        self.proc = scenario.WorkerProcess(cfg, env, tmp / f"worker-{label}.log")
        self.rss_peak_kb = 0

    def start(self) -> Worker:
        self.proc.start()
        self.scenario.wait_http(self.port, "/health", 120, self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in kB from /proc."""
        vals = {"VmRSS": 0, "VmHWM": 0}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if k in vals:
                    vals[k] = int(v.split()[0])
        return vals["VmRSS"], vals["VmHWM"]

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------- phases


def sale(users: int, orders: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    return list(flashsale.generate(users, orders, seed, start, SALE_SECONDS))


def expected_ids(records: list[dict[str, Any]], program: Any) -> set[str]:
    run = reference.run(records, program, int(time.time() * 1000) + 3_600_000)
    return {str(e["entry_id"]) for e in run.entries}


async def wait_entries(
    tail: Tail, want: set[str], quiet_s: float, worker: Worker | None = None, from_index: int = 0
) -> tuple[float, int]:
    """Wait until every expected entry id was read, or neither entries nor the worker moved for quiet_s.

    Returns (arrival time of the last entry read, how many expected ids were seen). A ledger that differs
    from the reference never reaches the expected set; then the end is the last arrival before the quiet.
    The worker's applied count counts as progress: a large backlog can take minutes of signups and clicks
    before its first commission entry.
    """
    seen: set[str] = set()
    i = from_index
    last_at = math.nan
    progress = time.monotonic()
    applied, polled = -1, 0.0
    while True:
        if i < len(tail.got):
            progress = time.monotonic()
        while i < len(tail.got):
            t, v = tail.got[i]
            i += 1
            last_at = t
            if v["entry_id"] in want:
                seen.add(v["entry_id"])
        if len(seen) == len(want):
            return last_at, len(seen)
        now = time.monotonic()
        if worker is not None and now - polled > 2.0:
            polled = now
            worker.rss_peak_kb = max(worker.rss_peak_kb, worker.rss_kb()[0])
            try:
                n = int(worker.scenario.http_json(worker.port, "/status", timeout=10.0)["applied"])
            except Exception as e:  # a busy worker may answer late; the quiet window decides, not one miss
                console.print(f"[yellow]worker /status did not answer: {e!r}[/]")
            else:
                if n != applied:
                    applied, progress = n, now
        # Before the worker applied anything (start-up, group join, the first partitions' records) allow 300 s.
        if now - progress > (quiet_s if applied > 0 or i > from_index else max(quiet_s, 300.0)):
            console.print(f"[yellow]{len(seen):,} of {len(want):,} expected entries; nothing new for {quiet_s:.0f}s[/]")
            return last_at, len(seen)
        await asyncio.sleep(0.05)


def n_orders(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r["topic"] == names.ORDERS)


async def phase_baseline(st: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Preload the order records, then time a passthrough process from its first consume to its last ack.

    Preloaded so that the bench's own producer (same 2 cores) does not cap the ceiling we compare against.
    """
    orders = [r for r in records if r["topic"] == names.ORDERS]
    await create_bench_topics(st.bootstrap)
    await produce(st.bootstrap, orders, topic=BENCH_IN)
    t0 = time.time()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--passthrough-child",
        st.bootstrap,
        "--passthrough-count",
        str(len(orders)),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), timeout=600)
    r = json.loads(out.decode().strip().splitlines()[-1])
    secs = r["end"] - r["first"]
    return {
        "records": r["records"],
        "seconds": secs,
        "records_per_s": rate(r["records"], secs),
        "process_seconds_incl_start": r["end"] - t0,
    }


async def phase_pipeline(
    st: Any,
    worker: Worker,
    tail: Tail,
    records: list[dict[str, Any]],
    want: set[str],
    profile: Path | None,
    quiet_s: float,
) -> dict[str, Any]:
    spy = None
    if profile is not None and shutil.which("py-spy", path=str(Path(sys.executable).parent)):
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--nonblocking",
                "-r",
                "50",
                "-f",
                "raw",
                "-o",
                str(profile),
                "--pid",
                str(worker.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    start_at = len(tail.got)
    prod = await produce(st.bootstrap, records)
    end, seen = await wait_entries(tail, want, quiet_s=quiet_s, worker=worker, from_index=start_at)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
    secs = end - prod.first_order
    orders = n_orders(records)
    return {
        "order_records": orders,
        "records": len(records),
        "entries": len(want),
        "entries_seen": seen,
        "seconds": secs,
        "orders_per_s": rate(orders, secs),
        "producer_orders_per_s": rate(orders, prod.done - prod.first_order),
        "rss_peak_mb": worker.rss_peak_kb / 1024,
    }


def latencies(prod: Produced, tail_from: int, tail: Tail, exclude_last_s: float) -> list[float]:
    """Produce -> first ledger entry (not `settled`: that waits for the freeze) per order event."""
    first: dict[str, float] = {}
    for t, v in tail.got[tail_from:]:
        sid = v["source_event_id"]
        if v["kind"] != "settled" and sid in prod.sent_at and sid not in first:
            first[sid] = t
    cut = prod.last_sent - exclude_last_s
    return [t - prod.sent_at[sid] for sid, t in first.items() if prod.sent_at[sid] <= cut]


async def phase_latency(
    st: Any,
    worker: Worker,
    tail: Tail,
    records: list[dict[str, Any]],
    want: set[str],
    orders_per_s: float,
    grace: float,
) -> dict[str, Any]:
    start_at = len(tail.got)
    prod = await produce(st.bootstrap, records, rate_per_s=orders_per_s)
    end, seen = await wait_entries(tail, want, quiet_s=max(5.0, 3 * grace), worker=worker, from_index=start_at)
    lat = latencies(prod, start_at, tail, exclude_last_s=2 * grace)
    achieved = rate(prod.orders, (prod.last_sent - prod.first_order))
    status = worker.scenario.http_json(worker.port, "/status")
    late_parts = {p["partition"]: p["late"] for p in status["partitions"] if p.get("late")}
    if late_parts:
        console.print(f"[yellow]late events by partition so far: {late_parts}[/]")
    return {
        "late_events_so_far": status["late"],
        "offered_orders_per_s": orders_per_s,
        "achieved_produce_orders_per_s": achieved,
        "drained_orders_per_s": rate(prod.orders, end - prod.first_order),
        "order_records": prod.orders,
        "entries": len(want),
        "entries_seen": seen,
        **latency_summary(lat),
    }


def redis_memory(redis_url: str, sample: int) -> dict[str, Any]:
    """MEMORY USAGE over up to `sample` keys per prefix; orders split into open (not settled) and settled."""
    from streams import redis_conn

    r = redis_conn.connect(redis_url)
    mem = r.info("memory")
    # a cluster answers per node: {node: info}
    used = mem["used_memory"] if "used_memory" in mem else sum(v["used_memory"] for v in mem.values())
    out: dict[str, Any] = {"used_memory": int(used)}
    for label, pattern in (("user", "fx:u:*"), ("order", "fx:o:*")):
        keys = []
        for k in r.scan_iter(match=pattern, count=1000):
            keys.append(k)
            if len(keys) >= sample:
                break
        sizes: dict[str, list[int]] = {label: []} if label == "user" else {"open_order": [], "settled_order": []}
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
            if label == "order":
                pipe.get(k)
        res = pipe.execute()
        if label == "user":
            sizes["user"] = [int(x) for x in res if x is not None]
        else:
            for mem, val in zip(res[0::2], res[1::2], strict=True):
                if mem is None or val is None:
                    continue
                flags = json.loads(val)[2]
                sizes["settled_order" if flags & 4 else "open_order"].append(int(mem))
        for k, v in sizes.items():
            out[f"{k}_keys_sampled"] = len(v)
            out[f"{k}_bytes"] = sum(v) / len(v) if v else math.nan
    out["user_keys"] = sum(1 for _ in r.scan_iter(match="fx:u:*", count=5000))
    out["order_keys"] = sum(1 for _ in r.scan_iter(match="fx:o:*", count=5000))
    r.close()
    return out


async def read_all_outputs(bootstrap: str) -> Any:
    from tests.integration import scenario

    return await scenario.read_outputs(bootstrap, timeout=120)


def check_ledger(out: Any, records: list[dict[str, Any]], program: Any) -> dict[str, Any]:
    ref = reference.run(records, program, int(time.time() * 1000))
    want = outcome.summarize(ref.entries, ref.bindings, ref.dead_letters)
    got = outcome.summarize(out.entries, out.bindings, out.dead_letters)
    sections = ("entries", "totals", "balances", "bindings", "dead_letters")
    matched = {s: got[s] == want[s] for s in sections}
    return {
        "matched": all(matched.values()),
        "sections": matched,
        "diff": outcome.diff(got, want, limit=10),
        "entries": len(want["entries"]),
        "totals": got["totals"],
    }


async def phase_backlog(st: Any, tmp: Path, args: argparse.Namespace, program: Any) -> dict[str, Any]:
    from tests.integration import scenario

    await scenario.reset_topics(st.bootstrap, PARTITIONS)
    from streams import redis_conn

    redis_conn.flush(st.redis_url)
    users = max(1, args.backlog * args.users // max(1, args.orders))
    console.print(f"backlog: generating {args.backlog:,} orders, {users:,} users ...")
    recs = sale(users, args.backlog, args.seed + 100, SALE_START)
    want = expected_ids(recs, program)
    prod = await produce(st.bootstrap, recs)
    console.print(f"backlog: {len(recs):,} records in the topics; starting a fresh worker")
    tail = Tail(st.bootstrap, names.COMMISSIONS)
    await tail.start()
    t0 = time.time()
    w = Worker(st, tmp, args.grace, "backlog", args.batch_size).start()
    t_ready = time.time()
    try:
        # A big backlog has long stretches (signups, clicks) without entries and big slow batches: wait longer.
        end, seen = await wait_entries(tail, want, quiet_s=max(60.0, 3 * args.grace), worker=w)
        first = tail.got[0][0] if tail.got else math.nan
    finally:
        await tail.stop()
        w.stop()
    if seen < len(want):
        # The temp dir goes with the run: keep the worker's log, which says why the backlog stopped short.
        kept = args.out_dir / f"{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}-worker-backlog.log"
        shutil.copy(w.proc.log, kept)
        console.print(f"[red]the backlog stopped at {seen:,} of {len(want):,} entries; worker log: {kept}[/]")
    orders = n_orders(recs)
    del prod
    # Redis at the backlog's size (issue 5 asks for bytes per user at 1M users, not at the main sale's size).
    memory = redis_memory(st.redis_url, args.mem_sample)
    return {
        "memory": memory,
        "orders": args.backlog,
        "order_records": orders,
        "records": len(recs),
        "entries": len(want),
        "entries_seen": seen,
        "seconds_from_spawn": end - t0,
        "worker_start_s": t_ready - t0,
        "seconds_first_to_last_entry": end - first,
        "orders_per_s": rate(orders, end - t_ready),
        "rss_peak_mb": w.rss_peak_kb / 1024,
    }


def phase_sink(rows_n: int) -> dict[str, Any]:
    from bench.sink_bench import ledger_rows, measure
    from streams.clickhouse import ChdbBackend, migrate
    from streams.sink import ClickHouseSink

    rows = ledger_rows(rows_n)
    with tempfile.TemporaryDirectory(prefix="fenxiao-bench-sink-") as d, ChdbBackend(Path(d) / "ch") as ch:
        migrate(ch)
        sink = ClickHouseSink(ch)
        add_s, flush_s, inserted = measure(sink, rows, bulk=True)
        r_add, r_flush, _ = measure(sink, rows, bulk=True)
    return {
        "rows": rows_n,
        "inserted": inserted,
        "rows_per_s": rate(rows_n, add_s + flush_s),
        "replay_rows_per_s": rate(rows_n, r_add + r_flush),
    }


# ---------------------------------------------------------------- report


def fmt(v: float, unit: str = "", digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    base = res["baseline"]["records_per_s"]
    pipe = res["pipeline"]["orders_per_s"]
    half = next((lv for lv in res["latency"] if lv["load"] == 0.5), None)
    mem = res["memory"]
    share = pipe / base if base and not math.isnan(base) else math.nan
    rows: list[tuple[str, str, str, bool | None]] = [
        ("pipeline / baseline", f"{fmt(share * 100, '%', 1)}", ">= 50%", meets(share, 0.5, True)),
    ]
    if half:
        rows.append(("p50 latency @50% load", fmt(half["p50_ms"], " ms"), "<= 50 ms", meets(half["p50_ms"], 50, False)))
        rows.append(
            ("p99 latency @50% load", fmt(half["p99_ms"], " ms"), "<= 250 ms", meets(half["p99_ms"], 250, False))
        )
    rows.append(("Redis bytes / user", fmt(mem["user_bytes"], " B"), "<= 150 B", meets(mem["user_bytes"], 150, False)))
    rows.append(
        (
            "Redis bytes / open order",
            fmt(mem["open_order_bytes"], " B"),
            "<= 400 B",
            meets(mem["open_order_bytes"], 400, False),
        )
    )
    if res.get("sink"):
        sk = res["sink"]["rows_per_s"]
        rows.append(("sink rows/s (chDB)", fmt(sk), ">= 200,000", meets(sk, 200_000, True)))
    return rows


def print_report(res: dict[str, Any]) -> None:
    t = Table(
        title=f"fenxiao pipeline benchmark ({res['when']}, {res['cpus']} CPUs, grace {res['grace_s']} s, "
        f"{res.get('redis', 'one redis-server')})"
    )
    for col in ("measure", "value", "target", "status"):
        t.add_column(col)
    for name, val, target, ok in targets(res):
        status = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]not measured[/]"}[ok]
        t.add_row(name, val, target, status)
    console.print(t)
    d = Table(title="measurements")
    d.add_column("what")
    d.add_column("value")
    b, p = res["baseline"], res["pipeline"]
    d.add_row("baseline passthrough", f"{fmt(b['records_per_s'])} records/s ({b['records']:,} order records)")
    d.add_row(
        "pipeline (1 worker)",
        f"{fmt(p['orders_per_s'])} orders/s ({p['order_records']:,} order records of {p['records']:,}, "
        f"{p['entries']:,} entries, {fmt(p['seconds'], ' s', 1)})",
    )
    d.add_row("ledger vs streams.reference", "[green]matched[/]" if res["ledger"]["matched"] else "[red]MISMATCH[/]")
    for lv in res["latency"]:
        d.add_row(
            f"latency @{int(lv['load'] * 100)}% ({fmt(lv['offered_orders_per_s'])} orders/s)",
            f"p50 {fmt(lv['p50_ms'], ' ms')}  p95 {fmt(lv['p95_ms'], ' ms')}  p99 {fmt(lv['p99_ms'], ' ms')}"
            f"  max {fmt(lv['max_ms'], ' ms')}  (n={int(lv['n']):,})",
        )
    if res.get("backlog"):
        bl = res["backlog"]
        d.add_row(
            f"backlog catch-up ({bl['orders']:,} orders)",
            f"{fmt(bl['seconds_from_spawn'], ' s', 1)} from worker spawn "
            f"(start-up {fmt(bl['worker_start_s'], ' s', 1)}), "
            f"{fmt(bl['orders_per_s'])} order records/s, RSS peak {fmt(bl['rss_peak_mb'], ' MB')}",
        )
        bm = bl.get("memory")
        if bm:
            d.add_row(
                "Redis after the backlog",
                f"user {fmt(bm['user_bytes'], ' B')} ({bm['user_keys']:,} keys), "
                f"open order {fmt(bm['open_order_bytes'], ' B')}, settled order {fmt(bm['settled_order_bytes'], ' B')} "
                f"({bm['order_keys']:,} keys), used_memory {bm['used_memory'] / 1e6:,.1f} MB",
            )
    m = res["memory"]
    d.add_row(
        "Redis",
        f"user {fmt(m['user_bytes'], ' B')} ({m['user_keys']:,} keys), open order {fmt(m['open_order_bytes'], ' B')}, "
        f"settled order {fmt(m['settled_order_bytes'], ' B')} ({m['order_keys']:,} keys), used_memory "
        f"{fmt(m['used_memory'] / 1e6, ' MB', 1)}",
    )
    d.add_row("worker RSS peak (pipeline)", fmt(p["rss_peak_mb"], " MB"))
    if res.get("sink"):
        d.add_row(
            "sink (chDB, add_many)",
            f"{fmt(res['sink']['rows_per_s'])} rows/s first write, "
            f"{fmt(res['sink']['replay_rows_per_s'])} rows/s replay",
        )
    console.print(d)
    prof = res.get("profile") or {}
    if prof.get("samples"):
        pt = Table(title=f"worker profile (py-spy, {prof['samples']:,} samples, inclusive %)")
        pt.add_column("category")
        pt.add_column("%", justify="right")
        for k, v in sorted(prof["inclusive_pct"].items(), key=lambda kv: -kv[1]):
            pt.add_row(k, f"{v}")
        console.print(pt)
        st = Table(title="top self time")
        st.add_column("function")
        st.add_column("%", justify="right")
        for f_, v in prof["top_self"][:10]:
            st.add_row(f_, f"{v}")
        console.print(st)


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = res["latency"]
    maxr = res["pipeline"]["orders_per_s"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    offered = [x["offered_orders_per_s"] for x in lv] + [maxr]
    achieved = [x["drained_orders_per_s"] for x in lv] + [maxr]
    a1.plot(offered, achieved, "o-", label="pipeline (achieved)")
    a1.plot([min(offered), max(offered)], [min(offered), max(offered)], ":", color="grey", label="offered = achieved")
    a1.axhline(res["baseline"]["records_per_s"], color="tab:red", ls="--", label="baseline passthrough")
    a1.set_yscale("log")  # the passthrough ceiling is orders of magnitude above the pipeline
    a1.set_xlabel("offered load (orders/s)")
    a1.set_ylabel("throughput (orders/s, log)")
    a1.set_title("throughput vs offered load")
    a1.legend(loc="best", fontsize=8)
    xs = [x["offered_orders_per_s"] for x in lv]
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        a2.plot(xs, [x[key] for x in lv], style, label=key.replace("_ms", ""))
    a2.axhline(250, color="tab:red", ls="--", lw=0.8, label="p99 target 250 ms")
    a2.axhline(50, color="tab:orange", ls="--", lw=0.8, label="p50 target 50 ms")
    a2.set_yscale("log")
    a2.set_xlabel("offered load (orders/s)")
    a2.set_ylabel("produce -> ledger entry (ms)")
    a2.set_title(f"latency (grace {res['grace_s']} s)")
    a2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


async def run_stack_phases(st: Any, tmp: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    from tests.integration import scenario

    program = load_program(_write_config(tmp, args.grace))
    console.print(f"generating the sale: {args.users:,} users, {args.orders:,} orders, seed {args.seed} ...")
    recs = sale(args.users, args.orders, args.seed, SALE_START)
    console.print(f"  {len(recs):,} records, {n_orders(recs):,} on fenxiao.orders")

    console.rule("baseline: aiokafka passthrough")
    res["baseline"] = await phase_baseline(st, recs)
    console.print(res["baseline"])

    console.rule("pipeline: one worker, sale produced as fast as possible")
    await scenario.reset_topics(st.bootstrap, PARTITIONS)
    want = expected_ids(recs, program)
    w = Worker(st, tmp, args.grace, "pipeline", args.batch_size).start()
    tail = Tail(st.bootstrap, names.COMMISSIONS)
    await tail.start()
    all_records = list(recs)
    try:
        prof_path = tmp / "profile.txt" if not args.no_profile else None
        res["pipeline"] = await phase_pipeline(st, w, tail, recs, want, prof_path, max(5.0, 3 * args.grace))
        console.print(res["pipeline"])
        if prof_path is not None:
            res["profile"] = summarize_file(prof_path)
            if args.keep_profile and prof_path.exists():
                shutil.copy(prof_path, args.out_dir / f"{res['stamp']}-profile.txt")
        res["memory"] = redis_memory(st.redis_url, args.mem_sample)
        res["memory"]["worker_rss_mb"] = w.rss_kb()[0] / 1024
        console.print(res["memory"])

        maxr = res["pipeline"]["orders_per_s"]
        res["latency"] = []
        per_order = n_orders(recs) / max(1, args.orders)
        if math.isnan(maxr):
            console.print("[red]no pipeline maximum measured; skipping the latency levels[/]")
        for k, frac in enumerate(LOADS if not math.isnan(maxr) else ()):
            offered = frac * maxr
            n = max(200, int(offered * args.latency_seconds))
            users = max(1, n * args.users // max(1, args.orders))
            # size the sale for ~latency_seconds of produce (order records per order as in the main sale)
            lrecs = sale(users, max(50, int(n / per_order)), args.seed + 1 + k, SALE_START + timedelta(days=1 + k))
            console.rule(
                f"latency at {int(frac * 100)}% of max: {offered:,.0f} orders/s, {n_orders(lrecs):,} order records"
            )
            lwant = expected_ids(lrecs, program)
            lv = await phase_latency(st, w, tail, lrecs, lwant, offered, args.grace)
            lv["load"] = frac
            res["latency"].append(lv)
            all_records.extend(lrecs)
            console.print(lv)
        res["pipeline"]["rss_peak_mb"] = w.rss_peak_kb / 1024
        console.rule("ledger check against streams.reference (all records of the pipeline and latency runs)")
        await asyncio.sleep(args.grace + 1)
        out = await read_all_outputs(st.bootstrap)
        res["ledger"] = check_ledger(out, all_records, program)
        console.print({k: v for k, v in res["ledger"].items() if k != "totals"})
    finally:
        await tail.stop()
        w.stop()

    if args.backlog:
        console.rule(f"backlog catch-up: {args.backlog:,} orders already in the topics")
        res["backlog"] = await phase_backlog(st, tmp, args, program)
        console.print(res["backlog"])


def _write_config(tmp: Path, grace: float) -> Path:
    p = tmp / "fenxiao.toml"
    p.write_text(program_toml(freeze_seconds=60, grace_seconds=grace))
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=None, help="users in the pipeline sale (default 8000; quick 3000)")
    ap.add_argument("--orders", type=int, default=None, help="orders in the pipeline sale (default 10000; quick 5000)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--backlog", type=int, default=None, help="orders for the catch-up run (default 20000; 0 = skip)")
    ap.add_argument("--latency-seconds", type=float, default=None, help="produce time per load level (default 20)")
    ap.add_argument("--grace", type=float, default=1.0, help="[pipeline] ordering_grace_seconds of the worker")
    ap.add_argument("--batch-size", type=int, default=None, help="FENXIAO_BATCH_SIZE (default: the worker's)")
    ap.add_argument("--sink-rows", type=int, default=None, help="rows for the sink measurement (default 500000)")
    ap.add_argument("--mem-sample", type=int, default=5000, help="keys per prefix sampled with MEMORY USAGE")
    ap.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="NODES",
        help="run the worker on a private Redis Cluster of NODES primaries (e.g. 3) instead of one redis-server",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes for development (about 3 minutes)")
    ap.add_argument("--no-profile", action="store_true", help="do not attach py-spy to the worker")
    ap.add_argument("--keep-profile", action="store_true", help="copy py-spy's raw stacks next to the results")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--passthrough-child", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    ap.add_argument("--passthrough-count", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.users = a.users if a.users is not None else (3000 if q else 8_000)
    a.orders = a.orders if a.orders is not None else (5000 if q else 10_000)
    a.backlog = a.backlog if a.backlog is not None else (10_000 if q else 20_000)
    a.latency_seconds = a.latency_seconds if a.latency_seconds is not None else (8.0 if q else 20.0)
    a.sink_rows = a.sink_rows if a.sink_rows is not None else (100_000 if q else 500_000)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.passthrough_child:
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(passthrough_child(args.passthrough_child, args.passthrough_count))
        return 0
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop workers and the stack
    args.out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H%M%SZ")
    load1 = os.getloadavg()[0]
    res: dict[str, Any] = {
        "when": now.strftime("%Y-%m-%d %H:%M UTC"),
        "stamp": stamp,
        "cpus": os.cpu_count(),
        "loadavg_at_start": round(load1, 2),
        "grace_s": args.grace,
        "redis": f"{args.redis_cluster}-node Redis Cluster" if args.redis_cluster else "one redis-server",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "grace_note": (
            "latency includes the aligner: an order is released once every input partition has delivered a "
            "later record or has been idle for the grace; sparse partitions (tiers, some signups) therefore add "
            "up to the grace. The last 2x grace seconds of each level are excluded (the topics go quiet there)."
        ),
    }
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fenxiao-bench-") as d:
        tmp = Path(d)
        console.print("starting a private Kafka + Redis ...")
        with contextlib.ExitStack() as stacks:
            st: Any = stacks.enter_context(stack_mod.isolated_stack(tmp / "stack", partitions=PARTITIONS))
            if args.redis_cluster:
                console.print(f"starting a private {args.redis_cluster}-node Redis Cluster ...")
                url = stacks.enter_context(stack_mod.redis_cluster(tmp / "redis-cluster", args.redis_cluster))
                st = stack_mod.ClusterStack(st, url)
            asyncio.run(run_stack_phases(st, tmp, args, res))
    if args.sink_rows:
        console.rule(f"sink: {args.sink_rows:,} ledger rows into embedded chDB")
        res["sink"] = phase_sink(args.sink_rows)
        console.print(res["sink"])
    res["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.monotonic() - t_start, 1)
    res["targets"] = [{"measure": n, "value": v, "target": t, "met": ok} for n, v, t, ok in targets(res)]
    out = args.out_dir / f"{stamp}.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    png = args.out_dir / f"{stamp}.png"
    if res.get("latency"):
        chart(res, png)
    print_report(res)
    console.print(
        f"results: {out}  chart: {png}  (wall {res['wall_s']} s, load avg {res['loadavg_at_start']} -> "
        f"{res['loadavg_at_end']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
