"""The session stack is the real thing: a broker that stores and serves records, a Redis that keeps data."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams import names
from streams.ops import stack as stack_mod
from streams.ops.stack import RunningStack


async def test_kafka_round_trips_a_record(stack: RunningStack) -> None:
    """A produced record can be read back at the offset the broker acknowledged."""
    value = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(names.CLICKS, value, key=b"visitor-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(names.CLICKS, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"visitor-1", value)


async def test_topics_exist_with_partitions_and_bindings_is_compacted(stack: RunningStack) -> None:
    """Every topic of names.py is there with the fixture's partition count (order-steps: at least 12); bindings
    keeps the latest per user."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        wanted = [*names.INPUT_TOPICS, *names.OUTPUT_TOPICS, *names.INTERNAL_TOPICS]
        described = {t["topic"]: t for t in await admin.describe_topics(wanted)}
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, names.BINDINGS)])
    finally:
        await admin.close()
    expected = dict.fromkeys(wanted, stack.partitions)
    expected[names.ORDER_STEPS] = stack_mod.step_partitions(stack.partitions)
    assert {name: len(described[name]["partitions"]) for name in wanted} == expected
    assert expected[names.ORDER_STEPS] == 12  # the fixture's 4 would leave one of 3 credit workers half the orders
    (resource,) = resp.resources
    configs = {entry[0]: entry[1] for entry in resource[4]}
    assert configs["cleanup.policy"] == "compact"


def test_ensure_topics_is_idempotent(stack: RunningStack) -> None:
    """A second run creates nothing and does not fail on the existing topics."""
    assert stack_mod.ensure_topics(stack.bootstrap, stack.partitions) == []


def test_redis_answers_and_is_append_only(stack: RunningStack) -> None:
    """Redis keeps a written key, and the key reaches the append-only file (fsync every second)."""
    key = f"fx:test:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert client.ping()
        client.set(key, "1")
        assert client.get(key) == b"1"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()
    aof_dir = stack.cfg.redis_dir / "appendonlydir"
    deadline = time.monotonic() + 5
    while not any(key.encode() in f.read_bytes() for f in aof_dir.glob("*.aof")):
        assert time.monotonic() < deadline, f"{key} never reached {aof_dir}"
        time.sleep(0.2)


def test_status_reports_both_answering(stack: RunningStack) -> None:
    """status() sees the processes of the pid files and gets answers from both services."""
    rows = {r.service: r for r in stack_mod.status(stack.cfg)}
    assert set(rows) == {stack_mod.KAFKA, stack_mod.REDIS}
    for service, row in rows.items():
        assert row.running and row.answering, row
        assert row.pid == int(stack.cfg.pid_file(service).read_text().split()[0])


def test_up_is_idempotent(stack: RunningStack) -> None:
    """up() on a running stack starts nothing and keeps the same processes."""
    before = {s: stack_mod.running_pid(stack.cfg, s) for s in (stack_mod.KAFKA, stack_mod.REDIS)}
    outcome = stack_mod.up(stack.cfg, stack.partitions)
    assert outcome[stack_mod.KAFKA] == f"already running (pid {before[stack_mod.KAFKA]})"
    assert outcome[stack_mod.REDIS] == f"already running (pid {before[stack_mod.REDIS]})"
    assert outcome["topics"] == "all present"


def test_redis_data_survives_a_restart(tmp_path: Path) -> None:
    """A separate redis-server keeps a key across stop and start (the durability the engine relies on)."""
    (port,) = stack_mod.pick_free_ports(1)
    cfg = stack_mod.StackConfig(var_dir=tmp_path, redis_port=port, stop_with_parent=True)
    try:
        first = stack_mod.start_redis(cfg)
        _wait_redis(cfg.redis_url)
        client = redis.Redis.from_url(cfg.redis_url)
        client.set("fx:test:durable", "kept")
        client.close()
        assert stack_mod.stop(cfg)[stack_mod.REDIS] == f"stopped (pid {first})"
        assert stack_mod.running_pid(cfg, stack_mod.REDIS) is None

        assert stack_mod.start_redis(cfg) != first
        _wait_redis(cfg.redis_url)
        client = redis.Redis.from_url(cfg.redis_url)
        assert client.get("fx:test:durable") == b"kept"
        client.close()
    finally:
        stack_mod.stop(cfg)


def _wait_redis(url: str) -> None:
    """Wait until a just-started Redis answers PING."""
    deadline = time.monotonic() + 10
    while not stack_mod.redis_answers(url, timeout=0.5):
        assert time.monotonic() < deadline, f"redis at {url} did not answer"
        time.sleep(0.05)
