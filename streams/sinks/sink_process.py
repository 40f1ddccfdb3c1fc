"""`fenxiao sink`: the one process that owns ClickHouse, runs the sink and the read-model projector, serves reports.

Embedded chDB admits one process per data directory; this is it, so the worker's core is the worker's.
A second sink on the same directory waits for the lock (standby) and takes over when the first stops.
It serves, on 127.0.0.1:FENXIAO_SINK_PORT: /health, /status (operators: rows written, the sink's and
the projector's lag), /reports/{name} (the BI reports; the worker's /reports forwards here) and
/outcome (what `fenxiao report totals` prints).
A worker spawns it as a child (SinkChild, below) unless started with --no-sink; the child dies with its
parent (PR_SET_PDEATHSIG, and a check of its parent pid), so a SIGKILLed worker leaves no sink holding chDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from streams import names
from streams.api import auth
from streams.settings import Settings, get_settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STATUS_POLL_S = 0.5
RESPAWN_PAUSE_S = 1.0
STOP_WAIT_S = 25.0
RESTART_PAUSE_S = 2.0


class SinkError(Exception):
    """A start-up problem of the sink process with a fix the operator can apply."""


def _die_with_parent() -> int | None:
    """Ask the kernel for SIGTERM when the spawning worker dies; None when not spawned by a worker."""
    raw = os.environ.get(names.ENV_SINK_PARENT)
    if not raw:
        return None
    parent = int(raw)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before prctl took effect
        raise SystemExit(0)
    return parent


def run(loglevel: str = "info") -> int:
    """Run the sink process in the foreground until SIGTERM/SIGINT (or its parent worker's death)."""
    logging.basicConfig(
        level=getattr(logging, loglevel.upper(), logging.INFO),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] sink: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    parent = _die_with_parent()
    settings = get_settings()
    yield_cpu(settings.sink_nice)
    return asyncio.run(_main(settings, parent))


def yield_cpu(nice: int) -> None:
    """Run at niceness `nice` at least, before any thread starts (Linux threads inherit it from their creator).

    The sink's ClickHouse rows and read models can wait; commissions and balances cannot. On a busy machine the
    worker (and Redis, Kafka) then get the CPU first and the sink catches up when the peak passes (its lag is on
    /status); on an idle one nothing changes.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


async def _open_clickhouse(settings: Settings, stopping: asyncio.Event) -> Any:
    """Open and migrate ClickHouse; while another process holds the embedded directory, wait (standby)."""
    from streams.sinks import clickhouse, warehouse

    told = False
    while not stopping.is_set():
        try:
            ch = await asyncio.to_thread(warehouse.connect, settings)
        except clickhouse.ChdbLockedError as e:
            if not told:
                print(f"fenxiao sink: standby: {e.owner or 'another process'} holds {e.path}; waiting", flush=True)
                told = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
            continue
        try:
            await asyncio.to_thread(clickhouse.migrate, ch)
        except BaseException:
            ch.close()
            raise
        if told:
            print("fenxiao sink: took over ClickHouse", flush=True)
        return ch
    return None


async def _keep_running(name: str, job: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
    """Run a loop until the stop; an unexpected error is logged and the loop started again after a pause."""
    while not stopping.is_set():
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; starting it again in %.0f s", name, RESTART_PAUSE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), RESTART_PAUSE_S)


class Service:
    """The running sink process's parts, for its HTTP views."""

    def __init__(self, settings: Settings, ch: Any) -> None:
        from streams.sinks.sink import ClickHouseSink
        from streams.sinks.sink_agent import SinkProgress
        from streams.state.projector import Projector

        self.settings, self.ch = settings, ch
        self.sink = ClickHouseSink(ch)
        self.progress = SinkProgress()
        self.owner = f"{settings.app_id}.sink@{socket.gethostname()}:{os.getpid()}"
        self.projector: Projector | None = None
        self.webhooks: Any = None  # streams.sinks.webhooks.Deliverer when the config has [webhooks]
        self._make_projector: Callable[[], Projector] = lambda: Projector(
            settings.kafka, settings.redis_url.get_secret_value(), ch, self.owner, crash_at=settings.crash_at
        )

    def status(self) -> dict[str, object]:
        """Rows written, and the lag of both loops; `lag` is their sum, None until both know theirs."""
        pj = self.projector.status() if self.projector is not None else {"state": "starting", "lag": None}
        lags = [self.progress.lag, pj["lag"]]
        return {
            "owner": self.owner,
            "sink_rows_written": self.progress.written,
            "sink_lag": self.progress.lag,
            "error": self.progress.error,
            "projector": pj,
            "lag": None if any(v is None for v in lags) else sum(int(str(v)) for v in lags),
            "webhooks": self.webhooks.status() if self.webhooks is not None else None,
        }

    async def project(self) -> None:
        """One life of the projector (a fresh one after an error: it rebuilds the tree and re-reads its offsets)."""
        self.projector = self._make_projector()
        try:
            await self.projector.run()
        finally:
            self.projector.lag = None


async def _main(settings: Settings, parent: int | None) -> int:
    """Open ClickHouse (or wait for it), start the web views, run sink and projector until stopped."""
    from streams.sinks import sink_agent

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def watch_parent() -> None:
        while parent is not None and not stopping.is_set():
            if os.getppid() != parent:
                log.warning("the worker that spawned this sink (pid %d) is gone; stopping", parent)
                stopping.set()
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch_parent())
    try:
        ch = await _open_clickhouse(settings, stopping)
    except Exception as e:
        print(f"fenxiao sink: cannot open ClickHouse: {e}", file=sys.stderr, flush=True)
        return 2
    if ch is None:
        return 0
    service = Service(settings, ch)
    runner = None
    try:
        try:
            runner = await _start_web(service, settings.sink_port)
        except OSError as e:
            print(
                f"fenxiao sink: cannot listen on 127.0.0.1:{settings.sink_port} ({e.strerror}): set"
                f" {names.ENV_SINK_PORT} to a free port",
                file=sys.stderr,
                flush=True,
            )
            return 2
        group = settings.app_id + names.SINK_GROUP_SUFFIX

        async def sink_loop() -> None:
            await sink_agent.sink_to_clickhouse(settings.kafka, group, service.sink, service.progress, stopping)

        tasks = [
            asyncio.create_task(_keep_running("ClickHouse sink", sink_loop, stopping)),
            asyncio.create_task(_keep_running("projector", service.project, stopping)),
        ]
        service.webhooks = _webhooks(settings)
        if service.webhooks is not None:
            hooks = service.webhooks
            tasks.append(asyncio.create_task(_keep_running("webhooks", lambda: hooks.run(stopping), stopping)))
        await stopping.wait()
        if service.projector is not None:
            service.projector.stop()
        _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        for t in pending:
            t.cancel()
        return 0
    finally:
        watcher.cancel()
        if runner is not None:
            await runner.cleanup()
        if service.webhooks is not None:
            await service.webhooks.close()
        ch.close()


