"""Producers and consumers that are not ours (issue #12): Kafka's own Java tools with every codec, a transactional
producer with aborted transactions, librdkafka's partitioner, headers and null keys, a batch no client can decode.

The Java tools are `org.apache.kafka:kafka-tools` at the broker's version, fetched once with Maven
(streams/ops/stack.py, `ensure_kafka_tools_jars`). Each test asserts the spec's expected.json, never the code's output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from aiokafka.record.util import calc_crc32c_py

from streams import names
from streams.ops import stack as stack_mod
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_pipeline import assert_outcome

CODECS = ["gzip", "snappy", "lz4", "zstd"]
SEP = "\t"
# Every spec example through the Java console producer: basic on each codec, the bigger two on one codec each.
JAVA_CASES = [("basic", c) for c in CODECS] + [("two-level", "snappy"), ("messy", "zstd")]
# What the worker's outputs are read back from: the topics a consumer of ours (an app, BI) subscribes to.
READ_BACK = (names.COMMISSIONS, names.BINDINGS, names.DEAD_LETTERS)


# ---------------------------------------------------------------- helpers: records and the Java tools


def _compact(value: Any) -> bytes:
    """A record value as the example's producer sends it: compact JSON (one line, as the console tools need)."""
    return scenario._bytes(value)


def by_topic(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The example's records per topic, in file order (each console producer run sends one topic)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["topic"], []).append(r)
    return out


def java_produce(bootstrap: str, records: list[dict[str, Any]], codec: str) -> None:
    """Send the records with kafka-console-producer (murmur2 partitioner, idempotent, acks=all) and `codec`."""
    for topic, recs in by_topic(records).items():
        lines = b"".join(scenario._bytes(r["key"]) + SEP.encode() + _compact(r["value"]) + b"\n" for r in recs)
        assert all(b"\n" not in _compact(r["value"]) and SEP.encode() not in scenario._bytes(r["key"]) for r in recs)
        args = ["--bootstrap-server", bootstrap, "--topic", topic]
        args += ["--property", "parse.key=true", "--property", f"key.separator={SEP}"]
        # The tool sets compression.type from its own --compression-codec (default none) over --producer-property.
        args += ["--compression-codec", codec, "--producer-property", "acks=all"]
        args += ["--producer-property", "enable.idempotence=true"]
        res = stack_mod.kafka_tool(stack_mod.CONSOLE_PRODUCER, args, stdin=lines, timeout=120)
        assert res.returncode == 0, f"console producer failed on {topic}: {res.stderr.decode(errors='replace')}"


def java_consume(bootstrap: str, topic: str, count: int) -> list[tuple[str | None, Any]]:
    """Read `count` records of `topic` with kafka-console-consumer (read_committed) as (key, decoded JSON value)."""
    if count == 0:
        return []
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--from-beginning", "--max-messages", str(count)]
    args += ["--timeout-ms", "30000", "--isolation-level", "read_committed"]
    args += ["--property", "print.key=true", "--property", f"key.separator={SEP}"]
    args += ["--property", "null.literal=<null>"]
    res = stack_mod.kafka_tool(stack_mod.CONSOLE_CONSUMER, args, timeout=120)
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 0, f"console consumer failed on {topic}: {err}"
    out: list[tuple[str | None, Any]] = []
    for line in res.stdout.decode("utf-8").splitlines():
        key, _, value = line.partition(SEP)
        out.append((None if key == "<null>" else key, json.loads(value)))
    assert len(out) == count, f"the Java consumer read {len(out)} of {count} records of {topic}: {err[-1000:]}"
    return out


async def _python_read(bootstrap: str, topic: str) -> list[tuple[str | None, Any]]:
    """Every record of `topic` through aiokafka (the client the worker uses), as (key, decoded JSON value)."""
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await c.start()
    out: list[tuple[str | None, Any]] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or set())]
        if not tps:
            md = await c._client.fetch_all_metadata()
            tps = [TopicPartition(topic, p) for p in sorted(md.partitions_for_topic(topic) or set())]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, f"aiokafka did not reach the end of {topic}"
            for msgs in (await c.getmany(timeout_ms=200)).values():
                out += [(None if m.key is None else m.key.decode(), json.loads(m.value)) for m in msgs]
    finally:
        await c.stop()
    return out


def python_read(bootstrap: str, topic: str) -> list[tuple[str | None, Any]]:
    """Synchronous `_python_read`."""
    return asyncio.run(_python_read(bootstrap, topic))


