"""`fenxiao worker`: validate config, check the services, create topics, then run the Faust worker."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from streams import names
from streams.engine.config import ConfigError, load
from streams.settings import get_settings


class WorkerError(Exception):
    """A start-up problem with a fix the operator can apply."""


async def _redis_answers(url: str) -> bool:
    from streams.state import redis_conn

    r = redis_conn.connect_async(url, socket_connect_timeout=2)
    try:
        return bool(await r.ping())
    except Exception:
        return False
    finally:
        await r.aclose()


def _active_web(redis_url: str) -> str | None:
    """The active worker's API URL, for a standby to pass requests to (None: none yet, or Redis silent)."""
    from streams.state import redis_conn

    try:
        got = redis_conn.shared(redis_url).get(names.KEY_ACTIVE_WEB)
    except Exception:
        return None
    return None if got is None else str(got)


def _advertise(redis_url: str, url: str) -> None:
    """Tell the standbys where the active worker's API answers."""
    from streams.state import redis_conn

    r = redis_conn.connect(redis_url, decode_responses=True, socket_timeout=5)
    try:
        r.set(names.KEY_ACTIVE_WEB, url)
    finally:
        r.close()


def run(config_path: str | None, loglevel: str = "info", standby: bool = False, sink: bool = True) -> int:
    """Start the worker in the foreground; returns when it is stopped (SIGINT/SIGTERM)."""
    settings = get_settings()
    from streams.api.auth import exposure_problem

    exposed = exposure_problem(settings.web_host, settings.token_key.get_secret_value())
    if exposed:
        raise WorkerError(exposed)
    path = Path(config_path) if config_path else settings.config
    try:
        program = load(path)
    except ConfigError as e:
        raise WorkerError(str(e)) from e
    if program.webhooks is not None:  # refuse at start what the sink's deliverer could not run with
        from streams.sinks import webhooks

        try:
            webhooks.secret_of(program.webhooks)
            webhooks.previous_secret_of(program.webhooks)
        except webhooks.WebhookError as e:
            raise WorkerError(f"{path}: {e}") from e
    from streams.ops import stack

    if not stack.kafka_answers(settings.kafka, timeout=5.0):
        raise WorkerError(f"Kafka does not answer at {settings.kafka}: run `fenxiao stack up` or set {names.ENV_KAFKA}")
    redis_url = settings.redis_url.get_secret_value()
    if not asyncio.run(_redis_answers(redis_url)):
        raise WorkerError(f"Redis does not answer: run `fenxiao stack up` or set {names.ENV_REDIS_URL}")
    staged = settings.topology == "staged"
    stack.ensure_topics(settings.kafka, settings.partitions)
    settings.var_dir.mkdir(parents=True, exist_ok=True)  # faust's datadir lives in it (chDB used to create it)
    os.environ[names.ENV_CONFIG] = str(path)

    import socket

    from streams.pipeline import runtime
    from streams.sinks import sink_process
    from streams.state.referral_store import LeaseLost, acquire_lease, release_lease

    owner = f"{settings.app_id}@{socket.gethostname()}:{os.getpid()}"

    def stop_waiting(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Every worker waits for the lease when another holds it (a hot standby), started alike: so a fleet of
    # `fenxiao worker` processes needs no roles, and one that is killed is replaced by the next in line.
    from streams.pipeline.standby import StandbyStatus, serve

    status = StandbyStatus(
        owner, settings.token_key.get_secret_value(), redis_url if staged else None, lambda: _active_web(redis_url)
    )
    servers = []
    from streams.pipeline import credit

    credit_child = credit.CreditChild(owner, loglevel, str(path), redis_url).start() if staged else None

    def waiting(holder: str) -> None:
        if not standby and holder.split("@", 1)[0] != settings.app_id:
            raise LeaseLost(
                f"another worker ({holder}), of another consumer group, is applying events to this Redis; only one "
                f"group may. Stop it, give this worker its own Redis ({names.ENV_REDIS_URL}), or use the same "
                f"{names.ENV_APP_ID}. To wait for it as a hot standby anyway, start this one with --standby."
            )
        status.holder = holder
        servers.append(serve(status, settings.web_host, settings.web_port))  # only once it has to wait
        print(f"fenxiao: standby: {holder} holds the lease; this worker takes over when it stops", flush=True)

    # A standby stopped by its supervisor (SIGTERM) before it ever took over is a clean exit.
    previous = signal.signal(signal.SIGTERM, stop_waiting)
    try:
        waited = acquire_lease(redis_url, owner, wait_s=None, on_wait=waiting)
    except LeaseLost as e:
        if credit_child is not None:
            credit_child.stop()
        raise WorkerError(str(e)) from e
    except KeyboardInterrupt:
        if credit_child is not None:
            credit_child.stop()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for server in servers:
            if server is not None:
                server.shutdown()
                server.server_close()
    if waited or standby:
        print(f"fenxiao: standby {owner} took the lease; starting", flush=True)
    try:
        from streams.state.recovery import ensure_state

        epoch, rebuilt = ensure_state(redis_url, settings.kafka, settings.app_id, owner)
        if rebuilt:
            print(f"fenxiao: Redis had no state; replaying the input topics from the start (group {settings.app_id})")
        problem = credit.claim_topology(redis_url, settings.kafka, settings.topology)
        if problem:
            raise WorkerError(problem)
        if credit_child is not None:
            credit_child.balancing = True  # the attribution stage runs here: credit only while alone
        _advertise(redis_url, settings.api_url)
        if sink:
            sink_process.spawn(settings, loglevel)
        runtime.init(settings, program, owner, epoch)
        import faust
        import uvloop

        # uvloop for the worker's loops (faust's and its consumer thread's): cheaper socket I/O and callbacks.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        from streams.api import report_views, views  # noqa: F401  (registers agents, timers, pages)
        from streams.pipeline import agents, timers  # noqa: F401  (registers agents, timers, pages)
        from streams.pipeline.app import app

        worker = faust.Worker(app, loglevel=loglevel, quiet=True)
        # faust's start-up spinner sets the root logger to DEBUG so it can spin on every record: every
        # debug call in faust and aiokafka then builds a LogRecord (4 % of the worker's CPU under load).
        worker.spinner = None
        worker.execute_from_commandline()
    finally:
        sink_process.stop_child()
        if credit_child is not None:
            credit_child.stop()
        release_lease(redis_url, owner)
    return 0