def _webhooks(settings: Settings) -> Any:
    """The webhook deliverer when the program config has [webhooks] (the worker validated it), else None."""
    from streams.engine import config
    from streams.sinks import webhooks

    if not settings.config.exists():
        log.info("no config at %s: webhooks off", settings.config)
        return None
    try:
        rules = config.load(settings.config).webhooks
        return None if rules is None else webhooks.from_settings(settings, rules)
    except (config.ConfigError, webhooks.WebhookError) as e:
        print(f"fenxiao sink: webhooks off: {e}", file=sys.stderr, flush=True)
        return None


def _authorized(settings: Settings, request: Any) -> str | None:
    """None for an operator's bearer token, else the reason it is refused."""
    header = str(request.headers.get("Authorization", ""))
    token = header[7:].strip() if header.startswith("Bearer ") else None
    try:
        p = auth.verify(settings.token_key.get_secret_value(), token)
    except auth.AuthError as e:
        return str(e)
    return None if p.role == auth.OPERATOR else "operators only"


async def _start_web(service: Service, port: int) -> Any:
    """The sink's HTTP views on 127.0.0.1 only (the worker forwards what API clients ask)."""
    from aiohttp import web

    from streams.sinks import reports
    from streams.sinks.clickhouse import ClickHouseError

    def refuse(request: Any) -> Any:
        why = _authorized(service.settings, request)
        if why is None:
            return None
        return web.json_response({"error": why}, status=403 if why == "operators only" else 401)

    async def health(request: Any) -> Any:
        return web.json_response({"ok": True})

    async def status(request: Any) -> Any:
        return refuse(request) or web.json_response(service.status())

    async def report(request: Any) -> Any:
        refused = refuse(request)
        if refused is not None:
            return refused
        name = request.match_info["name"]
        params = {str(k): str(v) for k, v in request.query.items()}
        try:
            result = await asyncio.to_thread(reports.run, service.ch, name, params)
        except reports.ReportError as e:
            return web.json_response({"error": str(e)}, status=400)
        except ClickHouseError as e:
            log.warning("report %s failed: %s", name[:40], e)
            return web.json_response({"error": f"report failed in ClickHouse: {e}"}, status=500)
        return web.json_response(result.to_json())

    async def outcome(request: Any) -> Any:
        refused = refuse(request)
        if refused is not None:
            return refused
        try:
            return web.json_response(await asyncio.to_thread(reports.outcome, service.ch))
        except ClickHouseError as e:
            return web.json_response({"error": f"reading ClickHouse failed: {e}"}, status=500)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    app.router.add_get("/reports/{name}", report)
    app.router.add_get("/outcome", outcome)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def get_json(port: int, path: str, token_key: str, timeout: float) -> Any:
    """GET a page of the sink process with a short-lived operator token."""
    token = auth.issue(token_key, auth.OPERATOR, None, ttl_seconds=600)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class SinkChild:
    """`fenxiao sink` as the worker's child: started with the worker, restarted if it dies, stopped with it."""

    def __init__(self, settings: Settings, loglevel: str) -> None:
        self.settings, self.loglevel = settings, loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self.last: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._env = {**os.environ, names.ENV_SINK_PARENT: str(os.getpid())}
        self._thread = threading.Thread(target=self._watch, name="sink-child", daemon=True)

    def start(self) -> SinkChild:
        """Spawn the child and the thread that polls its status and restarts it."""
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "streams.cli", "sink", "--loglevel", self.loglevel]
        self.proc = subprocess.Popen(cmd, env=self._env)

    def _watch(self) -> None:
        """Poll the child's /status; a child that died is started again (fault injection fires only once)."""
        key = self.settings.token_key.get_secret_value()
        while not self._stopping.wait(STATUS_POLL_S):
            proc = self.proc
            if proc is not None and proc.poll() is not None:
                self.last = {}
                print(f"fenxiao: the sink process exited with {proc.returncode}; starting it again", flush=True)
                self._env.pop(names.ENV_CRASH_AT, None)
                if self._stopping.wait(RESPAWN_PAUSE_S):
                    return
                self._spawn()
                continue
            try:
                self.last = get_json(self.settings.sink_port, "/status", key, timeout=2.0)
            except (OSError, ValueError):
                self.last = {}

    def worker_status(self) -> dict[str, object]:
        """What the worker's /status shows: rows written and sink_lag (sink plus projector; None if unknown)."""
        return {
            "sink_rows_written": self.last.get("sink_rows_written", {}),
            "sink_lag": self.last.get("lag"),
            "sink": self.last or None,
        }

    def stop(self) -> None:
        """SIGTERM the child and wait for it; SIGKILL if it does not stop in time."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_S + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


_child: SinkChild | None = None


def spawn(settings: Settings, loglevel: str) -> SinkChild:
    """Start the worker's sink child (one per worker process)."""
    global _child
    _child = SinkChild(settings, loglevel).start()
    return _child


def stop_child() -> None:
    """Stop the worker's sink child, if it has one."""
    if _child is not None:
        _child.stop()


def worker_status() -> dict[str, object]:
    """The sink part of the worker's /status; sink_lag None when this worker runs without a sink."""
    if _child is None:
        return {"sink_rows_written": {}, "sink_lag": None, "sink": None}
    return _child.worker_status()
