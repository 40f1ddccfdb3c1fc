"""Output partitioning equals Java's default partitioner, and the offset book commits only what is applied."""

from __future__ import annotations

import importlib
import random

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from streams.pipeline import outputs
from streams.pipeline.consume import OffsetBook
from streams.pipeline.outputs import java_partition

KEYS = [b"", b"a", b"ab", b"abc", b"abcd", b"u3-27", "分销商-7".encode(), b"\xff\x00\x80", bytes(range(37))]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("partitions", [1, 4, 7, 16])
def test_java_partition_matches_aiokafkas_port_of_javas_murmur2(key: bytes, partitions: int) -> None:
    assert java_partition(key, partitions) == (murmur2(key) & 0x7FFFFFFF) % partitions


def test_java_partition_matches_on_random_keys_of_every_tail_length() -> None:
    rng = random.Random(7)
    for n in range(2000):
        key = rng.randbytes(n % 41)
        assert java_partition(key, 12) == (murmur2(key) & 0x7FFFFFFF) % 12


T0, T1 = TopicPartition("fenxiao.orders", 0), TopicPartition("fenxiao.orders", 1)


def test_offset_book_commits_the_first_unreleased_offset_or_the_read_position() -> None:
    book = OffsetBook()
    for off in (10, 11, 12):
        book.read(T0, off)
    book.position(T0, 13)
    book.position(T1, 5)  # read up to 5, nothing held (markers or nothing at all)
    assert book.committable() == {T0: 10, T1: 5}
    book.released(T0, 11)  # released out of order (an older record behind a newer one): 10 still open
    assert book.committable() == {T0: 10, T1: 5}
    book.released(T0, 10)
    assert book.committable() == {T0: 12, T1: 5}
    book.released(T0, 12)
    assert book.committable() == {T0: 13, T1: 5}
    book.forget(T1)
    assert book.committable() == {T0: 13}


BUILDERS = ["aiokafka.record.default_records", "aiokafka.record._crecords"]


def _lz4_batch(module: str, records: list[tuple[bytes, bytes]]) -> bytes:
    builder = importlib.import_module(module).DefaultRecordBatchBuilder
    b = builder(
        magic=2,
        compression_type=3,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, (k, v) in enumerate(records):
        b.append(i, timestamp=None, key=k, value=v, headers=[])
    return bytes(b.build())


@pytest.mark.parametrize("module", BUILDERS)
def test_fast_lz4_batches_decode_to_the_same_records_and_are_not_level_9(module: str) -> None:
    from aiokafka.record.default_records import DefaultRecordBatch

    records = [
        (b"o-%d" % i, b'{"order_id":"o-%d","buyer":"u-%d","amount_cents":%d}' % (i, i % 97, i * 7)) for i in range(3000)
    ]
    outputs.use_fast_lz4(9)
    try:
        slow = _lz4_batch(module, records)
        outputs.use_fast_lz4()
        fast = _lz4_batch(module, records)
        assert fast != slow  # the builder took the patched level (level 1 and 9 differ on this data)
        for buf in (fast, slow):
            assert [(r.key, r.value) for r in DefaultRecordBatch(bytearray(buf))] == records
    finally:
        outputs.use_fast_lz4()
