"""The worker's output producer: a batch's records appended to per-partition batches and sent together.

aiokafka's `send` costs a future, a partitioner call and a metadata check per record; a batch of records
for one partition built with `create_batch` and sent with `send_batch` costs one of each per partition.
Partitions are chosen as Java's default partitioner does (murmur2 of the key), so consumers that rely on
keys landing on the same partition as other clients' records see no difference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

OutputRecord = tuple[str, bytes | None, dict[str, object]]
_JSON = msgspec.json.Encoder()
# Records per send_batch are bounded by the producer's max_batch_size; this bounds the key -> partition cache.
PARTITION_CACHE_MAX = 500_000


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
        self._cache: dict[tuple[str, bytes], int] = {}
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

    async def _partition(self, topic: str, key: bytes | None) -> int:
        parts = await self._partitions(topic)
        if key is None:
            self._rr += 1
            return parts[self._rr % len(parts)]
        ck = (topic, key)
        p = self._cache.get(ck)
        if p is None:
            if len(self._cache) > PARTITION_CACHE_MAX:
                self._cache.clear()
            p = self._cache[ck] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    async def send_records(self, records: Sequence[OutputRecord]) -> None:
        """Group by partition, append to batches, send them, wait for every ack."""
        if not records:
            return
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        for topic, key, record in records:
            p = await self._partition(topic, key)
            groups.setdefault((topic, p), []).append((key, _JSON.encode(record)))
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
