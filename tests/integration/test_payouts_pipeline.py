"""fenxiao.withdrawal-states through the real sink process into ClickHouse, read back through /reports/payouts.

The records are the hand-made transitions of test_money_out_clickhouse (the worker's output format of common.md),
produced onto the topic before the worker starts; the report the worker serves must equal the hand-computed table.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import names
from streams.sinks import reports
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_money_out_clickhouse import EXPECTED, STATES

pytestmark = pytest.mark.integration


async def fresh_topic(bootstrap: str, name: str) -> None:
    """The topic empty: deleted if a previous test left records on it, then created (the stack may not make it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name in await admin.list_topics():
            await admin.delete_topics([name])
            while name in await admin.list_topics():
                await asyncio.sleep(0.2)
        for _ in range(50):
            try:
                await admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])
                return
            except Exception:  # the broker may still be finishing the deletion
                await asyncio.sleep(0.3)
        raise AssertionError(f"could not create {name}")
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def test_withdrawal_states_reach_the_payouts_report_served_by_the_worker(pipe: Env) -> None:
    asyncio.run(fresh_topic(pipe.stack.bootstrap, names.WITHDRAWAL_STATES))
    records = [{"topic": names.WITHDRAWAL_STATES, "key": s["distributor_id"], "value": s} for s in STATES]
    pipe.produce(records + records[:4])  # a redelivered tail: the sink dedupes on the record's id
    w = pipe.worker("basic")
    try:
        scenario.wait_sink_quiet(pipe.web_port, quiet_s=3.0, timeout=90)
        served = reports.Report.from_json(scenario.http_json(pipe.web_port, "/reports/payouts", timeout=60))
        mine = reports.Report.from_json(
            scenario.http_json(pipe.web_port, "/reports/payouts?distributor=u2", timeout=60)
        )
    finally:
        assert w.stop() == 0, w.log_tail()
    assert [tuple(r) for r in served.rows] == EXPECTED, w.log_tail()
    # u2: wB (bank, 5000, rejected on day 1) and wE (no channel, 300, still open on day 2).
    assert [tuple(r) for r in mine.rows] == [
        ("2026-11-11", "bank", 1, 5000, 0, 0, 0, 0, 1, 5000, 0, 0),
        ("2026-11-12", "(none)", 1, 300, 0, 0, 0, 0, 0, 0, 0, 0),
        ("all days", "all channels", 2, 5300, 0, 0, 0, 0, 1, 5000, 0, 0),
    ]
    assert mine.notes[-1] == "open now: 1 withdrawal(s) of ¥3.00 requested or approved, not yet settled"
