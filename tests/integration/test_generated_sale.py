"""A generated flash sale with a real freeze, through the pipeline, equals the reference in every cent.

The spec examples use freeze 0 (settle at completion) or ten years (never), so settlement by the clock
while refunds of the same orders are still in flight is only exercised here.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.engine import config, outcome, reference
from streams.ops import flashsale
from streams.ops.demo import program_toml
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_pipeline import assert_outcome

FREEZE_CONFIG = program_toml(freeze_seconds=30, grace_seconds=1)


@pytest.mark.parametrize("batch_size", ["40", "2000"])
def test_generated_sale_with_a_freeze_equals_the_reference(pipe: Env, batch_size: str) -> None:
    """Backlog of a 2-minute sale with a 30 s freeze; small batches leave refunds held behind the frontier."""
    records = list(flashsale.generate(400, 2500, 7, datetime(2026, 11, 11, tzinfo=UTC), 120))
    program = config.parse(FREEZE_CONFIG)
    ref = reference.run(records, program, now_ms=int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000))
    expected = outcome.summarize(ref.entries, ref.bindings, ref.dead_letters)
    assert expected["totals"]["settled"] > 0 and expected["totals"]["reversed"] < 0, "the sale must exercise both"
    cfg = pipe.tmp / "freeze.toml"
    cfg.write_text(FREEZE_CONFIG)
    pipe.produce(records)
    w = scenario.WorkerProcess(cfg, {**pipe.env, "FENXIAO_BATCH_SIZE": batch_size}, pipe.tmp / "worker.log").start()
    try:
        scenario.wait_http(pipe.web_port, "/health", 90, w)
        out, diff = pipe.outcome(expected, timeout=180)
        assert_outcome(pipe, expected, out, diff, w)
    finally:
        w.stop()
