"""Output partitioning equals Java's default partitioner, and the offset book commits only what is applied."""

from __future__ import annotations

import random

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

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
