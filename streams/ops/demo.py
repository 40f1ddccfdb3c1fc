"""`fenxiao demo`: the local stack, a worker, a generated flash sale in real time, a live view, a report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from streams import names

console = Console()


def program_toml(freeze_seconds: int = 20, grace_seconds: float = 2) -> str:
    """The demo's program (three levels, a d11 campaign); a short freeze so settlement shows live."""
    return f"""\
[program]
levels = 3
self_purchase = false
attribution_window_seconds = 86400
freeze_seconds = {freeze_seconds}
max_total_bps = 2000

[tiers.standard]
rates_bps = [1000, 500, 200]
[tiers.silver]
rates_bps = [1200, 600, 300]
[tiers.gold]
rates_bps = [1500, 700, 300]

[campaigns.d11]
max_total_bps = 2500
[campaigns.d11.tiers.standard]
rates_bps = [1300, 500, 200]

[withdrawals]
min_cents = 100
fee_bps = 60
fee_min_cents = 10

[pipeline]
ordering_grace_seconds = {grace_seconds}
"""


class DemoError(Exception):
    """The demo cannot go on; the message says what to do."""


def _operator_token(ttl_s: int = 86400) -> str:
    """/status and the dashboard need a token; the demo and its worker share FENXIAO_TOKEN_KEY."""
    from streams.api import auth
    from streams.settings import get_settings

    return auth.issue(get_settings().token_key.get_secret_value(), auth.OPERATOR, None, ttl_s)


def _get(port: int, path: str) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {_operator_token(60)}"}
    )
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.loads(r.read())


def _cents(c: int) -> str:
    """¥1,234.56 from integer cents, without a float."""
    whole, frac = divmod(abs(c), 100)
    return f"{'-' if c < 0 else ''}¥{whole:,}.{frac:02d}"


async def _reset(bootstrap: str, redis_url: str, partitions: int) -> None:
    """Empty the demo's topics and Redis db, so every demo starts from nothing."""
    from streams.ops import stack
    from streams.state import redis_conn

    await stack.recreate_topics(bootstrap, partitions)
    await _recreate_v2_inputs(bootstrap, partitions)
    await redis_conn.flush_async(redis_url)


