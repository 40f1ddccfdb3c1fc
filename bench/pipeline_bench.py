"""Issue 11's benchmark on one private stack: baselines, pipeline, CPU, scaling, latency, backlog, sink.

    .venv/bin/python bench/pipeline_bench.py [--quick] [--scaling-only] [--users N --orders M --seed S]
        [--backlog N] [--quota-us 12500 --period-us 100000] [--grace S] [--latency-grace S]

Starts its own Kafka + redis-server (streams.ops.stack.isolated_stack in a temp dir; never a developer's
stack) and measures, in one run:
  baselines  plain aiokafka consume -> produce (acks=all, commit after the acks) of the sale's input
             records, each in its own process: 1-in/1-out, and fan-out-matched (as many output records,
             of the pipeline's average output size, as the reference outcome of the same sale has);
  pipeline   `fenxiao worker` on the sale produced as fast as possible; order records/s from the first
             order produced to the last expected ledger entry read back; py-spy profiles the worker;
  cpu        cgroup v1 cpuacct per component (broker, redis, each worker, sink, baseline, harness):
             CPU-ms per 1,000 order records in each phase;
  scaling    1, 2, 4 workers, each under the same CFS quota (an eighth of a core by default), infrastructure
             unthrottled; speedup, serial fraction (least-squares Amdahl fit; Karp-Flatt per point too),
             and an Amdahl projection for 8, 16 and 32 workers;
  latency    produce -> ledger entry, p50/p95/p99 paced at 25/50/75 % of the pipeline's max, the worker
             on the default config's ordering grace (spec: 10 s) unless --latency-grace;
  backlog    N orders already in the topics when a fresh worker starts: time, RSS peak, Redis bytes;
  sink       rows/s into embedded chDB (bench/sink_bench.py's add_many path), first write and replay.
Every run's ledger is checked against streams.engine.reference and /status `late` must stay 0: otherwise
`ledger_matches` is false and the exit code is 1. Numbers that could not be measured are null, with the
reason in `notes`. Writes bench/results/latest.json, bench/results/<stamp>.json and a chart PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.bench_stats import (  # noqa: E402
    amdahl_fit,
    amdahl_projection,
    cpu_by_component,
    fanout_counts,
    karp_flatt,
    latency_summary,
    meets,
    pipeline_outputs,
    rate,
)
from bench.cgroups import DEFAULT_PERIOD_US, DEFAULT_QUOTA_US, CgroupError, Cgroups  # noqa: E402
from bench.profile_summary import summarize_file  # noqa: E402
from streams import names  # noqa: E402
from streams.engine import outcome, reference  # noqa: E402
from streams.engine.config import load as load_program  # noqa: E402
from streams.ops import flashsale  # noqa: E402
from streams.ops import stack as stack_mod  # noqa: E402
from streams.ops.demo import program_toml  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 150)
PARTITIONS = 4
BENCH_IN, BENCH_OUT = "bench.passthrough.in", "bench.passthrough.out"
SALE_START = datetime(2025, 11, 11, tzinfo=UTC)  # in the past: freezes end during the run, settlement is exercised
SALE_SECONDS = 600.0
LOADS = (0.25, 0.5, 0.75)
SCALING = (1, 2, 4)
PROJECT = (8, 16, 32)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fenxiao" / "bench"


def _enc(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- Kafka helpers


class TailEntry(msgspec.Struct):
    """The fields of a ledger entry that the waits and latencies read (the rest is skipped while decoding)."""

    entry_id: str
    kind: str
    source_event_id: str | None = None


class Tail:
    """Reads a topic from given offsets in the background, recording each record's arrival time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.got: list[tuple[float, TailEntry]] = []
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
        # Only the fields the waits read, decoded in C: the tail shares the 2 cores with what it measures.
        decode = msgspec.json.Decoder(TailEntry).decode
        while True:
            batch = await self._c.getmany(timeout_ms=50)
            now = time.time()
            for msgs in batch.values():
                self.got.extend((now, decode(m.value)) for m in msgs)

    async def stop(self) -> None:
        """Stop reading (idempotent)."""
        task, c, self._task, self._c = self._task, self._c, None, None
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if c:
            await c.stop()


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
    bootstrap: str,
    records: Iterable[dict[str, Any]],
    rate_per_s: float | None = None,
    topic: str | None = None,
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
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        out.last_sent = time.time()
        await p.flush()
        await asyncio.gather(*pending)
        out.done = time.time()
    finally:
        await p.stop()
    return out


# produce_fast sends every partition's open batch after this many records: a sparse topic's records (tiers) then
# reach the broker with the orders around them, not at the end, which would make them late for a worker whose
# grace is shorter than the time to produce the sale.
SWEEP_EVERY = 5000


async def produce_fast(bootstrap: str, records: Sequence[dict[str, Any]], topic: str | None = None) -> Produced:
    """Produce fast (6x `produce`): records grouped per (topic, partition), in order, sent as whole batches.

    The partition of a keyed record is the default partitioner's (murmur2 of the key, as `produce` and the
    Java client choose); keyless ones go round-robin. No per-record future or send time: first_order is when
    producing began (a conservative start for a throughput). Idempotent and acks=all, so the order within a
    partition holds. topic overrides every record's topic (the baselines' input).
    """
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_batch_size=512 * 1024)
    await p.start()
    enc = msgspec.json.Encoder()
    out = Produced(first_order=time.time())
    try:
        parts = {t: sorted(await p.partitions_for(t)) for t in ({topic} if topic else {r["topic"] for r in records})}
        open_batches: dict[tuple[str, int], Any] = {}
        futs: list[asyncio.Future[Any]] = []
        rr = 0

        async def send_open() -> None:
            """Send every partition's open batch that holds records, and start an empty one in its place."""
            for (st, sp), sb in open_batches.items():
                if sb.record_count():
                    futs.append(await p.send_batch(sb, st, partition=sp))
                    open_batches[(st, sp)] = p.create_batch()

        for rec in records:
            t, key = topic or rec["topic"], rec.get("key")
            kb = None if key is None else str(key).encode()
            ps = parts[t]
            if kb is None:
                rr += 1
                part = ps[rr % len(ps)]
            else:
                part = partitioner(kb, ps, ps)
            value = enc.encode(rec["value"])
            b = open_batches.get((t, part))
            if b is None:
                b = open_batches[(t, part)] = p.create_batch()
            if b.append(key=kb, value=value, timestamp=None) is None:  # full: send it, start the next one
                futs.append(await p.send_batch(b, t, partition=part))
                b = open_batches[(t, part)] = p.create_batch()
                b.append(key=kb, value=value, timestamp=None)
            out.records += 1
            out.orders += rec["topic"] == names.ORDERS
            if out.records % SWEEP_EVERY == 0:  # a sparse partition's batch may not fill for the whole run
                await send_open()
            if len(futs) >= 32:
                await asyncio.gather(*futs)
                futs.clear()
        out.last_sent = time.time()
        await send_open()
        await asyncio.gather(*futs)
        out.done = time.time()
    finally:
        await p.stop()
    return out


async def create_bench_topics(bootstrap: str, topics: Sequence[str] = (BENCH_IN, BENCH_OUT)) -> None:
    """Fresh passthrough topics (deleted first), so each baseline reads only its own input."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(topics))
            await asyncio.sleep(1.0)
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()
    await asyncio.sleep(1.0)


async def passthrough_child(bootstrap: str, count: int, outputs: int, out_size: int) -> None:
    """A baseline: consume BENCH_IN, produce to BENCH_OUT, wait for the acks, commit; no logic.

    outputs = 0 is the plain 1-in/1-out passthrough (every record unchanged). Otherwise the fan-out-matched
    one: `outputs` records of `out_size` bytes spread evenly over the `count` inputs (bench_stats.fanout_counts),
    keyed like their input. The same at-least-once shape as the worker (send, await the acks, then commit).
    Prints one JSON line: when the first record was consumed and when the last one's outputs were acknowledged.
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
    per_input = fanout_counts(count, outputs) if outputs else []
    payload = b'{"pad":"' + b"x" * max(0, out_size - 10) + b'"}'
    await c.start()
    await p.start()
    print("ready", flush=True)  # the harness starts counting CPU when it answers
    await asyncio.to_thread(sys.stdin.readline)
    done, sent, first = 0, 0, math.nan
    try:
        while done < count:
            batch = await c.getmany(timeout_ms=100)
            msgs = [m for ms in batch.values() for m in ms]
            if msgs and math.isnan(first):
                first = time.time()
            futs = []
            for i, m in enumerate(msgs):
                if not outputs:
                    futs.append(await p.send(BENCH_OUT, value=m.value, key=m.key))
                    continue
                for _ in range(per_input[done + i] if done + i < count else 0):
                    futs.append(await p.send(BENCH_OUT, value=payload, key=m.key))
            if futs:
                await asyncio.gather(*futs)
                sent += len(futs)
            if msgs:
                await c.commit()
                done += len(msgs)
        print(json.dumps({"first": first, "end": time.time(), "records": done, "outputs": sent}), flush=True)
    finally:
        await p.stop()
        await c.stop()


# ---------------------------------------------------------------- the run's context: cgroups, notes, features


