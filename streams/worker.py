"""`fenxiao worker`: validate config, check the services, create topics, then run the Faust worker."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from streams import names
from streams.config import ConfigError, load
from streams.settings import get_settings


class WorkerError(Exception):
    """A start-up problem with a fix the operator can apply."""


async def _redis_answers(url: str) -> bool:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(await r.ping())
    except Exception:
        return False
    finally:
        await r.aclose()


def run(config_path: str | None, loglevel: str = "info") -> int:
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
    if not asyncio.run(_redis_answers(settings.redis_url.get_secret_value())):
        raise WorkerError(f"Redis does not answer: run `fenxiao stack up` or set {names.ENV_REDIS_URL}")
    stack.ensure_topics(settings.kafka, settings.partitions)
    os.environ[names.ENV_CONFIG] = str(path)

    import socket

    from streams import clickhouse, runtime
    from streams.referral_store import LEASE_TTL_MS, LeaseLost, acquire_lease
    from streams.sink import ClickHouseSink

    owner = f"{settings.app_id}@{socket.gethostname()}:{os.getpid()}"
    try:
        acquire_lease(settings.redis_url.get_secret_value(), owner, wait_s=LEASE_TTL_MS / 1000 + 5)
    except LeaseLost as e:
        raise WorkerError(str(e)) from e
    from streams.recovery import ensure_state

    epoch, rebuilt = ensure_state(settings.redis_url.get_secret_value(), settings.kafka, settings.app_id)
    if rebuilt:
        print(f"fenxiao: Redis had no state; replaying the input topics from the beginning (group {settings.app_id})")

    try:
        ch = clickhouse.connect(settings)
        clickhouse.migrate(ch)
    except clickhouse.ClickHouseError as e:
        raise WorkerError(str(e)) from e
    runtime.init(settings, program, ClickHouseSink(ch), owner, epoch)
    import faust

    from streams import agents, report_views, sink_agent, timers, views  # noqa: F401  (registers agents, timers, pages)
    from streams.app import app

    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
