"""Timers: wake the sequencer so idle partitions and due settlements are handled without new events."""

from __future__ import annotations

from streams import runtime
from streams.app import app


@app.timer(interval=0.5)  # type: ignore[untyped-decorator]
async def settle_due_orders() -> None:
    """Settlement happens when the wall clock passes the freeze, even if no event arrives."""
    runtime.get().sequencer.wakeup.set()
