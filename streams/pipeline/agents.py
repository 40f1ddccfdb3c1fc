"""The app's moving parts: the one task that reads, applies and writes the input topics in sequence.

faust stays the framework (app, tasks, timers, web views), but its consumer is not started: the input topics
are read by streams.pipeline.consume's aiokafka consumer, which hands over whole fetched batches and keeps a paused
partition's position (see docs/decisions.md, "The hot path").
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from streams.pipeline import runtime
from streams.pipeline.app import app
from streams.pipeline.consume import InputReader

log = logging.getLogger(__name__)

# The worker allocates a few objects per record and holds millions for its state: with Python's default
# thresholds the collector walks the whole state every few thousand allocations (a third of the hot path's CPU
# in the hot-path benchmark). Collect young objects rarely; what the state load created is frozen out of it.
GC_THRESHOLDS = (50_000, 50, 1_000)


@app.task  # type: ignore[untyped-decorator]
async def apply_in_sequence() -> None:
    """The one loop that applies aligned events in order (see streams.pipeline.sequencer)."""
    rt = runtime.get()
    seq = rt.sequencer
    reader = InputReader(rt.settings.kafka, rt.settings.app_id, f"{rt.settings.app_id}-inputs")
    await rt.outputs.start()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        await seq.attach(reader)
        gc.collect()
        gc.freeze()  # the loaded state lives as long as the worker: never scan it again
        await reader.start()
        await seq.run()
    except Exception:
        if not app.should_stop:
            log.exception("the apply loop failed; the worker stops (a restart replays what was not written)")
            raise
        # Stopping mid-batch (e.g. the producer already stopped): nothing unwritten was committed, so the
        # next start replays the batch; an ordinary stop must not look like a crash.
        log.info("stopped during a batch; it will be applied again on the next start")
    finally:
        await reader.stop()
        await rt.outputs.stop()


@app.on_before_shutdown.connect  # type: ignore[arg-type]
async def _stop_applying(sender: Any, **kwargs: Any) -> None:
    """Finish the batch in flight and commit its offsets before the app's services stop."""
    seq = runtime.get().sequencer
    seq.stop()
    await seq.drain()
