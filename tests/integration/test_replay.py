"""Replay against the real broker: every record arrives byte-exact and keyed, pacing holds, bad topics fail fast."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import names
from streams.ops import flashsale, replay


@pytest.fixture
async def private_topics(stack: Any) -> AsyncIterator[dict[str, str]]:
    """Fresh topics standing in for the four input topics, so this test never feeds another test's worker."""
    run = uuid.uuid4().hex[:8]
    mapping = {t: f"replay-test-{run}-{t.split('.')[-1]}" for t in names.INPUT_TOPICS}
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 4, 1) for t in mapping.values()])
        yield mapping
        await admin.delete_topics(list(mapping.values()))
    finally:
        await admin.close()


async def read_back(bootstrap: str, topics: list[str], expect: int) -> list[tuple[str, int, bytes | None, bytes]]:
    """(topic, partition, key, value) of every record in the topics, once `expect` have arrived."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[tuple[str, int, bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                got.extend((tp.topic, tp.partition, m.key, m.value) for m in msgs if m.value is not None)
    finally:
        await consumer.stop()
    return got


async def test_a_generated_sale_arrives_byte_exact_keyed_and_in_order_per_key(
    stack: Any, private_topics: dict[str, str]
) -> None:
    sale = list(flashsale.generate(60, 400, 3, datetime(2026, 11, 11, tzinfo=UTC), 600))
    sale.append({"topic": names.ORDERS, "key": "u3-1", "value": '{"event_id": "broken", "amount_cents": '})
    records = [{**r, "topic": private_topics[r["topic"]]} for r in sale]

    sent = await replay.produce(stack.bootstrap, records, progress=False)

    assert sent == len(records)
    got = await read_back(stack.bootstrap, list(private_topics.values()), len(records))
    assert len(got) == len(records)
    expected = sorted((r["topic"], r["key"].encode(), replay.value_bytes(r["value"])) for r in records)
    assert sorted((t, k or b"", v) for t, _, k, v in got) == expected
    assert b'{"event_id": "broken", "amount_cents": ' in {v for *_, v in got}
    by_key: dict[tuple[str, bytes | None], list[bytes]] = {}
    partitions_of_key: dict[tuple[str, bytes | None], set[int]] = {}
    for t, p, k, v in got:
        by_key.setdefault((t, k), []).append(v)
        partitions_of_key.setdefault((t, k), set()).add(p)
    assert all(len(ps) == 1 for ps in partitions_of_key.values())  # one key, one partition
    in_file_order: dict[tuple[str, bytes | None], list[bytes]] = {}
    for r in records:
        in_file_order.setdefault((r["topic"], r["key"].encode()), []).append(replay.value_bytes(r["value"]))
    assert all(by_key[key] == values for key, values in in_file_order.items())  # a buyer's order events keep order


async def test_rate_and_realtime_speed_pace_the_send(stack: Any, private_topics: dict[str, str]) -> None:
    topic = private_topics[names.CLICKS]

    def click(i: int, second: float) -> dict[str, Any]:
        ts = datetime.fromtimestamp(1_794_355_200 + second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return {"topic": topic, "key": f"v{i}", "value": {"event_id": f"c{i}", "ts": ts, "visitor_id": f"v{i}"}}

    t0 = time.monotonic()
    await replay.produce(stack.bootstrap, [click(i, 0) for i in range(300)], records_per_s=500, progress=False)
    assert time.monotonic() - t0 >= 0.5  # 300 records at 500/s: at least 0.6 s less the first send

    t0 = time.monotonic()
    await replay.produce(stack.bootstrap, [click(i, i * 0.2) for i in range(11)], realtime_speed=4, progress=False)
    assert 0.45 <= time.monotonic() - t0 < 10  # 2 s of event time at 4x


async def test_an_unknown_topic_fails_at_once_with_its_name(stack: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(replay.ReplayError, match=r"fenxiao\.nope"):
        await replay.produce(stack.bootstrap, [{"topic": "fenxiao.nope", "key": "k", "value": {}}], progress=False)
    assert time.monotonic() - t0 < 15


async def test_an_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(replay.BrokerUnreachable, match=r"127\.0\.0\.1:1"):
        await asyncio.wait_for(replay.produce("127.0.0.1:1", [], progress=False), 30)
