"""The worker's long-lived objects, created once at start and shared by agents, timers and views."""

from __future__ import annotations

from dataclasses import dataclass

from streams.engine.config import Program
from streams.pipeline.outputs import KafkaOutputs
from streams.pipeline.sequencer import Sequencer
from streams.settings import Settings
from streams.state.referral_store import RedisStore
from streams.state.stores import open_store


@dataclass
class Runtime:
    """Everything a running worker shares."""

    settings: Settings
    program: Program
    store: RedisStore
    sequencer: Sequencer
    outputs: KafkaOutputs


_runtime: Runtime | None = None


def init(settings: Settings, program: Program, owner: str, epoch: str) -> Runtime:
    """Create the shared objects; called once by `fenxiao worker` before the app starts."""
    global _runtime
    store = open_store(
        settings.redis_url.get_secret_value(),
        program.attribution_window_ms,
        owner,
        epoch,
        click_window_ms=program.clicks.window_ms,
    )
    store.staged = settings.topology == "staged"
    outputs = KafkaOutputs(settings.kafka, f"{settings.app_id}-outputs", settings.compression_type)
    _runtime = Runtime(
        settings,
        program,
        store,
        Sequencer(
            program,
            store,
            outputs,
            batch_size=settings.batch_size,
            crash_at=settings.crash_at,
            staged=store.staged,
        ),
        outputs,
    )
    return _runtime


def get() -> Runtime:
    """The running worker's objects."""
    if _runtime is None:
        raise RuntimeError("the worker runtime is not initialised (start it with `fenxiao worker`)")
    return _runtime