@dataclass
class Ctx:
    """What every phase shares: the stack, the flags, the cgroups (None when unavailable), notes, run checks."""

    st: Any
    tmp: Path
    args: argparse.Namespace
    cg: Cgroups | None
    notes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, bool] = field(default_factory=dict)

    def note(self, msg: str) -> None:
        """Record why a number is absent or qualified; printed now and written to the JSON."""
        console.print(f"[yellow]note: {msg}[/]")
        if msg not in self.notes:
            self.notes.append(msg)

    def place(self, component: str, pid: int) -> None:
        """Put a process in its own accounting group (a no-op without cgroups)."""
        if self.cg is None:
            return
        try:
            self.cg.add(component, pid)
        except OSError as e:
            self.note(f"could not move pid {pid} into cgroup {component}: {e}")

    def usage(self) -> dict[str, int]:
        """cpuacct.usage (ns) of every group so far."""
        return self.cg.usage_all() if self.cg else {}

    def check(self, run: str, ledger: dict[str, Any], late: int | None) -> None:
        """One run's exactness: ledger equal to the reference and no late event."""
        ok = bool(ledger.get("matched")) and late == 0
        self.checks.append({"run": run, "ledger_matched": bool(ledger.get("matched")), "late": late, "ok": ok})
        if not ok:
            console.print(f"[red]run {run}: ledger matched={ledger.get('matched')} late={late}[/]")


def proc_children(pid: int) -> list[int]:
    """Every descendant pid of `pid` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        for t in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in t.read_text().split()]
                out += kids
                stack += kids
    return out


def cmdline(pid: int) -> str:
    """A process's command line, '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_with(substr: str) -> list[int]:
    """Processes whose command line contains `substr` (for the Redis Cluster's nodes, started without pid files)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and substr in cmdline(int(d.name)):
            out.append(int(d.name))
    return out


def detect_features() -> dict[str, bool]:
    """What the worker in this tree offers: a separate sink process (`fenxiao sink`, `worker --no-sink`)."""

    def helptext(*a: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", *a, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        return done.stdout + done.stderr

    top = helptext()
    m = re.search(r"\{([a-z,_-]+)\}", top)
    cmds = set(m.group(1).split(",")) if m else set()
    return {"sink_command": "sink" in cmds, "worker_no_sink": "--no-sink" in helptext("worker")}


# ---------------------------------------------------------------- the worker and the sink


class Worker:
    """`fenxiao worker` as a subprocess (tests/integration/scenario.WorkerProcess) in its own cgroup."""

    def __init__(
        self,
        ctx: Ctx,
        cfg: Path,
        label: str,
        component: str,
        app_id: str | None = None,
        args: Sequence[str] = (),
        topology: str = "single",
    ) -> None:
        from tests.integration import scenario

        self.scenario, self.ctx, self.component = scenario, ctx, component
        (self.port,) = stack_mod.pick_free_ports(1)
        self.app_id = app_id or f"fx-bench-{label}-{uuid.uuid4().hex[:6]}"
        self.standby = "--standby" in args
        env = {
            names.ENV_KAFKA: ctx.st.bootstrap,
            names.ENV_REDIS_URL: ctx.st.redis_url,
            names.ENV_APP_ID: self.app_id,
            names.ENV_WEB_PORT: str(self.port),
            names.ENV_VAR_DIR: str(ctx.tmp / f"var-{label}"),
            names.ENV_PARTITIONS: str(PARTITIONS),
            names.ENV_TOKEN_KEY: scenario.TEST_TOKEN_KEY,
            names.ENV_TOPOLOGY: topology,
        }
        if ctx.args.batch_size:
            env[names.ENV_BATCH_SIZE] = str(ctx.args.batch_size)
        self.proc = scenario.WorkerProcess(cfg, env, ctx.tmp / f"worker-{label}.log", args=args)
        self.rss_peak_kb = 0

    def spawn(self) -> Worker:
        """Start the process and move it into its group at once (its children inherit the group)."""
        self.proc.start()
        self.ctx.place(self.component, self.pid)
        return self

    def wait_ready(self, timeout: float = 180) -> Worker:
        """Wait for /health (a standby serves nothing until it takes over: only check that it runs)."""
        if self.standby:  # wait until it says it waits (start-up CPU is not what the runs measure)
            deadline = time.monotonic() + timeout
            while "standby" not in self.proc.log_tail(5) and time.monotonic() < deadline:
                if self.proc.proc is not None and self.proc.proc.poll() is not None:
                    raise RuntimeError(f"standby worker exited:\n{self.proc.log_tail()}")
                time.sleep(0.3)
            return self
        self.scenario.wait_http(self.port, "/health", timeout, self.proc)
        for kid in proc_children(self.pid):  # a worker that spawns its sink: account that child apart
            if "sink" in cmdline(kid):
                self.ctx.place(self.component.replace("worker", "sink"), kid)
        return self

    def start(self) -> Worker:
        return self.spawn().wait_ready()

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

    def status(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """GET /status, None when it does not answer (a standby, a busy worker)."""
        if self.standby:
            return None
        try:
            return dict(self.scenario.http_json(self.port, "/status", timeout=timeout))
        except Exception:
            return None

    def stop(self) -> None:
        self.proc.stop()


class SinkProcess:
    """`fenxiao sink` in its own process and cgroup, when the tree has it (the worker then runs --no-sink)."""

    def __init__(self, ctx: Ctx, cfg: Path, app_id: str, label: str, component: str) -> None:
        from tests.integration import scenario

        (port,) = stack_mod.pick_free_ports(1)
        env = {
            names.ENV_KAFKA: ctx.st.bootstrap,
            names.ENV_REDIS_URL: ctx.st.redis_url,
            names.ENV_APP_ID: app_id,
            names.ENV_WEB_PORT: str(port),
            names.ENV_VAR_DIR: str(ctx.tmp / f"var-sink-{label}"),
            names.ENV_CONFIG: str(cfg),
            names.ENV_PARTITIONS: str(PARTITIONS),
            names.ENV_TOKEN_KEY: scenario.TEST_TOKEN_KEY,
        }
        self.log = ctx.tmp / f"sink-{label}.log"
        self.ctx, self.component, self.cfg, self.env = ctx, component, cfg, env
        self.status_port = port + 1000  # the sink's own /status: FENXIAO_SINK_PORT's default, web port + 1000
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Start it; False (with a note) when it exits within 3 s, so the phase goes on without it."""
        f = open(self.log, "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "streams.cli", "sink", "--config", str(self.cfg)]
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ctx.place(self.component, self.proc.pid)
        time.sleep(3.0)
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-400:]
            self.ctx.note(f"`fenxiao sink --config F` exited with {self.proc.returncode}: {tail!r}")
            return False
        return True

    def lag(self) -> int | None:
        """Records the sink and its projector have still to read (its /status `lag`), None if it does not say."""
        from tests.integration import scenario

        try:
            got = scenario.http_json(self.status_port, "/status", timeout=5.0).get("lag")
        except Exception:
            return None
        return None if got is None else int(got)

    async def caught_up(self, timeout_s: float = 600.0) -> float | None:
        """Wait until the sink has read everything (lag 0 twice in a row); the time.time() it did, None if never."""
        deadline = time.monotonic() + timeout_s
        zeros = 0
        while time.monotonic() < deadline:
            lag = await asyncio.to_thread(self.lag)
            zeros = zeros + 1 if lag == 0 else 0
            if zeros >= 2:
                return time.time()
            await asyncio.sleep(0.2)
        return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def worker_args(ctx: Ctx) -> list[str]:
    """--no-sink when a separate sink process exists and will be started by the bench."""
    return ["--no-sink"] if ctx.features.get("sink_command") and ctx.features.get("worker_no_sink") else []


def start_sink(ctx: Ctx, cfg: Path, app_id: str, label: str, component: str) -> SinkProcess | None:
    """The separate sink of a phase, or None (today's worker: the sink runs inside the worker's process)."""
    if not worker_args(ctx):
        ctx.note(
            "no separate sink process (`fenxiao sink` / `worker --no-sink` not offered): the ClickHouse sink "
            "runs inside each worker, its CPU is counted in the worker's; cpu `sink` is null"
        )
        return None
    sp = SinkProcess(ctx, cfg, app_id, label, component)
    return sp if sp.start() else None


# ---------------------------------------------------------------- the sale, cached by (seed, size)


def sale(users: int, orders: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    """The generated flash sale; big ones are cached under ~/.cache/fenxiao/bench (msgspec JSON), keyed by args."""
    key = f"sale-{users}-{orders}-{seed}-{start:%Y%m%dT%H%M%S}-{int(SALE_SECONDS)}"
    path = CACHE / f"{key}.json"
    if orders >= 50_000 and path.exists():
        t = time.monotonic()
        recs: list[dict[str, Any]] = msgspec.json.decode(path.read_bytes())
        console.print(f"  sale read from the cache {path} ({time.monotonic() - t:.1f} s)")
        return recs
    recs = list(flashsale.generate(users, orders, seed, start, SALE_SECONDS))
    if orders >= 50_000:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(recs))
        tmp.replace(path)
    return recs


@dataclass
class Expected:
    """The reference outcome of a sale: its entry ids, summary and output counts."""

    ids: set[str]
    summary: dict[str, Any]
    outputs: int
    out_bytes: float