def rdkafka_read(bootstrap: str, topic: str, count: int) -> list[tuple[str | None, Any]]:
    """`count` records of `topic` through librdkafka (confluent-kafka), as a PHP, Go or Node consumer reads them."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fx-rdkafka-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    out: list[tuple[str | None, Any]] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            for m in c.consume(num_messages=500, timeout=0.5):
                assert m.error() is None, f"librdkafka could not read {topic}: {m.error()}"
                key = m.key()
                out.append((None if key is None else key.decode(), json.loads(m.value())))
    finally:
        c.close()
    assert len(out) == count, f"librdkafka read {len(out)} of {count} records of {topic}"
    return out


def _canon(records: Iterable[tuple[str | None, Any]]) -> Counter[str]:
    """Records as a multiset, independent of partition interleaving."""
    return Counter(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)


def assert_java_reads_the_outputs(pipe: Env, with_rdkafka: bool = False) -> None:
    """Kafka's own console consumer (and librdkafka) reads every output record, key and value, as aiokafka does."""
    for topic in READ_BACK:
        ours = python_read(pipe.stack.bootstrap, topic)
        if topic == names.COMMISSIONS:
            assert ours, "the worker wrote no commissions: nothing to read back"
        theirs = java_consume(pipe.stack.bootstrap, topic, len(ours))
        assert _canon(theirs) == _canon(ours), f"the Java consumer reads {topic} differently"
        if with_rdkafka:
            assert _canon(rdkafka_read(pipe.stack.bootstrap, topic, len(ours))) == _canon(ours), f"librdkafka: {topic}"


