"""Timers: wake the sequencer so idle partitions and due settlements are handled without new events."""

from __future__ import annotations

from streams.pipeline import runtime
from streams.pipeline.app import app


@app.timer(interval=0.5)  # type: ignore[untyped-decorator]
async def settle_due_orders() -> None:
    """Settlement happens when the wall clock passes the freeze, even if no event arrives."""
    runtime.get().sequencer.wakeup.set()


@app.timer(interval=2.0)  # type: ignore[untyped-decorator]
async def keep_lease() -> None:
    """Hold the single-writer lease between batches; losing it stops the worker before it can move money."""
    await runtime.get().store.renew_lease()