def expected(records: list[dict[str, Any]], program: Any, cache_key: str | None = None) -> Expected:
    """streams.engine.reference's outcome; cached for big sales (the sale is in the past, so every freeze has ended)."""
    path = CACHE / f"ref-{cache_key}.json" if cache_key else None
    if path is not None and path.exists():
        d = msgspec.json.decode(path.read_bytes())
        return Expected(set(d["ids"]), d["summary"], int(d["outputs"]), float(d["out_bytes"]))
    run = reference.run(records, program, int(time.time() * 1000) + 3_600_000)
    outs = [*run.entries, *run.bindings, *run.dead_letters, *run.limited_clicks]
    n = pipeline_outputs(len(run.entries), len(run.bindings), len(run.dead_letters), len(run.limited_clicks))
    size = sum(len(_enc(o)) for o in outs) / n if n else 0.0
    exp = Expected(
        {str(e["entry_id"]) for e in run.entries},
        outcome.summarize(run.entries, run.bindings, run.dead_letters),
        n,
        size,
    )
    if path is not None:
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            msgspec.json.encode(
                {"ids": sorted(exp.ids), "summary": exp.summary, "outputs": n, "out_bytes": exp.out_bytes}
            )
        )
    return exp


def ref_cache_key(users: int, orders: int, seed: int, cfg_text: str) -> str | None:
    """A cache key for big sales' reference outcomes: sale arguments and the config's hash."""
    if orders < 50_000:
        return None
    return f"{users}-{orders}-{seed}-{hashlib.sha256(cfg_text.encode()).hexdigest()[:12]}"


def n_orders(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r["topic"] == names.ORDERS)


def write_config(tmp: Path, name: str, grace: float | None) -> Path:
    """The bench program (three levels, d11 campaign, 60 s freeze); grace None = the config's default grace."""
    text = program_toml(freeze_seconds=60, grace_seconds=grace if grace is not None else 0)
    if grace is None:
        text = text.split("[pipeline]")[0].rstrip() + "\n"
    p = tmp / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- phases


async def wait_entries(
    tail: Tail, want: set[str], quiet_s: float, workers: Sequence[Worker] = (), from_index: int = 0
) -> tuple[float, int]:
    """Wait until every expected entry id was read, or neither entries nor the workers moved for quiet_s.

    Returns (arrival time of the last entry read, how many expected ids were seen). A ledger that differs
    from the reference never reaches the expected set; then the end is the last arrival before the quiet.
    The workers' applied counts count as progress: a large backlog can take minutes of signups and clicks
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
            if v.entry_id in want:
                seen.add(v.entry_id)
        if len(seen) == len(want):
            return last_at, len(seen)
        now = time.monotonic()
        if workers and now - polled > 2.0:
            polled = now
            n = 0
            for w in workers:
                w.rss_peak_kb = max(w.rss_peak_kb, *w.rss_kb())  # VmHWM: the peak between two polls too
                st = await asyncio.to_thread(w.status)
                n += int(st["applied"]) if st else 0
            if n != applied:
                applied, progress = n, now
        # Before the workers applied anything (start-up, group join, the first partitions' records) allow 300 s.
        if now - progress > (quiet_s if applied > 0 or i > from_index else max(quiet_s, 300.0)):
            console.print(f"[yellow]{len(seen):,} of {len(want):,} expected entries; nothing new for {quiet_s:.0f}s[/]")
            return last_at, len(seen)
        await asyncio.sleep(0.05)


def late_of(ctx: Ctx, workers: Sequence[Worker], run: str) -> int | None:
    """Late events counted by every serving worker's /status; None (with a note) when one did not answer."""
    total = 0
    for w in workers:
        if w.standby:
            continue
        st = w.status(timeout=30.0)
        if st is None:
            ctx.note(f"{run}: worker {w.component} /status did not answer; its late count is unknown")
            return None
        total += int(st.get("late", 0))
    return total


async def run_baseline(ctx: Ctx, records: list[dict[str, Any]], exp: Expected | None) -> dict[str, Any]:
    """Preload the sale's input records, then time passthrough processes from first consume to last ack.

    exp None = the plain 1-in/1-out passthrough; otherwise the fan-out-matched one with exp's output count and
    average size. Preloaded so that the bench's own producer (same 2 cores) does not cap the ceiling. Run
    --baseline-repeats times (a fresh group each, on the same input): the ceiling is the best run; CPU is
    counted from each child's "ready" (imports and client start-up excluded) to its end, over all runs.
    """
    label = "plain" if exp is None else "matched"
    await create_bench_topics(ctx.st.bootstrap)
    await produce_fast(ctx.st.bootstrap, records, topic=BENCH_IN)
    orders = n_orders(records)
    runs: list[dict[str, Any]] = []
    cpu_ns: dict[str, int] = {}
    for _ in range(max(1, ctx.args.baseline_repeats)):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--passthrough-child",
            ctx.st.bootstrap,
            "--passthrough-count",
            str(len(records)),
            "--passthrough-outputs",
            str(exp.outputs if exp else 0),
            "--passthrough-size",
            str(round(exp.out_bytes) if exp else 0),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        ctx.place(f"{label}-baseline", child.pid)
        ready = await asyncio.wait_for(child.stdout.readline(), timeout=300)
        if b"ready" not in ready:
            raise RuntimeError(f"the {label} baseline did not start: {ready!r}")
        before = ctx.usage()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        out, _ = await asyncio.wait_for(child.communicate(), timeout=1800)
        after = ctx.usage()
        for k, v in after.items():
            cpu_ns[k] = cpu_ns.get(k, 0) + v - before.get(k, 0)
        r = json.loads(out.decode().strip().splitlines()[-1])
        runs.append({**r, "seconds": r["end"] - r["first"]})
    best = min(runs, key=lambda r: r["seconds"])
    secs = best["seconds"]
    return {
        "input_records": best["records"],
        "order_records": orders,
        "output_records": best["outputs"],
        "output_bytes_avg": round(exp.out_bytes, 1) if exp else None,
        "seconds": secs,
        "seconds_all_runs": [round(r["seconds"], 3) for r in runs],
        "input_records_per_s": rate(best["records"], secs),
        "output_records_per_s": rate(best["outputs"], secs),
        "order_records_per_s": rate(orders, secs),
        "cpu_ms_per_1k_order_records": cpu_by_component({}, cpu_ns, orders * len(runs), label),
    }