def batch_codecs(pipe: Env, topic: str) -> Counter[str]:
    """The codec of every data batch of `topic` on disk, from Kafka's own DumpLogSegments (broker jars)."""
    libs = stack_mod.ensure_kafka_jars(pipe.stack.cfg)
    data = pipe.stack.cfg.kafka_dir / "data"
    files = sorted(str(f) for p in range(pipe.stack.partitions) for f in (data / f"{topic}-{p}").glob("*.log"))
    assert files, f"no segment files of {topic} under {data}"
    cmd = [stack_mod.check_java(), "-Xmx256m", "-cp", str(libs / "*"), "kafka.tools.DumpLogSegments"]
    res = subprocess.run([*cmd, "--files", ",".join(files)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"DumpLogSegments failed: {res.stderr[-2000:]}"
    codecs: Counter[str] = Counter()
    for line in res.stdout.splitlines():
        if line.startswith("baseOffset:") and "isControl: false" in line:
            m = re.search(r"compresscodec: (\w+)", line)
            assert m, f"no codec in {line!r}"
            codecs[m.group(1).lower()] += 1
    return codecs


# ---------------------------------------------------------------- Kafka's own Java tools


def test_the_console_tools_are_the_brokers_version() -> None:
    """The fetched kafka-tools run and are the pinned version, with the main classes the helpers name."""
    for main in (stack_mod.CONSOLE_PRODUCER, stack_mod.CONSOLE_CONSUMER):
        res = stack_mod.kafka_tool(main, ["--version"], timeout=60)
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        assert res.stdout.decode().split()[0] == stack_mod.kafka_version()


@pytest.mark.parametrize(("example", "codec"), JAVA_CASES, ids=[f"{e}-{c}" for e, c in JAVA_CASES])
def test_java_console_producer_with_each_codec(pipe: Env, example: str, codec: str) -> None:
    """A Java service's records compressed with `codec`: expected.json, and the outputs read back by Java.

    Produced before the worker starts: one console producer per topic runs seconds apart, longer than the
    tests' 1 s ordering grace, so live it would be a topic arriving late, which the spec lets the worker apply late.
    """
    java_produce(pipe.stack.bootstrap, scenario.load_records(example), codec)
    assert batch_codecs(pipe, names.ORDERS).keys() == {codec}, "the console producer did not use the codec"
    w = pipe.worker(example)
    try:
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert not diff, "outputs differ from expected.json:\n" + "\n".join(diff) + "\n--- worker log:\n" + w.log_tail()
        assert_java_reads_the_outputs(pipe)
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()


@pytest.mark.parametrize("compression", [*CODECS, "none"])
def test_outputs_use_FENXIAO_COMPRESSION_and_java_reads_them(pipe: Env, compression: str) -> None:
    """Every batch the worker writes uses FENXIAO_COMPRESSION; Kafka's console consumer and librdkafka decode it."""
    example = "basic"
    pipe.produce(scenario.load_records(example))
    w = pipe.worker(example, **{names.ENV_COMPRESSION: compression})
    try:
        _, diff = pipe.outcome(scenario.load_expected(example))
        assert not diff, "outputs differ from expected.json:\n" + "\n".join(diff) + "\n--- worker log:\n" + w.log_tail()
        for topic in (names.COMMISSIONS, names.BINDINGS):
            codecs = batch_codecs(pipe, topic)
            assert codecs.keys() == {compression}, f"{topic} batches by codec: {dict(codecs)}, wanted {compression}"
        assert_java_reads_the_outputs(pipe, with_rdkafka=True)
    finally:
        w.stop()


# ---------------------------------------------------------------- transactions


def _ts_plus_ms(ts: str, ms: int) -> str:
    """An RFC 3339 UTC ts `ms` later, in the contract's format."""
    from datetime import datetime, timedelta

    t = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ") + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def poison(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    """Records that change the outcome if applied: paid copies under new order ids, full refunds, tier upgrades."""
    bad: list[dict[str, Any]] = []
    for r in records:
        v = r["value"]
        if not (
            isinstance(v.get("event_id"), str)
            and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(v.get("ts")))
        ):
            continue
        if r["topic"] == names.ORDERS and v.get("type") == "paid" and isinstance(v.get("order_id"), str):
            copy = {**v, "event_id": f"aborted-{tag}-p-{v['event_id']}", "order_id": f"aborted-{tag}-{v['order_id']}"}
            bad.append({**r, "value": copy})
            refund = {**v, "event_id": f"aborted-{tag}-r-{v['event_id']}", "type": "refunded"}
            bad.append({**r, "value": {**refund, "ts": _ts_plus_ms(v["ts"], 1)}})
        elif r["topic"] == names.SIGNUPS and isinstance(v.get("user_id"), str):
            tier = {
                "event_id": f"aborted-{tag}-t-{v['event_id']}",
                "ts": v["ts"],
                "user_id": v["user_id"],
                "tier": "gold",
            }
            bad.append({"topic": names.TIERS, "key": v["user_id"], "value": tier})
    assert len(bad) > 10, "the example has too little to poison"
    return bad


async def produce_transactions(bootstrap: str, records: list[dict[str, Any]]) -> None:
    """Committed chunks with aborted transactions between them and at the end (markers as the last offsets)."""
    quarter = max(1, len(records) // 4)
    chunks = [records[i : i + quarter] for i in range(0, len(records), quarter)]
    plan: list[tuple[str, list[dict[str, Any]]]] = []
    for i, chunk in enumerate(chunks):
        plan.append(("commit", chunk))
        if i == 1:
            plan.append(("abort", poison(records, "mid")))
    plan.append(("abort", poison(records, "end")))
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"shop-orders-{os.getpid()}", acks="all")
    await p.start()
    try:
        for what, recs in plan:
            await p.begin_transaction()
            futs = [await p.send(r["topic"], key=scenario._bytes(r["key"]), value=_compact(r["value"])) for r in recs]
            await asyncio.gather(*futs)
            if what == "commit":
                await p.commit_transaction()
            else:
                await p.abort_transaction()
    finally:
        await p.stop()


def wait_nothing_held(pipe: Env, w: scenario.WorkerProcess, timeout: float = 30.0) -> dict[str, Any]:
    """/status once the worker holds no event in any partition (transaction markers must not keep one back)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = scenario.http_json(pipe.web_port, "/status")
        stuck = [p for p in status["partitions"] if p["held"]]
        if status["held"] == 0 and not stuck:
            return status
        assert time.monotonic() < deadline, f"held {status['held']}, partitions {stuck}\n{w.log_tail()}"
        time.sleep(0.5)


def clickhouse_orders(pipe: Env) -> tuple[int, int]:
    """(aborted, all) order rows the sink wrote to ClickHouse, read in a process of its own (one chDB owner)."""
    code = (
        "from streams.sinks import clickhouse as c; from streams.settings import get_settings;"
        "ch = c.ChdbBackend(get_settings().chdb_path);"
        "print(*ch.query(\"SELECT countIf(startsWith(event_id, 'aborted-')), count() FROM \""
        " + c.qualified_table(c.DATABASE, 'orders'))[0])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **pipe.env}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    aborted, total = r.stdout.split()
    return int(aborted), int(total)


@pytest.mark.parametrize("mode", ["live", "backlog"])
def test_transactional_producer_with_aborted_transactions(pipe: Env, mode: str) -> None:
    """Aborted records never count, markers never hold a partition: expected.json, and /status holds nothing."""
    example = "messy"
    records = scenario.load_records(example)
    if mode == "backlog":
        asyncio.run(produce_transactions(pipe.stack.bootstrap, records))
        w = pipe.worker(example, FENXIAO_BATCH_SIZE="97")
    else:
        w = pipe.worker(example)
        asyncio.run(produce_transactions(pipe.stack.bootstrap, records))
    try:
        out, diff = pipe.outcome(scenario.load_expected(example))
        if diff:
            status = scenario.http_json(pipe.web_port, "/status")
            stuck = [(p["partition"], p["held"], p["lag"]) for p in status["partitions"] if p["held"] or p["lag"]]
            diff = [f"/status held {status['held']}, (partition, held, lag) {stuck}", *diff]
        assert not diff, "outputs differ from expected.json:\n" + "\n".join(diff) + "\n--- worker log:\n" + w.log_tail()
        wait_nothing_held(pipe, w)
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()
    aborted, total = clickhouse_orders(pipe)
    assert total > 0, "the sink wrote no orders at all"
    assert aborted == 0, f"the sink wrote {aborted} aborted order events into ClickHouse"


# ---------------------------------------------------------------- librdkafka, headers, null keys


def test_librdkafka_producer_with_its_default_partitioner(pipe: Env) -> None:
    """confluent-kafka's defaults (crc32 consistent_random, not murmur2) place keys elsewhere: still exact."""
    from confluent_kafka import Producer

    example = "two-level"
    records = scenario.load_records(example)
    placed: list[tuple[bytes, int]] = []
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            placed.append((msg.key(), msg.partition()))

    w = pipe.worker(example)
    try:
        p = Producer({"bootstrap.servers": pipe.stack.bootstrap})
        for r in records:
            p.produce(r["topic"], key=scenario._bytes(r["key"]), value=_compact(r["value"]), on_delivery=report)
            p.poll(0)
        assert p.flush(60) == 0, "librdkafka did not deliver everything"
        assert not errors, errors
        java_way = sum(1 for key, part in placed if (murmur2(key) & 0x7FFFFFFF) % pipe.stack.partitions != part)
        assert java_way > len(placed) // 2, "librdkafka placed the keys as murmur2 would: the test proves nothing"
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()


async def produce_with_headers_and_null_keys(bootstrap: str, records: list[dict[str, Any]]) -> None:
    """Every record with headers a tracing or CRM producer adds; every record but the tiers without a key."""
    headers = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("content-type", b"application/json; charset=utf-8"),
        ("x-source", "订单服务".encode()),
        ("x-binary", b"\xff\x00\xfe"),
        ("x-empty", None),
        ("traceparent", b"duplicate header names are allowed"),
    ]
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    try:
        futs = []
        for r in records:
            key = scenario._bytes(r["key"]) if r["topic"] == names.TIERS else None
            futs.append(await p.send(r["topic"], key=key, value=_compact(r["value"]), headers=headers))
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def test_headers_and_null_keys(pipe: Env) -> None:
    """Headers are ignored and a null key is no error (the key only places the record): expected.json exactly."""
    example = "messy"
    w = pipe.worker(example)
    try:
        asyncio.run(produce_with_headers_and_null_keys(pipe.stack.bootstrap, scenario.load_records(example)))
        out, diff = pipe.outcome(scenario.load_expected(example))
        assert out.dead_letters, "messy has refused events: their dead letters must be written too"
        dead = python_read(pipe.stack.bootstrap, names.DEAD_LETTERS)
        assert {k for k, v in dead if v["topic"] != names.TIERS} == {None}, "a dead letter is keyed as its input"
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()
    wanted = sum(1 for r in scenario.load_records(example) if r["topic"] == names.ORDERS)
    assert 0 < clickhouse_orders(pipe)[1] <= wanted, "the sink must store the keyless orders too (dedupe by event_id)"


# ---------------------------------------------------------------- a batch no client can decode


def _batches(segment: bytes) -> Iterable[tuple[int, int, int]]:
    """(file position, base offset, total size) of every record batch (v2) in a segment file."""
    pos = 0
    while pos + 12 <= len(segment):
        base, length = struct.unpack_from(">qi", segment, pos)
        if length <= 0:
            return
        yield pos, base, 12 + length
        pos += 12 + length


def corrupt_batch(partition_dir: Path, base_offset: int, how: str) -> None:
    """Rewrite the batch at `base_offset` in place on the broker's disk: garbage payload, unknown codec, bad CRC."""
    for seg in sorted(partition_dir.glob("*.log")):
        data = bytearray(seg.read_bytes())
        for pos, base, size in _batches(bytes(data)):
            if base != base_offset:
                continue
            attrs_at, records_at = pos + 21, pos + 61
            if how == "garbage-zstd":
                assert data[attrs_at + 1] & 0x07 == 4, "the batch to corrupt is not zstd"
                payload = records_at + 4 + 8  # past the zstd frame magic and header: the compressed blocks
                data[payload : pos + size] = bytes(0xA5 for _ in range(pos + size - payload))
            elif how == "unknown-codec":
                data[attrs_at + 1] = (data[attrs_at + 1] & ~0x07) | 0x06  # codec 6 does not exist
            elif how == "bad-crc":
                data[pos + size - 1] ^= 0xFF  # one flipped bit pattern in the last byte, CRC left as it was
            else:
                raise AssertionError(how)
            if how != "bad-crc":
                struct.pack_into(">I", data, pos + 17, calc_crc32c_py(memoryview(data)[attrs_at : pos + size]))
            with open(seg, "r+b") as f:
                f.seek(pos)
                f.write(data[pos : pos + size])
                f.flush()
                os.fsync(f.fileno())
            return
    raise AssertionError(f"no batch at offset {base_offset} in {partition_dir}")


async def produce_zstd_batch(bootstrap: str, partition: int) -> int:
    """Three orders in one zstd batch on fenxiao.orders `partition`; returns the batch's base offset."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="zstd", linger_ms=200)
    await p.start()
    try:
        futs = []
        for i in range(3):
            order = {
                "event_id": f"late-o{i}",
                "ts": "2026-11-30T00:00:00.000Z",
                "order_id": f"late-{i}",
                "type": "paid",
                "buyer_id": "late-buyer",
                "amount_cents": 1000,
            }
            futs.append(await p.send(names.ORDERS, key=b"late-buyer", value=_compact(order), partition=partition))
        metas = await asyncio.gather(*futs)
    finally:
        await p.stop()
    return min(m.offset for m in metas)


@pytest.mark.parametrize("how", ["garbage-zstd", "unknown-codec", "bad-crc"])
def test_a_batch_the_client_cannot_decode_stops_the_worker_with_a_clear_error(pipe: Env, how: str) -> None:
    """The worker does not crash or crash-loop: it stays up, stops consuming, and says where and what to do.

    Expected (docs/decisions.md, "Producers that are not ours"): one log line and /status "error" naming the topic,
    the partition and the batch's first offset; the process keeps answering /status.
    """
    example = "basic"
    partition = 1
    pipe.produce(scenario.load_records(example))
    base = asyncio.run(produce_zstd_batch(pipe.stack.bootstrap, partition))
    corrupt_batch(pipe.stack.cfg.kafka_dir / "data" / f"{names.ORDERS}-{partition}", base, how)
    w = pipe.worker(example)
    try:
        wanted = (names.ORDERS, f"partition {partition}", f"offset {base}")
        deadline = time.monotonic() + 90
        error = None
        while time.monotonic() < deadline:
            assert w.proc is not None and w.proc.poll() is None, f"the worker exited:\n{w.log_tail()}"
            try:
                error = scenario.http_json(pipe.web_port, "/status").get("error")
            except OSError as e:  # it answered /health before: a worker whose app crashed stops answering first
                raise AssertionError(f"/status stopped answering ({e}):\n{w.log_tail()}") from None
            if error:
                break
            time.sleep(0.5)
        assert isinstance(error, str), f"/status never reported the undecodable batch:\n{w.log_tail()}"
        assert all(s in error for s in wanted), f"/status error {error!r} does not name {wanted}"
        assert "\n" not in error, "the error is one line"
        lines = [ln for ln in w.log_tail(400).splitlines() if all(s in ln for s in wanted)]
        assert lines, f"no log line names {wanted}:\n{w.log_tail()}"
        time.sleep(5)
        assert w.proc.poll() is None, f"the worker exited after reporting:\n{w.log_tail()}"
        assert scenario.http_json(pipe.web_port, "/status").get("error") == error, "the error must stay reported"
    finally:
        w.stop()
