"""The sequencer's loop: a batch's write runs while the next batch is applied, and still lands in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from streams.engine.ledger import Outcome
from streams.pipeline import sequencer as seqmod
from streams.pipeline.sequencer import YIELD_EVERY, Sequencer
from tests.unit.test_ledger import program


class Log:
    """What happened, in order, across the apply loop and the write task."""

    def __init__(self) -> None:
        self.events: list[str] = []


class SlowOutputs:
    """A producer whose send takes a few round trips of the event loop, as a real network one does."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def send_records(self, records: Sequence[Any], placed: Sequence[Any] = ()) -> None:
        self.log.events.append("send")
        for _ in range(3):
            await asyncio.sleep(0)
        self.log.events.append("acked")

    async def partition_count(self, topic: str) -> int:
        return 1


class Store:
    """Stages a batch as its number; writes log which batch landed."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.staged = 0

    def stage(self, state: Any, position: Any) -> int:
        self.staged += 1
        return self.staged

    async def write(self, staged: int) -> None:
        self.log.events.append(f"redis{staged}")
        await asyncio.sleep(0)


def _batch(n: int, start: int) -> list[tuple[tuple[int, int, str], Any]]:
    return [
        ((1_000 + i, 1, f"e{i}"), SimpleNamespace(event=f"e{i}", topic="clicks", partition=0, offset=i, key=None))
        for i in range(start, start + n)
    ]


def _run(batches: list[list[Any]], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log = Log()

    class Ledger:
        def __init__(self, *_: Any) -> None:
            pass

        def step(self, event: str, key: Any) -> Outcome:
            log.events.append(f"apply {event}")
            return Outcome()

        def settle_due(self, until: int) -> list[Any]:
            return []

    monkeypatch.setattr(seqmod, "Ledger", Ledger)
    seq = Sequencer(program(), store=Store(log), outputs=SlowOutputs(log), batch_size=10_000)  # type: ignore[arg-type]
    todo = list(batches)
    monkeypatch.setattr(seq.aligner, "release", lambda n: todo.pop(0) if todo else [])

    async def scenario() -> None:
        for _ in batches:
            await seq.step()
        await seq.drain()

    asyncio.run(scenario())
    return log.events


def test_the_previous_batch_is_produced_and_committed_while_the_next_is_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 4 * YIELD_EVERY
    events = _run([_batch(n, 0), _batch(n, n)], monkeypatch)
    last_apply = events.index(f"apply e{2 * n - 1}")
    assert events.index("acked") < last_apply  # batch 1 was acked before batch 2's apply ended
    assert events.index("redis1") < last_apply
    assert events.index(f"apply e{n - 1}") < events.index("send")  # but only once batch 1 was applied whole


def test_writes_stay_in_batch_order_and_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 2 * YIELD_EVERY
    events = _run([_batch(n, i * n) for i in range(4)], monkeypatch)
    writes = [e for e in events if not e.startswith("apply")]
    assert writes == [w for b in range(1, 5) for w in ("send", "acked", f"redis{b}")]
    assert [e for e in events if e.startswith("apply")] == [f"apply e{i}" for i in range(4 * n)]


def test_a_small_batch_does_not_yield_in_its_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    n = YIELD_EVERY - 1
    events = _run([_batch(n, 0), _batch(n, n)], monkeypatch)
    applies = [i for i, e in enumerate(events) if e == f"apply e{n}" or e == f"apply e{2 * n - 1}"]
    assert applies[1] - applies[0] == n - 1  # batch 2's applies ran back to back