def start_profiler(ctx: Ctx, pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the worker, in the `profiler` group so its CPU is not charged to the harness."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        ctx.note("py-spy not installed in the venv: no worker profile")
        return None
    spy = subprocess.Popen(
        [str(exe), "record", "--nonblocking", "-r", "50", "-f", "raw", "-o", str(path), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctx.place("profiler", spy.pid)
    return spy


def stop_profiler(spy: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write its file; wait for it."""
    spy.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(30)


async def phase_pipeline(
    ctx: Ctx,
    worker: Worker,
    tail: Tail,
    records: list[dict[str, Any]],
    want: set[str],
    profile: Path | None,
    sink: SinkProcess | None = None,
) -> dict[str, Any]:
    """One worker at full speed: produce to the last ledger entry read back, then until the sink has caught up.

    The sink runs at a lower CPU priority (FENXIAO_SINK_NICE), so on a saturated machine it falls behind the ledger;
    its catch-up time and the CPU of the whole run up to it are reported beside the end-to-end figures.
    """
    spy = start_profiler(ctx, worker.pid, profile) if profile is not None else None
    start_at = len(tail.got)
    before = ctx.usage()
    if ctx.args.pipeline_producer == "fast":
        prod = await produce_fast(ctx.st.bootstrap, records)
    else:
        prod = await produce(ctx.st.bootstrap, records)
    end, seen = await wait_entries(
        tail, want, quiet_s=max(5.0, 3 * ctx.args.grace), workers=[worker], from_index=start_at
    )
    after = ctx.usage()
    if spy is not None:
        stop_profiler(spy)
    secs = end - prod.first_order
    orders = n_orders(records)
    sink_done = await sink.caught_up() if sink is not None else None
    with_sink = cpu_by_component(before, ctx.usage(), orders, "pipeline") if sink_done is not None else None
    return {
        "sink_caught_up_s_after_last_entry": None if sink_done is None else max(0.0, sink_done - end),
        "cpu_ms_per_1k_order_records_until_sink_caught_up": with_sink,
        "producer": ctx.args.pipeline_producer,
        "order_records": orders,
        "records": len(records),
        "entries": len(want),
        "entries_seen": seen,
        "seconds": secs,
        "orders_per_s": rate(orders, secs),
        "producer_orders_per_s": rate(orders, prod.done - prod.first_order),
        "rss_peak_mb": worker.rss_peak_kb / 1024,
        "cpu_ms_per_1k_order_records": cpu_by_component(before, after, orders, "pipeline"),
    }


def latencies(prod: Produced, tail_from: int, tail: Tail, exclude_last_s: float) -> list[float]:
    """Produce -> first ledger entry (not `settled`: that waits for the freeze) per order event."""
    first: dict[str, float] = {}
    for t, v in tail.got[tail_from:]:
        sid = v.source_event_id
        if v.kind != "settled" and sid in prod.sent_at and sid not in first:
            first[sid] = t
    cut = prod.last_sent - exclude_last_s
    return [t - prod.sent_at[sid] for sid, t in first.items() if prod.sent_at[sid] <= cut]


async def phase_latency(
    ctx: Ctx,
    worker: Worker,
    tail: Tail,
    records: list[dict[str, Any]],
    want: set[str],
    orders_per_s: float,
    grace: float,
    level_s: float,
) -> dict[str, Any]:
    start_at = len(tail.got)
    prod = await produce(ctx.st.bootstrap, records, rate_per_s=orders_per_s)
    end, seen = await wait_entries(tail, want, quiet_s=max(5.0, 3 * grace), workers=[worker], from_index=start_at)
    # The last events wait for the grace once the topics go quiet: leave them out (at most half the level).
    lat = latencies(prod, start_at, tail, exclude_last_s=min(2 * grace, level_s / 2))
    achieved = rate(prod.orders, (prod.last_sent - prod.first_order))
    status = worker.status(timeout=30.0) or {}
    late_parts = {p["partition"]: p["late"] for p in status.get("partitions", []) if p.get("late")}
    if late_parts:
        console.print(f"[yellow]late events by partition so far: {late_parts}[/]")
    return {
        "late_events_so_far": status.get("late"),
        "offered_orders_per_s": orders_per_s,
        "achieved_produce_orders_per_s": achieved,
        "drained_orders_per_s": rate(prod.orders, end - prod.first_order),
        "order_records": prod.orders,
        "entries": len(want),
        "entries_seen": seen,
        **latency_summary(lat),
    }


def redis_persistence(r: Any) -> dict[str, int]:
    """Snapshots and AOF rewrites since the server started: each forks and writes the whole dataset, on Redis's CPU."""
    out: dict[str, int] = {}
    for section, fields in (("persistence", ("rdb_saves", "aof_rewrites")), ("stats", ("total_forks",))):
        info = r.info(section)
        # a cluster answers per node: {node: info}
        nodes = [info] if fields[0] in info else [v for v in info.values() if isinstance(v, dict)]
        out.update({f: sum(int(n.get(f, 0)) for n in nodes) for f in fields})
    return out


def redis_memory(redis_url: str, sample: int) -> dict[str, Any]:
    """MEMORY USAGE over up to `sample` keys per prefix; orders split into open (not settled) and settled."""
    from streams.state import redis_conn

    r = redis_conn.connect(redis_url)
    mem = r.info("memory")
    # a cluster answers per node: {node: info}
    used = mem["used_memory"] if "used_memory" in mem else sum(v["used_memory"] for v in mem.values())
    out: dict[str, Any] = {"used_memory": int(used), "persistence": redis_persistence(r)}
    for label, pattern in (("user", names.KEY_USER + "*"), ("order", names.KEY_ORDER + "*")):
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
        res = pipe.execute(raise_on_error=False)  # a store whose order keys are not strings: counted unparsed
        if label == "user":
            sizes["user"] = [int(x) for x in res if x is not None]
        else:
            for m, val in zip(res[0::2], res[1::2], strict=True):
                if isinstance(m, Exception) or m is None:
                    continue
                if isinstance(val, Exception) or val is None:
                    sizes.setdefault("unparsed_order", []).append(int(m))
                    continue
                try:
                    flags = json.loads(val)[2]
                except (ValueError, TypeError, IndexError, KeyError):
                    sizes.setdefault("unparsed_order", []).append(int(m))
                    continue
                sizes["settled_order" if flags & 4 else "open_order"].append(int(m))
        for k, v in sizes.items():
            out[f"{k}_keys_sampled"] = len(v)
            out[f"{k}_bytes"] = sum(v) / len(v) if v else math.nan
    out["user_keys"] = sum(1 for _ in r.scan_iter(match=names.KEY_USER + "*", count=5000))
    out["order_keys"] = sum(1 for _ in r.scan_iter(match=names.KEY_ORDER + "*", count=5000))
    r.close()
    return out


async def check_run(
    ctx: Ctx, run: str, exp: Expected, workers: Sequence[Worker], grace: float, late_before: int | None = 0
) -> dict[str, Any]:
    """Read every output topic back and compare with the reference; count late events; record the run's check.

    late_before: late events of workers of the same run that already stopped (None = unknown).
    """
    from tests.integration import scenario

    now_late = late_of(ctx, workers, run)
    late = None if now_late is None or late_before is None else now_late + late_before
    await asyncio.sleep(min(grace, 10.0) + 1)
    out = await scenario.read_outputs(ctx.st.bootstrap, timeout=900)
    got = outcome.summarize(out.entries, out.bindings, out.dead_letters)
    sections = ("entries", "totals", "balances", "bindings", "dead_letters")
    matched = {s: got[s] == exp.summary[s] for s in sections}
    ledger = {
        "matched": all(matched.values()),
        "sections": matched,
        "diff": outcome.diff(got, exp.summary, limit=10),
        "entries": len(exp.summary["entries"]),
        "late": late,
        "totals": got["totals"],
    }
    ctx.check(run, ledger, late)
    return ledger


async def settle_assignment(ctx: Ctx, workers: Sequence[Worker], run: str, timeout: float = 90) -> dict[str, Any]:
    """With active sharing (`owned` in /status), wait until every input partition has exactly one owner.

    In the staged topology the order-steps partitions too, and every worker must own some of them.
    """
    want = {f"{t}:{p}" for t in names.INPUT_TOPICS for p in range(PARTITIONS)}
    staged = ctx.args.topology == "staged"
    if staged:
        want |= {f"{names.ORDER_STEPS}:{p}" for p in range(stack_mod.step_partitions(PARTITIONS))}
    deadline = time.monotonic() + timeout
    last: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        last = {}
        for w in workers:
            st = await asyncio.to_thread(w.status)
            if st is not None and isinstance(st.get("owned"), list):
                last[w.component] = [str(x) for x in st["owned"]]
        owned = [p for ps in last.values() for p in ps]
        # Staged: every worker but the lease holder (the one reading the inputs) credits some partitions, and the
        # lease holder none unless alone (it leaves its share once it sees the others' credit stages alive).
        credits = [any(p.startswith(names.ORDER_STEPS) for p in ps) for ps in last.values()]
        lead = [c for c, ps in zip(credits, last.values(), strict=True) if names.ORDERS + ":0" in ps]
        rest = [c for c, ps in zip(credits, last.values(), strict=True) if names.ORDERS + ":0" not in ps]
        every = not staged or (all(rest) and (len(workers) == 1 or not any(lead)))
        if len(last) == len(workers) and set(owned) >= want and len(owned) == len(set(owned)) and every:
            return {"owned": last, "settled": True}
        await asyncio.sleep(1.0)
    ctx.note(f"{run}: the partitions did not settle to one owner each within {timeout:.0f} s: {last}")
    return {"owned": last, "settled": False}


async def phase_scaling_run(
    ctx: Ctx, n: int, records: list[dict[str, Any]], exp: Expected, cfg: Path
) -> dict[str, Any]:
    """n workers, each under the fixed quota, on fresh topics and a flushed Redis; the sale produced once started."""
    from streams.state import redis_conn
    from tests.integration import scenario

    run = f"scale{n}"
    await scenario.reset_topics(ctx.st.bootstrap, PARTITIONS)
    redis_conn.flush(ctx.st.redis_url)
    app_id = f"fx-bench-{run}-{uuid.uuid4().hex[:6]}"
    sink = start_sink(ctx, cfg, app_id, run, f"{run}-sink")
    extra = worker_args(ctx)
    topo = ctx.args.topology
    first = Worker(ctx, cfg, f"{run}-1", f"{run}-worker-1", app_id, extra, topo).start()
    active = topo == "staged" and "owned" in (first.status(timeout=30.0) or {})
    ctx.features["status_owned"] = active
    if n > 1 and not active:
        ctx.note(
            f"{run}: /status has no `owned`: today's worker cannot share partitions, so workers 2..{n} run as "
            "--standby (one owner + standbys; the speedup documents the starting point)"
        )
    others = [
        Worker(
            ctx, cfg, f"{run}-{i}", f"{run}-worker-{i}", app_id, extra if active else [*extra, "--standby"], topo
        ).spawn()
        for i in range(2, n + 1)
    ]
    workers = [first, *others]
    tail = Tail(ctx.st.bootstrap, names.COMMISSIONS)
    try:
        for w in others:
            await asyncio.to_thread(w.wait_ready)
        owned = await settle_assignment(ctx, workers, run) if active else {"owned": None, "settled": None}
        throttle0 = {}
        if ctx.cg is not None:
            for w in workers:  # started unthrottled (start-up is not what is measured), quota from here on
                ctx.cg.set_quota(w.component, ctx.args.quota_us, ctx.args.period_us)
                throttle0[w.component] = ctx.cg.throttled(w.component)
        await tail.start()
        prof_path = ctx.tmp / f"{run}-lease-holder-profile.txt"  # the lease holder of two: attribution alone
        spy = start_profiler(ctx, first.pid, prof_path) if n == 2 and active and not ctx.args.no_profile else None
        before, t_before = ctx.usage(), time.monotonic()
        prod = await produce_fast(ctx.st.bootstrap, records)
        end, seen = await wait_entries(tail, exp.ids, quiet_s=max(30.0, 3 * ctx.args.grace), workers=workers)
        after, t_after = ctx.usage(), time.monotonic()
        if spy is not None:
            stop_profiler(spy)
        orders = n_orders(records)
        secs = end - prod.first_order
        throttled = {}
        if ctx.cg is not None:
            for w in workers:
                t1 = ctx.cg.throttled(w.component)
                t0 = throttle0.get(w.component, {})
                throttled[w.component] = {
                    "nr_throttled": t1.get("nr_throttled", 0) - t0.get("nr_throttled", 0),
                    "throttled_ms": (t1.get("throttled_time", 0) - t0.get("throttled_time", 0)) / 1e6,
                }
        out: dict[str, Any] = {
            "workers": n,
            "active_sharing": active,
            "order_records": orders,
            "entries": len(exp.ids),
            "entries_seen": seen,
            "seconds": secs,
            "order_records_per_s": rate(orders, secs),
            "producer_orders_per_s": rate(orders, prod.done - prod.first_order),
            "owned": owned["owned"],
            "throttled": throttled,
            "rss_peak_mb": {w.component: w.rss_peak_kb / 1024 for w in workers},
            "cpu_ms_per_1k_order_records": cpu_by_component(before, after, orders, run),
        }
        cores = box_cores_busy(before, after, t_after - t_before)
        out["cores_busy"] = cores
        if cores is not None and cores >= 0.85 * (os.cpu_count() or 1):
            ctx.note(
                f"{run}: every component together kept {cores:.2f} of the machine's {os.cpu_count()} cores busy, so "
                "the unthrottled infrastructure competed with the workers for CPU: the box, not the quota, bounds it"
            )
        if spy is not None:
            out["lease_holder_profile"] = summarize_file(prof_path)
            if ctx.args.keep_profile:
                shutil.copy(prof_path, ctx.args.out_dir / f"{run}-lease-holder-profile.txt")
        pr, got = rate(orders, prod.done - prod.first_order), rate(orders, secs)
        if not math.isnan(pr) and pr < 1.5 * got:
            ctx.note(f"{run}: the producer ({pr:,.0f} order records/s) was near the workers' rate: producer-bound")
        out["ledger"] = await check_run(ctx, run, exp, workers, ctx.args.grace)
        return out
    finally:
        await tail.stop()
        for w in reversed(workers):
            w.stop()
        if sink:
            sink.stop()


def box_cores_busy(before: dict[str, int], after: dict[str, int], secs: float) -> float | None:
    """Cores the whole benchmark kept busy over a window (every cgroup's CPU time / wall time)."""
    if not after or secs <= 0:
        return None
    return round(sum(ns - before.get(comp, 0) for comp, ns in after.items()) / 1e9 / secs, 2)


def scaling_summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Speedups vs one worker, the least-squares Amdahl serial fraction, Karp-Flatt per point, the projection."""
    one = runs.get(1, {}).get("order_records_per_s", math.nan)
    speed = {
        str(n): (r["order_records_per_s"] / one if one and not math.isnan(one) else math.nan)
        for n, r in runs.items()
        if n > 1
    }
    f = amdahl_fit({int(n): s for n, s in speed.items()})
    return {
        "order_records_per_s": {str(n): r["order_records_per_s"] for n, r in runs.items()},
        "speedup": speed,
        "serial_fraction": f,
        "serial_fraction_method": "least-squares Amdahl fit through the origin of 1/S - 1/n = f (1 - 1/n)",
        "karp_flatt": {n: karp_flatt(s, int(n)) for n, s in speed.items()},
        "projection": {
            "label": "projection (Amdahl, from the fitted serial fraction)",
            **amdahl_projection(f, PROJECT),
        },
    }


async def phase_backlog(ctx: Ctx, cfg: Path, program: Any) -> dict[str, Any]:
    from streams.state import redis_conn
    from tests.integration import scenario

    args = ctx.args
    await scenario.reset_topics(ctx.st.bootstrap, PARTITIONS)
    redis_conn.flush(ctx.st.redis_url)
    users = max(1, args.backlog * args.users // max(1, args.orders))
    console.print(f"backlog: generating {args.backlog:,} orders, {users:,} users ...")
    t = time.monotonic()
    recs = sale(users, args.backlog, args.seed + 100, SALE_START)
    exp = expected(recs, program, ref_cache_key(users, args.backlog, args.seed + 100, cfg.read_text()))
    console.print(f"  sale and reference ready in {time.monotonic() - t:.1f} s; producing {len(recs):,} records ...")
    t = time.monotonic()
    await produce_fast(ctx.st.bootstrap, recs)
    console.print(
        f"backlog: {len(recs):,} records in the topics in {time.monotonic() - t:.1f} s; starting a fresh worker"
    )
    tail = Tail(ctx.st.bootstrap, names.COMMISSIONS)
    await tail.start()
    app_id = f"fx-bench-backlog-{uuid.uuid4().hex[:6]}"
    sink = start_sink(ctx, cfg, app_id, "backlog", "backlog-sink")
    before = ctx.usage()
    t0 = time.time()
    topo = args.topology if args.backlog_workers > 1 else "single"
    w = Worker(ctx, cfg, "backlog-1", "backlog-worker-1", app_id, worker_args(ctx), topo).start()
    workers = [w]
    if args.backlog_workers > 1:
        if topo == "staged":
            workers += [
                Worker(ctx, cfg, f"backlog-{i}", f"backlog-worker-{i}", app_id, worker_args(ctx), topo).spawn()
                for i in range(2, args.backlog_workers + 1)
            ]
            for x in workers[1:]:
                await asyncio.to_thread(x.wait_ready)
        else:
            ctx.note(f"--backlog-workers {args.backlog_workers} with --topology single: one owner + standbys")
    t_ready = time.time()
    orders = n_orders(recs)
    try:
        # A big backlog has long stretches (signups, clicks) without entries and big slow batches: wait longer.
        end, seen = await wait_entries(tail, exp.ids, quiet_s=max(60.0, 3 * args.grace), workers=workers)
        after = ctx.usage()
        first = tail.got[0][0] if tail.got else math.nan
        await tail.stop()
        ledger = await check_run(ctx, "backlog", exp, workers, args.grace)
        for x in workers:
            x.rss_peak_kb = max(x.rss_peak_kb, x.rss_kb()[1])
    finally:
        await tail.stop()
        for x in reversed(workers):
            x.stop()
        if sink:
            sink.stop()
    if seen < len(exp.ids):
        # The temp dir goes with the run: keep the workers' logs, which say why the backlog stopped short.
        for x in workers:
            kept = args.out_dir / f"{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}-{x.component}.log"
            shutil.copy(x.proc.log, kept)
            console.print(f"[red]the backlog stopped at {seen:,} of {len(exp.ids):,} entries; worker log: {kept}[/]")
    memory = redis_memory(ctx.st.redis_url, args.mem_sample)
    return {
        "memory": memory,
        "orders": args.backlog,
        "order_records": orders,
        "records": len(recs),
        "entries": len(exp.ids),
        "entries_seen": seen,
        "seconds_from_spawn": end - t0,
        "worker_start_s": t_ready - t0,
        "seconds_first_to_last_entry": end - first,
        "orders_per_s": rate(orders, end - t_ready),
        "workers": len(workers),
        "rss_peak_mb": {x.component: x.rss_peak_kb / 1024 for x in workers},
        "ledger": ledger,
        "cpu_ms_per_1k_order_records": cpu_by_component(before, after, orders, "backlog"),
    }


def phase_sink(rows_n: int) -> dict[str, Any]:
    from bench.sink_bench import ledger_rows, measure
    from streams.sinks.clickhouse import ChdbBackend, migrate
    from streams.sinks.sink import ClickHouseSink

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


def fmt(v: Any, unit: str = "", digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def num(v: Any) -> float | None:
    """A JSON-safe number: NaN and missing become null."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def summary(res: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """latest.json's top-level keys (issue 11), null where a phase did not run or could not measure."""
    pipe = res.get("pipeline", {}).get("orders_per_s")
    matched = res.get("baseline_matched", {}).get("order_records_per_s")
    plain = res.get("baseline_plain", {}).get("order_records_per_s")
    sc = res.get("scaling", {})
    half = next((lv for lv in res.get("latency", []) if lv["load"] == 0.5), None)
    bl = res.get("backlog")
    is_1m = bl is not None and bl["orders"] >= 1_000_000
    if bl and not is_1m:
        ctx.note(f"backlog_1m_*: null, this run's backlog was {bl['orders']:,} orders (run with --backlog 1000000)")
    why = "--scaling-only" if ctx.args.scaling_only else "it did not run or broke (see the other notes)"
    for phase, keys in (
        ("pipeline", "order_records_per_s, ratio_to_matched_baseline"),
        ("baseline_plain", "plain_baseline_records_per_s"),
        ("baseline_matched", "matched_baseline_records_per_s, ratio_to_matched_baseline"),
        ("scaling", "speedup, serial_fraction"),
        ("sink", "sink_rows_per_s_*"),
    ):
        if not res.get(phase):
            reason = why
            if phase == "scaling" and not ctx.args.scaling:
                reason = "--no-scaling"
            elif phase == "sink" and not ctx.args.sink_rows:
                reason = "--sink-rows 0" if not ctx.args.scaling_only else "--scaling-only"
            ctx.note(f"{keys}: null, the {phase} phase did not run ({reason})")
    if not half:
        reason = "--no-latency" if not ctx.args.latency else why
        ctx.note(f"p99_ms_at_50pct: null, no latency level at 50 % ran ({reason})")
    if not bl:
        reason = "--backlog 0" if not ctx.args.backlog else why
        ctx.note(f"backlog_*: null, no backlog run ({reason})")
    cpu: dict[str, Any] = {}
    for phase, key in (
        ("pipeline", "pipeline"),
        ("baseline_plain", "baseline_plain"),
        ("baseline_matched", "baseline_matched"),
        ("backlog", "backlog"),
    ):
        if res.get(phase):
            cpu[key] = res[phase]["cpu_ms_per_1k_order_records"] or None
    for n, r in sc.get("runs", {}).items():
        cpu[f"scaling_{n}"] = r["cpu_ms_per_1k_order_records"] or None
    if ctx.cg is None:
        cpu = {k: None for k in cpu}
    ok = all(c["ok"] for c in ctx.checks) and bool(ctx.checks)
    sink = res.get("sink") or {}
    ratio = (pipe / matched) if pipe and matched and not (math.isnan(pipe) or math.isnan(matched)) else None
    mem = (bl or {}).get("memory") or res.get("memory") or {}
    return {
        "order_records_per_s": num(pipe),
        "matched_baseline_records_per_s": num(matched),
        "ratio_to_matched_baseline": num(ratio),
        "plain_baseline_records_per_s": num(plain),
        "speedup": {k: num(v) for k, v in sc.get("speedup", {}).items()} or None,
        "serial_fraction": num(sc.get("serial_fraction")),
        "serial_fraction_method": sc.get("serial_fraction_method"),
        "projection": {k: (num(v) if k != "label" else v) for k, v in sc.get("projection", {}).items()} or None,
        "scaling_order_records_per_s": {k: num(v) for k, v in sc.get("order_records_per_s", {}).items()} or None,
        "quota": {"cfs_quota_us": ctx.args.quota_us, "cfs_period_us": ctx.args.period_us} if ctx.cg else None,
        "backlog_1m_seconds": num(bl["seconds_from_spawn"]) if is_1m and bl else None,
        "backlog_1m_rss_mb": num(max(bl["rss_peak_mb"].values())) if is_1m and bl else None,
        "backlog_orders": bl["orders"] if bl else None,
        "backlog_seconds": num(bl["seconds_from_spawn"]) if bl else None,
        "backlog_rss_mb": {k: num(v) for k, v in bl["rss_peak_mb"].items()} if bl else None,
        "redis_bytes_per_user": num(mem.get("user_bytes")),
        "redis_bytes_per_open_order": num(mem.get("open_order_bytes")),
        "p99_ms_at_50pct": num(half["p99_ms"]) if half else None,
        "latency_grace_s": res.get("latency_grace_s"),
        "ledger_matches": ok,
        "runs_checked": ctx.checks,
        "cpu_ms_per_1k_order_records": cpu or None,
        "idle_cpu_ms_per_s": res.get("idle_cpu_ms_per_s"),
        "sink_rows_per_s_first_write": num(sink.get("rows_per_s")),
        "sink_rows_per_s_replay": num(sink.get("replay_rows_per_s")),
        "features": ctx.features,
        "notes": ctx.notes,
        "git_commit": git_commit(),
        "timestamp": res["when_iso"],
    }


def git_commit() -> str | None:
    """The tree's HEAD (with +dirty when it has uncommitted changes), so a result names its code."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def targets(s: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Issue 11's targets against this run's numbers (None = not measured)."""

    def t(name: str, v: Any, shown: str, target: str, goal: float, higher: bool) -> tuple[str, str, str, bool | None]:
        return name, shown, target, meets(math.nan if v is None else v, goal, higher)

    sp4 = (s.get("speedup") or {}).get("4")
    sf = s.get("serial_fraction")
    ratio = s.get("ratio_to_matched_baseline")
    return [
        t(
            "one worker, order records/s",
            s["order_records_per_s"],
            fmt(s["order_records_per_s"]),
            ">= 10,000",
            10_000,
            True,
        ),
        t(
            "vs fan-out-matched baseline",
            ratio,
            fmt(None if ratio is None else ratio * 100, "%", 1),
            ">= 40%",
            0.4,
            True,
        ),
        t("4 workers vs 1 (quota each)", sp4, fmt(sp4, "x", 2), ">= 3x", 3.0, True),
        t("serial fraction", sf, fmt(None if sf is None else sf * 100, "%", 1), "<= 10%", 0.10, False),
        t("1M backlog", s["backlog_1m_seconds"], fmt(s["backlog_1m_seconds"], " s"), "<= 600 s", 600, False),
        t(
            "1M backlog worker RSS",
            s["backlog_1m_rss_mb"],
            fmt(s["backlog_1m_rss_mb"], " MB"),
            "<= 2,048 MB",
            2048,
            False,
        ),
        t("p99 latency @50% load", s["p99_ms_at_50pct"], fmt(s["p99_ms_at_50pct"], " ms"), "<= 1,000 ms", 1000, False),
        t(
            "sink first write (chDB)",
            s["sink_rows_per_s_first_write"],
            fmt(s["sink_rows_per_s_first_write"], " rows/s"),
            ">= 200,000",
            200_000,
            True,
        ),
        t(
            "Redis bytes / user",
            s["redis_bytes_per_user"],
            fmt(s["redis_bytes_per_user"], " B"),
            "<= 150 B",
            150,
            False,
        ),
        t(
            "Redis bytes / open order",
            s["redis_bytes_per_open_order"],
            fmt(s["redis_bytes_per_open_order"], " B"),
            "<= 400 B",
            400,
            False,
        ),
        (
            "ledger exact, 0 late, every run",
            "yes" if s["ledger_matches"] else "NO",
            "every run",
            s["ledger_matches"] if s["runs_checked"] else None,
        ),
    ]


def print_report(res: dict[str, Any], s: dict[str, Any]) -> None:
    t = Table(
        title=f"fenxiao benchmark ({res['when']}, {res['cpus']} CPUs, commit {s['git_commit']}, "
        f"{res.get('redis', 'one redis-server')})"
    )
    for col in ("target", "value", "goal", "status"):
        t.add_column(col)
    for name, val, target, ok in targets(s):
        status = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]not measured[/]"}[ok]
        t.add_row(name, val, target, status)
    console.print(t)
    d = Table(title="measurements")
    d.add_column("what")
    d.add_column("value")
    for key, label in (("baseline_plain", "plain passthrough 1-in/1-out"), ("baseline_matched", "fan-out-matched")):
        b = res.get(key)
        if b:
            d.add_row(
                label,
                f"{fmt(b['order_records_per_s'])} order records/s ({fmt(b['input_records_per_s'])} input, "
                f"{fmt(b['output_records_per_s'])} output records/s; {b['output_records']:,} outputs)",
            )
    p = res.get("pipeline")
    if p:
        d.add_row(
            f"pipeline (1 worker, grace {res['grace_s']} s)",
            f"{fmt(p['orders_per_s'])} order records/s ({p['order_records']:,} of {p['records']:,} records, "
            f"{p['entries']:,} entries, {fmt(p['seconds'], ' s', 1)}), RSS peak {fmt(p.get('rss_peak_mb'), ' MB')}",
        )
    for lv in res.get("latency", []):
        d.add_row(
            f"latency @{int(lv['load'] * 100)}% ({fmt(lv['offered_orders_per_s'])}/s, "
            f"grace {res['latency_grace_s']} s)",
            f"p50 {fmt(lv['p50_ms'], ' ms')}  p95 {fmt(lv['p95_ms'], ' ms')}  p99 {fmt(lv['p99_ms'], ' ms')}"
            f"  max {fmt(lv['max_ms'], ' ms')}  (n={int(lv['n']):,})",
        )
    sc = res.get("scaling")
    if sc:
        for n, r in sc["runs"].items():
            d.add_row(
                f"scaling: {n} worker(s){'' if r['active_sharing'] or n == 1 else ' (1 owner + standbys)'}",
                f"{fmt(r['order_records_per_s'])} order records/s ({fmt(r['seconds'], ' s', 1)}), "
                f"speedup {fmt(sc['speedup'].get(str(n), 1.0 if n == 1 else None), 'x', 2)}",
            )
        d.add_row("serial fraction (least-squares Amdahl)", fmt(num(sc["serial_fraction"]), "", 3))
        pr = sc["projection"]
        d.add_row(pr["label"], ", ".join(f"{k}: {fmt(num(v), 'x', 2)}" for k, v in pr.items() if k != "label"))
    bl = res.get("backlog")
    if bl:
        d.add_row(
            f"backlog ({bl['orders']:,} orders)",
            f"{fmt(bl['seconds_from_spawn'], ' s', 1)} from spawn (start-up {fmt(bl['worker_start_s'], ' s', 1)}), "
            f"{fmt(bl['orders_per_s'])} order records/s, RSS peak "
            + ", ".join(fmt(v, " MB") for v in bl["rss_peak_mb"].values()),
        )
    for c in res.get("checks", []):
        d.add_row(
            f"check {c['run']}",
            "[green]exact[/]" if c["ok"] else f"[red]ledger {c['ledger_matched']}, late {c['late']}[/]",
        )
    if res.get("sink"):
        d.add_row(
            "sink (chDB, add_many)",
            f"{fmt(res['sink']['rows_per_s'])} rows/s first write, "
            f"{fmt(res['sink']['replay_rows_per_s'])} rows/s replay",
        )
    if res.get("idle_cpu_ms_per_s"):
        d.add_row(
            "idle CPU-ms per second (no traffic)", ", ".join(f"{k} {v}" for k, v in res["idle_cpu_ms_per_s"].items())
        )
    console.print(d)
    cpu = s.get("cpu_ms_per_1k_order_records") or {}
    if any(cpu.values()):
        comps = sorted({k for v in cpu.values() if v for k in v})
        ct = Table(title="CPU-ms per 1,000 order records (cgroup cpuacct), component x phase")
        ct.add_column("component")
        for phase in cpu:
            ct.add_column(phase, justify="right")
        for c in comps:
            ct.add_row(c, *(fmt((v or {}).get(c), "", 1) for v in cpu.values()))
        console.print(ct)
    print_profile(res.get("profile") or {}, "worker profile")
    lease = ((res.get("scaling") or {}).get("runs") or {}).get(2, {}).get("lease_holder_profile") or {}
    print_profile(lease, "scale2 lease holder profile (the attribution stage alone)")
    for n in s["notes"]:
        console.print(f"[yellow]note:[/] {n}")


def print_profile(prof: dict[str, Any], title: str) -> None:
    """A py-spy summary as two tables: inclusive share per category, then the hottest leaf functions."""
    if not prof.get("samples"):
        return
    pt = Table(title=f"{title} (py-spy, {prof['samples']:,} samples, inclusive %)")
    pt.add_column("category")
    pt.add_column("%", justify="right")
    for k, v in sorted(prof["inclusive_pct"].items(), key=lambda kv: -kv[1]):
        pt.add_row(k, f"{v}")
    console.print(pt)
    lt = Table(title=f"{title}: top self (leaf) functions, %")
    lt.add_column("function")
    lt.add_column("%", justify="right")
    for f, v in prof.get("top_self") or []:
        lt.add_row(str(f), f"{v}")
    console.print(lt)


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = res.get("latency", [])
    sc = res.get("scaling")
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    if lv and res.get("pipeline"):
        maxr = res["pipeline"]["orders_per_s"]
        offered = [x["offered_orders_per_s"] for x in lv] + [maxr]
        achieved = [x["drained_orders_per_s"] for x in lv] + [maxr]
        a1.plot(offered, achieved, "o-", label="pipeline (achieved)")
        a1.plot(
            [min(offered), max(offered)], [min(offered), max(offered)], ":", color="grey", label="offered = achieved"
        )
        for key, label, color in (
            ("baseline_plain", "plain passthrough", "tab:red"),
            ("baseline_matched", "fan-out-matched", "tab:purple"),
        ):
            if res.get(key):
                a1.axhline(res[key]["order_records_per_s"], color=color, ls="--", label=label)
        a1.set_yscale("log")
        a1.set_xlabel("offered load (order records/s)")
        a1.set_ylabel("throughput (order records/s, log)")
        a1.set_title("throughput vs offered load")
        a1.legend(loc="best", fontsize=8)
        xs = [x["offered_orders_per_s"] for x in lv]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            a2.plot(xs, [x[key] for x in lv], style, label=key.replace("_ms", ""))
        a2.axhline(1000, color="tab:red", ls="--", lw=0.8, label="p99 target 1 s")
        a2.set_yscale("log")
        a2.set_xlabel("offered load (order records/s)")
        a2.set_ylabel("produce -> ledger entry (ms)")
        a2.set_title(f"latency (grace {res['latency_grace_s']} s)")
        a2.legend(loc="best", fontsize=8)
    if sc:
        ns = sorted(int(n) for n in sc["runs"])
        meas = [1.0] + [sc["speedup"][str(n)] for n in ns if n > 1]
        a3.plot(ns, meas, "o-", label="measured")
        proj = [n for n in PROJECT]
        a3.plot(proj, [sc["projection"][str(n)] for n in proj], "s--", label="projection (Amdahl)")
        a3.plot([1, 32], [1, 32], ":", color="grey", label="linear")
        a3.set_xscale("log", base=2)
        a3.set_yscale("log", base=2)
        a3.set_xlabel("workers (each under the same quota)")
        a3.set_ylabel("speedup vs 1 worker")
        a3.set_title(f"scaling, serial fraction {fmt(num(sc['serial_fraction']), '', 3)}")
        a3.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def place_infrastructure(ctx: Ctx, stack: Any) -> None:
    """Broker (java) and redis-server(s) in their own groups, outside any quota."""
    cfg = getattr(stack, "cfg", None)
    if cfg is None:
        ctx.note("stack without a config: broker and redis CPU not accounted")
        return
    for service, comp in ((stack_mod.KAFKA, "broker"), (stack_mod.REDIS, "redis")):
        pid = stack_mod.running_pid(cfg, service)
        if pid is None:
            ctx.note(f"no pid for {service}: its CPU is not accounted")
            continue
        ctx.place(comp, pid)
        for kid in proc_children(pid):
            ctx.place(comp, kid)
    for pid in pids_with(str(ctx.tmp / "redis-cluster") + "/redis-cluster-"):
        ctx.place("redis", pid)


async def run_stack_phases(ctx: Ctx, res: dict[str, Any]) -> None:
    """Every phase on one stack, in order; the scaling runs alone with --scaling-only."""
    args = ctx.args
    cfg = write_config(ctx.tmp, "fenxiao.toml", args.grace)
    program = load_program(cfg)
    lat_cfg = write_config(ctx.tmp, "fenxiao-latency.toml", args.latency_grace)
    lat_grace = load_program(lat_cfg).ordering_grace_seconds
    res["latency_grace_s"] = lat_grace
    if args.latency_grace is None and args.latency and not args.scaling_only:
        ctx.note(
            f"latency measured with the default config's ordering grace ({lat_grace:g} s, the spec's default: the "
            f"bench config sets none); the throughput, scaling and backlog workers use --grace {args.grace:g} s"
        )
    console.print(f"generating the sale: {args.users:,} users, {args.orders:,} orders, seed {args.seed} ...")
    recs = sale(args.users, args.orders, args.seed, SALE_START)
    exp = expected(recs, program)
    console.print(
        f"  {len(recs):,} records, {n_orders(recs):,} on {names.ORDERS}; reference: {len(exp.ids):,} entries, "
        f"{exp.outputs:,} output records of {exp.out_bytes:,.0f} B on average"
    )

    if ctx.cg is not None:  # the infrastructure's CPU per second with no traffic: a fixed cost, not per record
        before, t = ctx.usage(), time.monotonic()
        await asyncio.sleep(5.0)
        after, secs = ctx.usage(), time.monotonic() - t
        res["idle_cpu_ms_per_s"] = {k: round((after[k] - before.get(k, 0)) / 1e6 / secs, 2) for k in after}
        console.print(f"idle CPU-ms per second (no traffic): {res['idle_cpu_ms_per_s']}")

    if not args.scaling_only:
        console.rule("baseline: plain aiokafka passthrough, 1 in / 1 out")
        res["baseline_plain"] = await run_baseline(ctx, recs, None)
        console.print(res["baseline_plain"])
        console.rule(f"baseline: fan-out-matched passthrough, {len(recs):,} in / {exp.outputs:,} out")
        res["baseline_matched"] = await run_baseline(ctx, recs, exp)
        console.print(res["baseline_matched"])
        await phase_one_worker(ctx, res, recs, exp, cfg, lat_cfg, lat_grace, program)

    if args.scaling:
        sc_orders = args.scaling_orders
        sc_users = max(1, sc_orders * args.users // max(1, args.orders))
        srecs = sale(sc_users, sc_orders, args.seed + 50, SALE_START)
        sexp = expected(srecs, program)
        runs: dict[int, dict[str, Any]] = {}
        for n in SCALING:
            quota = f"{args.quota_us}/{args.period_us} us each" if ctx.cg else "NO quota (no cgroups)"
            console.rule(f"scaling: {n} worker(s), {quota}, {n_orders(srecs):,} order records")
            runs[n] = await phase_scaling_run(ctx, n, srecs, sexp, cfg)
            console.print({k: v for k, v in runs[n].items() if k not in ("ledger", "lease_holder_profile")})
        if ctx.cg is None:
            ctx.note("scaling ran without CPU quotas (no cgroups): its speedups are not per fixed quota")
        res["scaling"] = {"runs": runs, **scaling_summary(runs)}
        console.print({k: v for k, v in res["scaling"].items() if k != "runs"})

    if args.backlog and not args.scaling_only:
        console.rule(f"backlog catch-up: {args.backlog:,} orders already in the topics")
        res["backlog"] = await phase_backlog(ctx, cfg, program)
        console.print({k: v for k, v in res["backlog"].items() if k != "ledger"})


async def phase_one_worker(
    ctx: Ctx,
    res: dict[str, Any],
    recs: list[dict[str, Any]],
    exp: Expected,
    cfg: Path,
    lat_cfg: Path,
    lat_grace: float,
    program: Any,
) -> None:
    """The pipeline at full speed (one worker, --grace), then the latency levels on the default grace."""
    from tests.integration import scenario

    args = ctx.args
    console.rule("pipeline: one worker, sale produced as fast as possible")
    await scenario.reset_topics(ctx.st.bootstrap, PARTITIONS)
    app_id = f"fx-bench-pipeline-{uuid.uuid4().hex[:6]}"
    sink = start_sink(ctx, cfg, app_id, "pipeline", "pipeline-sink")
    w = Worker(ctx, cfg, "pipeline", "pipeline-worker-1", app_id, worker_args(ctx)).start()
    tail = Tail(ctx.st.bootstrap, names.COMMISSIONS)
    await tail.start()
    all_records = list(recs)
    workers = [w]
    late_before: int | None = 0
    try:
        prof_path = ctx.tmp / "profile.txt" if not args.no_profile else None
        res["pipeline"] = await phase_pipeline(ctx, w, tail, recs, exp.ids, prof_path, sink)
        console.print(res["pipeline"])
        if prof_path is not None and prof_path.exists():
            res["profile"] = summarize_file(prof_path)
            if args.keep_profile:
                shutil.copy(prof_path, args.out_dir / f"{res['stamp']}-profile.txt")
        res["memory"] = redis_memory(ctx.st.redis_url, args.mem_sample)
        res["memory"]["worker_rss_mb"] = w.rss_kb()[0] / 1024
        console.print(res["memory"])
        maxr = res["pipeline"]["orders_per_s"]
        res["latency"] = []
        if math.isnan(maxr) or not args.latency:
            if args.latency:
                ctx.note("no pipeline maximum measured: no latency levels, p99_ms_at_50pct is null")
        else:
            late_before = late_of(ctx, [w], "pipeline")
            w.stop()  # the same consumer group and Redis go on, on the default config's grace
            w = Worker(ctx, lat_cfg, "latency", "latency-worker-1", app_id, worker_args(ctx)).start()
            workers = [w]
            level_s = max(args.latency_seconds, 2 * lat_grace)
            per_order = n_orders(recs) / max(1, args.orders)
            for k, frac in enumerate(LOADS):
                offered = frac * maxr
                n = max(200, int(offered * level_s))
                users = max(1, n * args.users // max(1, args.orders))
                lrecs = sale(users, max(50, int(n / per_order)), args.seed + 1 + k, SALE_START + timedelta(days=1 + k))
                console.rule(
                    f"latency at {int(frac * 100)}% of max: {offered:,.0f} order records/s, {n_orders(lrecs):,} "
                    f"order records, grace {lat_grace:g} s"
                )
                lexp = expected(lrecs, program)
                lv = await phase_latency(ctx, w, tail, lrecs, lexp.ids, offered, lat_grace, level_s)
                lv["load"] = frac
                res["latency"].append(lv)
                all_records.extend(lrecs)
                console.print(lv)
        if w.component != "pipeline-worker-1":
            res["latency_worker_rss_peak_mb"] = w.rss_peak_kb / 1024
        console.rule("ledger check against streams.engine.reference (all records of the pipeline and latency runs)")
        full = expected(all_records, program) if len(all_records) != len(recs) else exp
        grace = lat_grace if res["latency"] else args.grace
        res["ledger"] = await check_run(ctx, "pipeline+latency", full, workers, grace, late_before)
        console.print({k: v for k, v in res["ledger"].items() if k != "totals"})
    finally:
        await tail.stop()
        w.stop()
        if sink:
            sink.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=None, help="users in the pipeline sale (default 8000; quick 3000)")
    ap.add_argument("--orders", type=int, default=None, help="orders in the pipeline sale (default 10000; quick 5000)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--backlog", type=int, default=None, help="orders for the catch-up run (default 20000; 0 = skip)")
    ap.add_argument("--backlog-workers", type=int, default=1, help="workers draining the backlog (staged if > 1)")
    ap.add_argument(
        "--topology",
        choices=["single", "staged"],
        default="staged",
        help="FENXIAO_TOPOLOGY of the scaling runs and of --backlog-workers > 1 (single: one owner + standbys)",
    )
    ap.add_argument("--latency-seconds", type=float, default=None, help="produce time per load level (default 30)")
    ap.add_argument(
        "--grace", type=float, default=1.0, help="[pipeline] ordering_grace_seconds of the throughput workers (1 s)"
    )
    ap.add_argument(
        "--latency-grace",
        type=float,
        default=None,
        help="ordering grace of the latency worker (default: none in its config, so the spec's default 10 s)",
    )
    ap.add_argument(
        "--pipeline-producer",
        choices=("fast", "per-record"),
        default="fast",
        help="how the pipeline phase produces its sale: whole batches as the baselines' preload (fast, the default) "
        "or one awaited send per record (per-record, the harness before 2026-12-07: ~5x its CPU on the same 2 cores)",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="FENXIAO_BATCH_SIZE (default: the worker's)")
    ap.add_argument("--sink-rows", type=int, default=None, help="rows for the sink measurement (default 500000)")
    ap.add_argument("--mem-sample", type=int, default=5000, help="keys per prefix sampled with MEMORY USAGE")
    ap.add_argument("--baseline-repeats", type=int, default=3, help="runs per baseline; the best one is the ceiling")
    ap.add_argument("--scaling-orders", type=int, default=None, help="orders in each scaling run (default 10000)")
    ap.add_argument("--quota-us", type=int, default=DEFAULT_QUOTA_US, help="cpu.cfs_quota_us per scaling worker")
    ap.add_argument("--period-us", type=int, default=DEFAULT_PERIOD_US, help="cpu.cfs_period_us per scaling worker")
    ap.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the 1/2/4-worker runs")
    ap.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency levels")
    ap.add_argument("--scaling-only", action="store_true", help="only the 1/2/4-worker scaling runs (and their checks)")
    ap.add_argument("--no-cgroups", action="store_true", help="no CPU accounting and no quotas (numbers become null)")
    ap.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="NODES",
        help="run the worker on a private Redis Cluster of NODES primaries (e.g. 3) instead of one redis-server",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes for development (about 5-10 minutes)")
    ap.add_argument("--no-profile", action="store_true", help="do not attach py-spy to the worker")
    ap.add_argument("--keep-profile", action="store_true", help="copy py-spy's raw stacks next to the results")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--passthrough-child", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    ap.add_argument("--passthrough-count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--passthrough-outputs", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--passthrough-size", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.users = a.users if a.users is not None else (3000 if q else 8_000)
    a.orders = a.orders if a.orders is not None else (5000 if q else 10_000)
    a.backlog = a.backlog if a.backlog is not None else (5_000 if q else 20_000)
    a.latency_seconds = a.latency_seconds if a.latency_seconds is not None else (8.0 if q else 30.0)
    a.sink_rows = a.sink_rows if a.sink_rows is not None else (100_000 if q else 500_000)
    a.scaling_orders = a.scaling_orders if a.scaling_orders is not None else (1_500 if q else 10_000)
    if a.scaling_only:
        a.scaling, a.sink_rows = True, 0
    if a.quota_us <= 0 or a.period_us <= 0:
        ap.error("--quota-us and --period-us must be > 0")
    return a


def open_cgroups(args: argparse.Namespace, stamp: str, notes: list[str]) -> Cgroups | None:
    """The run's cgroups with the harness in its own group, or None with the reason in notes."""
    if args.no_cgroups:
        notes.append("--no-cgroups: no CPU accounting (cpu_ms_per_1k_order_records null) and no scaling quota")
        return None
    try:
        cg = Cgroups(f"{stamp.lower()}-{os.getpid()}")
    except CgroupError as e:
        notes.append(f"no cgroup accounting: {e}; cpu_ms_per_1k_order_records is null and scaling has no quota")
        return None
    cg.add("harness", os.getpid())
    return cg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.passthrough_child:
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(
                passthrough_child(
                    args.passthrough_child, args.passthrough_count, args.passthrough_outputs, args.passthrough_size
                )
            )
        return 0
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: workers, stack, cgroups
    args.out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H%M%SZ")
    res: dict[str, Any] = {
        "when": now.strftime("%Y-%m-%d %H:%M UTC"),
        "when_iso": now.isoformat(timespec="seconds"),
        "stamp": stamp,
        "cpus": os.cpu_count(),
        "loadavg_at_start": round(os.getloadavg()[0], 2),
        "grace_s": args.grace,
        "redis": f"{args.redis_cluster}-node Redis Cluster" if args.redis_cluster else "one redis-server",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    t_start = time.monotonic()
    notes: list[str] = []
    cg = open_cgroups(args, stamp, notes)
    failed: BaseException | None = None
    ctx: Ctx | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="fenxiao-bench-") as d:
            tmp = Path(d)
            console.print("starting a private Kafka + Redis ...")
            with contextlib.ExitStack() as stacks:
                base: Any = stacks.enter_context(stack_mod.isolated_stack(tmp / "stack", partitions=PARTITIONS))
                st: Any = base
                if args.redis_cluster:
                    console.print(f"starting a private {args.redis_cluster}-node Redis Cluster ...")
                    url = stacks.enter_context(stack_mod.redis_cluster(tmp / "redis-cluster", args.redis_cluster))
                    st = stack_mod.ClusterStack(base, url)
                ctx = Ctx(st, tmp, args, cg, notes=notes)
                ctx.features = detect_features()
                console.print(f"features of this tree's worker: {ctx.features}")
                place_infrastructure(ctx, base)
                try:
                    asyncio.run(run_stack_phases(ctx, res))
                except Exception as e:  # record what was measured, then fail loudly
                    failed = e
                    ctx.note(f"the run stopped with an error: {e!r}")
                    console.print_exception()
        if args.sink_rows and failed is None:
            console.rule(f"sink: {args.sink_rows:,} ledger rows into embedded chDB")
            res["sink"] = phase_sink(args.sink_rows)
            console.print(res["sink"])
    finally:
        if cg is not None:
            left = cg.close()
            if left:
                console.print(f"[red]cgroups not removed: {left}[/]")
    if ctx is None:
        ctx = Ctx(None, Path("."), args, None, notes=notes)
    res["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.monotonic() - t_start, 1)
    res["checks"] = ctx.checks
    s = summary(res, ctx)
    res["summary"] = s
    res["targets"] = [{"measure": n, "value": v, "target": t, "met": ok} for n, v, t, ok in targets(s)]
    out = args.out_dir / f"{stamp}.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    (args.out_dir / "latest.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    png = args.out_dir / f"{stamp}.png"
    if res.get("latency") or res.get("scaling"):
        chart(res, png)
    print_report(res, s)
    console.print(
        f"results: {args.out_dir / 'latest.json'}, {out}  chart: {png}  (wall {res['wall_s']} s, load avg "
        f"{res['loadavg_at_start']} -> {res['loadavg_at_end']})"
    )
    if failed is not None or not s["ledger_matches"]:
        console.print("[red]FAILED: a run's ledger differs from the reference, an event was late, or the run broke[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
