"""`fenxiao worker`: validate config, check the services, create topics, then run the Faust worker."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from streams import names
from streams.config import ConfigError, load
from streams.settings import get_settings


class WorkerError(Exception):
    """A start-up problem with a fix the operator can apply."""


async def _redis_answers(url: str) -> bool:
    from streams import redis_conn

    r = redis_conn.connect_async(url, socket_connect_timeout=2)
    try:
        return bool(await r.ping())
    except Exception:
        return False
    finally:
        await r.aclose()


def run(config_path: str | None, loglevel: str = "info", standby: bool = False, sink: bool = True) -> int:
    """Start the worker in the foreground; returns when it is stopped (SIGINT/SIGTERM)."""
    settings = get_settings()
    path = Path(config_path) if config_path else settings.config
    try:
        program = load(path)
    except ConfigError as e:
        raise WorkerError(str(e)) from e
    from streams import stack

    if not stack.kafka_answers(settings.kafka, timeout=5.0):
        raise WorkerError(f"Kafka does not answer at {settings.kafka}: run `fenxiao stack up` or set {names.ENV_KAFKA}")
    redis_url = settings.redis_url.get_secret_value()
    if not asyncio.run(_redis_answers(redis_url)):
        raise WorkerError(f"Redis does not answer: run `fenxiao stack up` or set {names.ENV_REDIS_URL}")
    stack.ensure_topics(settings.kafka, settings.partitions)
    settings.var_dir.mkdir(parents=True, exist_ok=True)  # faust's datadir lives in it (chDB used to create it)
    os.environ[names.ENV_CONFIG] = str(path)

    import socket

    from streams import runtime, sink_process
    from streams.referral_store import LEASE_TTL_MS, LeaseLost, acquire_lease, release_lease

    owner = f"{settings.app_id}@{socket.gethostname()}:{os.getpid()}"

    def waiting(holder: str) -> None:
        print(f"fenxiao: standby: {holder} holds the lease; this worker takes over when it stops", flush=True)

    def stop_waiting(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        if standby:
            # A standby stopped by its supervisor (SIGTERM) before it ever took over is a clean exit.
            previous = signal.signal(signal.SIGTERM, stop_waiting)
            try:
                acquire_lease(redis_url, owner, wait_s=None, on_wait=waiting)
            finally:
                signal.signal(signal.SIGTERM, previous)
        else:
            acquire_lease(redis_url, owner, wait_s=LEASE_TTL_MS / 1000 + 5)
    except LeaseLost as e:
        raise WorkerError(f"{e} To run this one as a hot standby, start it with --standby.") from e
    except KeyboardInterrupt:
        return 0
    if standby:
        print(f"fenxiao: standby {owner} took the lease; starting", flush=True)
    try:
        from streams.recovery import ensure_state

        epoch, rebuilt = ensure_state(redis_url, settings.kafka, settings.app_id, owner)
        if rebuilt:
            print(f"fenxiao: Redis had no state; replaying the input topics from the start (group {settings.app_id})")
        if sink:
            sink_process.spawn(settings, loglevel)
        runtime.init(settings, program, owner, epoch)
        import faust
        import uvloop

        # uvloop for the worker's loops (faust's and its consumer thread's): cheaper socket I/O and callbacks.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        from streams import agents, report_views, timers, views  # noqa: F401  (registers agents, timers, pages)
        from streams.app import app

        worker = faust.Worker(app, loglevel=loglevel, quiet=True)
        # faust's start-up spinner sets the root logger to DEBUG so it can spin on every record: every
        # debug call in faust and aiokafka then builds a LogRecord (4 % of the worker's CPU under load).
        worker.spinner = None
        worker.execute_from_commandline()
    finally:
        sink_process.stop_child()
        release_lease(redis_url, owner)
    return 0
