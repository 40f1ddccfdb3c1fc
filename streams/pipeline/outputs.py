"""The worker's output producer: a batch's records appended to per-partition batches and sent together.

aiokafka's `send` costs a future, a partitioner call and a metadata check per record; a batch of records
for one partition built with `create_batch` and sent with `send_batch` costs one of each per partition.
Partitions are chosen as Java's default partitioner does (murmur2 of the key, in C), so consumers that rely
on keys landing on the same partition as other clients' records see no difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
from collections.abc import Sequence
from typing import Any

import msgspec
import murmurhash2
from aiokafka import AIOKafkaProducer, codec

OutputRecord = tuple[str, bytes | None, dict[str, object]]
PlacedRecord = tuple[str, int, bytes]  # topic, partition index, encoded value
_JSON = msgspec.json.Encoder()
# Java's DefaultPartitioner: murmur2 with this seed, sign bit cleared, modulo the partition count.
MURMUR2_SEED = 0x9747B28C
# lz4 level of the batches the worker builds; aiokafka's own is 9 (HC). Any level decodes the same everywhere.
LZ4_LEVEL = 1
_BATCH_BUILDERS = ("aiokafka.record.default_records", "aiokafka.record._crecords.default_records")


def use_fast_lz4(level: int = LZ4_LEVEL) -> None:
    """Make aiokafka's batch builders compress lz4 at `level`: its fixed level 9 cost 2.5 us per output record here.

    Level 1 costs 0.2 us at ~80 % of level 9's ratio (bench: one sale's step records); aiokafka 0.14 has no
    setting for it, so the builders' module-level `lz4_encode` (Python and C builders alike) is replaced.
    """
    fast = functools.partial(codec.lz4_encode, level=level)
    for name in _BATCH_BUILDERS:
        with contextlib.suppress(ImportError):  # the C builders are absent when aiokafka runs without extensions
            vars(importlib.import_module(name))["lz4_encode"] = fast


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and aiokafka's) gives a keyed record; murmur2 in C."""
    return (murmurhash2.murmurhash2(key, MURMUR2_SEED) & 0x7FFFFFFF) % partitions


class KafkaOutputs:
    """Produces a batch's records and returns once the broker has acknowledged every one (acks=all)."""

    def __init__(self, bootstrap: str, client_id: str, compression_type: str | None = None) -> None:
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 2,
            "max_batch_size": 512 * 1024,
            "compression_type": compression_type,
        }
        self._producer: AIOKafkaProducer | None = None
        self._parts: dict[str, list[int]] = {}
        self._rr = 0
        self._started = False

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer (created inside the worker's event loop)."""
        if self._producer is None:
            raise RuntimeError("the output producer is not started")
        return self._producer

    async def start(self) -> None:
        """Connect."""
        use_fast_lz4()
        self._producer = AIOKafkaProducer(**self._config)
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        if self._started:
            self._started = False
            await self.producer.stop()

    async def _partitions(self, topic: str) -> list[int]:
        parts = self._parts.get(topic)
        if parts is None:
            got = self.producer._metadata.partitions_for_topic(topic)
            if not got:
                await self.producer.client._wait_on_metadata(topic)
                got = self.producer._metadata.partitions_for_topic(topic)
            parts = self._parts[topic] = sorted(got or {0})
        return parts

    def _partition(self, parts: list[int], key: bytes | None) -> int:
        if key is None:
            self._rr += 1
            return parts[self._rr % len(parts)]
        return parts[java_partition(key, len(parts))]

    async def partition_count(self, topic: str) -> int:
        """How many partitions topic has (from the producer's metadata, cached)."""
        return len(await self._partitions(topic))

    async def send_records(self, records: Sequence[OutputRecord], placed: Sequence[PlacedRecord] = ()) -> None:
        """Group by partition, append to batches, send them, wait for every ack.

        Each of `placed` (topic, partition index, encoded value, no key) goes to that partition after its records of
        this call (the staged topology's packed order steps).
        """
        if not records and not placed:
            return
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        topics = {r[0] for r in records} | {t for t, _, _ in placed}
        parts_of = {topic: await self._partitions(topic) for topic in topics}
        encode, partition = _JSON.encode, self._partition
        for topic, key, record in records:
            groups.setdefault((topic, partition(parts_of[topic], key)), []).append((key, encode(record)))
        for topic, index, raw in placed:
            groups.setdefault((topic, parts_of[topic][index]), []).append((None, raw))
        futs: list[Any] = []
        producer = self.producer
        for (topic, p), items in groups.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    futs.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value)} bytes does not fit one batch of {topic}")
            batch.close()
            futs.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futs)
