"""The worker's long-lived objects, created once at start and shared by agents, timers and views."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from streams.config import Program
from streams.ledger import Binding, Entry, LimitedClick
from streams.projections import default_projections
from streams.referral_store import RedisStore
from streams.sequencer import DeadLetter, Sequencer
from streams.settings import Settings
from streams.sink import ClickHouseSink


def _json(value: dict[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class FaustOutputs:
    """Sends a batch's records through the app's producer and waits for every broker ack."""

    async def send_all(
        self,
        entries: Sequence[Entry],
        bindings: Sequence[Binding],
        dead: Sequence[DeadLetter],
        limited: Sequence[LimitedClick] = (),
    ) -> None:
        """Produce commissions by beneficiary, bindings by user, dead letters as input, limited clicks by visitor."""
        from streams.topics import bindings_topic, clicks_limited_topic, commissions_topic, dead_letters_topic

        futs = []
        for e in entries:
            futs.append(
                await commissions_topic.send(key=e.beneficiary_id.encode(), value=_json(e.as_record()), force=True)
            )
        for b in bindings:
            futs.append(await bindings_topic.send(key=b.user_id.encode(), value=_json(b.as_record()), force=True))
        for d in dead:
            futs.append(await dead_letters_topic.send(key=d.key, value=_json(d.as_record()), force=True))
        for c in limited:
            futs.append(
                await clicks_limited_topic.send(key=c.visitor_id.encode(), value=_json(c.as_record()), force=True)
            )
        if futs:
            await asyncio.gather(*futs)


@dataclass
class Runtime:
    """Everything a running worker shares."""

    settings: Settings
    program: Program
    store: RedisStore
    sequencer: Sequencer
    sink: ClickHouseSink
    sink_written: dict[str, int] = field(default_factory=dict)


_runtime: Runtime | None = None


def init(settings: Settings, program: Program, sink: ClickHouseSink, owner: str, epoch: str) -> Runtime:
    """Create the shared objects; called once by `fenxiao worker` before the app starts."""
    global _runtime
    store = RedisStore(
        settings.redis_url.get_secret_value(),
        program.attribution_window_ms,
        owner,
        epoch,
        click_window_ms=program.clicks.window_ms,
    )
    _runtime = Runtime(
        settings,
        program,
        store,
        Sequencer(
            program,
            store,
            FaustOutputs(),
            batch_size=settings.batch_size,
            crash_at=settings.crash_at,
            projections=default_projections(),
        ),
        sink,
    )
    return _runtime


def get() -> Runtime:
    """The running worker's objects."""
    if _runtime is None:
        raise RuntimeError("the worker runtime is not initialised (start it with `fenxiao worker`)")
    return _runtime
