"""The worker's long-lived objects, created once at start and shared by agents, timers and views."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass

from streams import names
from streams.config import Program
from streams.ledger import Binding, Entry, LimitedClick
from streams.referral_store import RedisStore, open_store
from streams.sequencer import DeadLetter, Sequencer
from streams.settings import Settings


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
        """Produce commissions by beneficiary, bindings by user, dead letters as input, limited clicks by visitor.

        Straight to faust's producer (the partitioner is the same): faust's Topic.send wraps every record
        in channel and future objects that cost more than the record itself.
        """
        from streams.app import app

        records: list[tuple[str, bytes | None, dict[str, object]]] = []
        records.extend((names.COMMISSIONS, e.beneficiary_id.encode(), e.as_record()) for e in entries)
        records.extend((names.BINDINGS, b.user_id.encode(), b.as_record()) for b in bindings)
        records.extend((names.DEAD_LETTERS, d.key, d.as_record()) for d in dead)
        records.extend((names.CLICKS_LIMITED, c.visitor_id.encode(), c.as_record()) for c in limited)
        send = app.producer.send
        futs = [await send(topic, key, _json(value), None, None, None) for topic, key, value in records]
        if futs:
            await asyncio.gather(*futs)


@dataclass
class Runtime:
    """Everything a running worker shares."""

    settings: Settings
    program: Program
    store: RedisStore
    sequencer: Sequencer


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
        ),
    )
    return _runtime


def get() -> Runtime:
    """The running worker's objects."""
    if _runtime is None:
        raise RuntimeError("the worker runtime is not initialised (start it with `fenxiao worker`)")
    return _runtime