async def _recreate_v2_inputs(bootstrap: str, partitions: int) -> None:
    """Empty the v2 input topics the stack does not manage yet (the demo's operators produce onto them)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    extra = [t for t in names.V2_INPUT_TOPICS if t not in names.INPUT_TOPICS]
    if not extra:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fenxiao-demo")
    await admin.start()
    try:
        doomed = [t for t in extra if t in set(await admin.list_topics())]
        if doomed:
            await admin.delete_topics(doomed)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            existing = set(await admin.list_topics())
            missing = [t for t in extra if t not in existing]
            if not missing:
                return
            with contextlib.suppress(Exception):  # a topic still being deleted refuses creation for a moment
                await admin.create_topics(
                    [NewTopic(t, partitions, 1, topic_configs={"retention.ms": "-1"}) for t in missing]
                )
            await asyncio.sleep(0.3)
        raise DemoError(f"Kafka at {bootstrap} did not create {', '.join(extra)} within 30 s")
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _top_earners(redis_url: str, n: int = 8) -> list[tuple[str, int, int, int, int]]:
    """(user, pending, available, reserved, withdrawn) of the biggest earners, straight from the balances in Redis."""
    from streams.state import redis_conn

    r = redis_conn.connect_async(redis_url, decode_responses=True)
    rows = []
    try:
        keys = [k async for k in r.scan_iter(match=names.KEY_BALANCE + "*", count=2000)]
        async with r.pipeline(transaction=False) as p:
            for k in keys:
                p.hmget(k, "p", "a", "r", "w")
            vals = await p.execute()
        for k, (pend, avail, reserved, withdrawn) in zip(keys, vals, strict=True):
            cents = (int(pend or 0), int(avail or 0), int(reserved or 0), int(withdrawn or 0))
            rows.append((k[len(names.KEY_BALANCE) :], *cents))
    finally:
        await r.aclose()
    rows.sort(key=lambda t: sum(t[1:]), reverse=True)
    return rows[:n]


def _view(
    status: dict[str, Any], produced: int, total: int, events_per_s: float, top: list[tuple[str, int, int, int, int]]
) -> Group:
    head = Table.grid(padding=(0, 3))
    head.add_row(
        f"[bold]produced[/] {produced:,}/{total:,}",
        f"[bold]applied[/] {status.get('applied', 0):,}",
        f"[bold]events/s[/] {events_per_s:,.0f}",
        f"[bold]entries[/] {status.get('entries', 0):,}",
        f"[bold]dead letters[/] {status.get('dead_letters', 0):,}",
        f"[bold]held[/] {status.get('held', 0):,}",
    )
    t = Table(title="top earners (live from Redis)", expand=False)
    t.add_column("distributor")
    t.add_column("pending 冻结中", justify="right")
    t.add_column("available 可提现", justify="right")
    t.add_column("reserved 提现中", justify="right")
    t.add_column("withdrawn 已提现", justify="right")
    for uid, *cents in top:
        t.add_row(uid, *(_cents(c) for c in cents))
    return Group(Panel(head, title="双11 flash sale — fenxiao demo"), t)


def run(users: int, orders: int, duration: float, seed: int, speed: float = 4.0, exit_when_done: bool = False) -> int:
    """The whole demo; the worker and dashboard stay up after the replay until Ctrl-C unless exit_when_done."""
    from streams.engine import config
    from streams.ops import demo_money, flashsale, stack
    from streams.settings import get_settings

    settings = get_settings()
    if not console.is_terminal:
        console.width = max(console.width, 140)  # a pipe or log: rich would default to 80 columns and cut the tables
    console.print("[bold]1/5[/] starting the local stack (Kafka in KRaft mode, Redis)…")
    try:
        cfg = stack.config_from_settings(settings)
        stack.up(cfg, settings.partitions)
    except stack.StackError as e:
        raise DemoError(str(e)) from e
    redis_url = settings.redis_url.get_secret_value()
    demo_dir = settings.var_dir.resolve() / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    config_path = demo_dir / "fenxiao.toml"
    config_path.write_text(program_toml(), encoding="utf-8")
    ch_path = demo_dir / "clickhouse"
    console.print("[bold]2/5[/] emptying the demo topics and Redis db…")
    asyncio.run(_reset(settings.kafka, redis_url, settings.partitions))
    if ch_path.exists():
        import shutil

        shutil.rmtree(ch_path)

    port, sink_port = _ports(settings.web_port, settings.sink_port)
    env = {
        **os.environ,
        names.ENV_CONFIG: str(config_path),
        names.ENV_APP_ID: f"fenxiao-demo-{int(time.time())}",
        names.ENV_WEB_PORT: str(port),
        names.ENV_SINK_PORT: str(sink_port),
        names.ENV_CLICKHOUSE_PATH: str(ch_path),
    }
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even when started with `&`
    log_path = demo_dir / "worker.log"
    console.print(f"[bold]3/5[/] starting a worker (log: {log_path})…")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--config", str(config_path), "--loglevel", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    dashboard = f"http://127.0.0.1:{port}/dashboard?token={_operator_token()}"
    try:
        _wait_ready(port, proc, log_path)
        _url("Live dashboard:", dashboard)
        start = datetime.now(UTC)
        records = list(flashsale.generate(users, orders, seed, start, duration))
        money = demo_money.script(records, config.parse(program_toml(), str(config_path)))
        sale_end_ms = int(start.timestamp() * 1000 + (duration + 30) * 1000)
        console.print(
            f"[bold]4/5[/] replaying a generated sale at {speed:g}x real time: {users:,} users, {orders:,} orders, "
            f"{len(records):,} events, then {len(money.records)} operator events (awards, a freeze, withdrawals)"
        )
        _url("Worker status:", f"http://127.0.0.1:{port}/status")
        asyncio.run(_live(settings.kafka, redis_url, records + money.records, port, speed, sale_end_ms))
        console.line()
        _wait_settled(port, redis_url, timeout=30)
        _wait_sink(port, proc, timeout=120)
        console.print("[bold]5/5[/] report from ClickHouse (through the worker's sink process):")
        _report(sink_port, money.lines)
        if exit_when_done:
            return 0
        _stay_up(proc, log_path, port, dashboard)
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        console.print(
            f"The worker has stopped. The stack keeps running (`fenxiao stack status`, `fenxiao stack down`);"
            f" data in {cfg.var_dir}",
            soft_wrap=True,
        )


def _url(label: str, url: str) -> None:
    """A URL on one line whatever the output is (a narrow terminal, a pipe, a log): copy-paste must work."""
    console.print(f"{label} {url}", soft_wrap=True, highlight=False, markup=False)


def _ports(web_port: int, sink_port: int) -> tuple[int, int]:
    """The configured web and sink ports when both are free (the CLI's defaults then reach the demo), else free ones."""
    from streams.ops.stack import pick_free_ports

    def free(port: int) -> bool:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    if free(web_port) and free(sink_port):
        return web_port, sink_port
    a, b = pick_free_ports(2)
    return a, b


def _wait_sink(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the sink process has written everything the worker produced, so the report is complete."""
    deadline = time.monotonic() + timeout
    with console.status("waiting for ClickHouse to catch up…"):
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if _get(port, "/status").get("sink_lag") == 0:
                    return
            time.sleep(1.0)


def _report(sink_port: int, money_lines: list[str]) -> None:
    """Commission by level, the d11 campaign minute by minute, the top earners, and what the operators did."""
    from streams.settings import get_settings
    from streams.sinks import reports

    key = get_settings().token_key.get_secret_value()
    for name, params in (("levels", {}), ("campaign", {"id": "d11"}), ("leaderboard", {"limit": "10"})):
        try:
            reports.render_table(reports.from_worker(name, params, sink_port, key, timeout=120), console)
        except (reports.ReportError, reports.WorkerUnavailable) as e:
            console.print(f"[yellow]report {name} unavailable:[/] {e}")
    if money_lines:
        console.print("\n[bold]after the sale, the operators' events (contract v2 topics):[/]")
        for line in money_lines:
            console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)


def _stay_up(proc: subprocess.Popen[bytes], log_path: Path, port: int, dashboard: str) -> None:
    """Keep the worker (and so the dashboard) running until Ctrl-C; a worker that dies ends the demo with its log."""
    api = f"http://127.0.0.1:{port}"
    console.print("\n[bold green]The worker and the dashboard stay up until you press Ctrl-C.[/]")
    _url("Live dashboard:", dashboard)
    _url("Try the operator CLI in another terminal:", f"FENXIAO_API_URL={api} fenxiao withdrawals list")
    console.print("demo ready: serving until Ctrl-C", soft_wrap=True, highlight=False)
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nCtrl-C: stopping the worker…")
        return
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise DemoError(f"the worker exited with {proc.returncode} while the demo was up; its log ends with:\n{tail}")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """Turn SIGTERM into SystemExit so the demo's cleanup stops its worker."""
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """In the worker child: get SIGTERM if the demo dies, so no orphan keeps applying events."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"the worker exited with {proc.returncode}; its log ends with:\n{tail}")
        with contextlib.suppress(OSError):
            _get(port, "/health")
            return
        time.sleep(0.3)
    raise DemoError(f"the worker did not answer within 120 s; see {log_path}")


TAIL_SPEEDUP = 15.0


async def _live(
    bootstrap: str, redis_url: str, records: list[dict[str, Any]], port: int, speed: float, sale_end_ms: int
) -> None:
    """Produce at `speed` while showing events/s and the top earners; the after-sale tail goes faster."""
    from schemas.events import parse_ts_ms
    from streams.ops import replay

    produced = 0
    consumed = set(names.INPUT_TOPICS)  # the worker reads these; v2 topics count once the worker consumes them
    to_apply = 0
    cut = next((i for i, r in enumerate(records) if parse_ts_ms(r["value"]["ts"]) > sale_end_ms), len(records))

    async def counted() -> int:
        nonlocal produced

        def gen(part: list[dict[str, Any]]) -> Any:
            nonlocal produced
            nonlocal to_apply
            for r in part:
                produced += 1
                to_apply += r["topic"] in consumed
                yield r

        n = await replay.produce(bootstrap, gen(records[:cut]), realtime_speed=speed, progress=False)
        if cut < len(records):
            n += await replay.produce(
                bootstrap, gen(records[cut:]), realtime_speed=speed * TAIL_SPEEDUP, progress=False
            )
        return n

    task = asyncio.create_task(counted())
    last_applied, last_t = 0, time.monotonic()
    events_per_s = 0.0
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            status: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                status = await asyncio.to_thread(_get, port, "/status")
            now = time.monotonic()
            applied = int(status.get("applied", last_applied))
            events_per_s = 0.7 * events_per_s + 0.3 * (applied - last_applied) / max(now - last_t, 1e-3)
            last_applied, last_t = applied, now
            top = await _top_earners(redis_url)
            live.update(_view(status, produced, len(records), events_per_s, top))
            if task.done() and status.get("held", 1) == 0 and applied >= to_apply - status.get("dead_letters", 0):
                break
            await asyncio.sleep(1.0)
    await task


def _wait_settled(port: int, redis_url: str, timeout: float) -> None:
    """Wait for the last freezes to end, so the report shows settled money too."""
    from streams.state import redis_conn

    r = redis_conn.connect(redis_url)
    deadline = time.monotonic() + timeout
    with console.status("waiting for the last orders' freeze to end (settlement)…"):
        while time.monotonic() < deadline and r.zcard(names.KEY_SETTLE) > 0:
            time.sleep(1.0)
    time.sleep(2.0)
