"""The fenxiao.order-steps records between the staged topology's two stages: order steps and watermarks, packed.

A step carries its input record as read (topic, partition, offset, key, raw bytes), so the credit stage decodes
the order itself and can dead-letter it exactly as one worker would, plus a first payment's locked terms. A
watermark says the attribution stage has applied every event up to its ts: the credit stage may settle what is
due by then (no refund older than it can still come on that partition).

One record holds a batch's steps for one partition (then that partition's watermark, if the batch has one), as a
MessagePack array: the attribution stage is the topology's serial part, and one JSON record per step cost it a
Kafka record, a partitioner call and a JSON string escape of the raw order per step. The credit stage applies a
record whole or not at all (its position is a record offset). A record written as one JSON step (before packing)
is still read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec

from streams.engine.ledger import Terms
from streams.pipeline.consume import Held
from streams.pipeline.outputs import java_partition

# A packed record stays well under Kafka's default 1 MB message size: at most this many steps, or bytes of raw input.
PACK_STEPS = 512
PACK_BYTES = 256 * 1024


class TermsValue(msgspec.Struct, frozen=True, array_like=True):
    """A first payment's Terms on the wire (one per paid order)."""

    b: list[str | None]
    r: list[int]
    m: int
    i: list[list[int]] | None = None


class StepValue(msgspec.Struct, frozen=True, array_like=True):
    """One order step (t..r, x) or a watermark (w) of a packed record."""

    t: str = ""
    p: int = 0
    o: int = 0
    k: bytes | None = None
    r: bytes = b""
    x: TermsValue | None = None
    w: int | None = None


class _JsonTerms(msgspec.Struct, frozen=True):
    b: list[str | None]
    r: list[int]
    m: int
    i: list[list[int]] | None = None


class _JsonStep(msgspec.Struct, frozen=True):
    """A step record as written one per record (key latin-1, raw as surrogate-escaped text)."""

    t: str = ""
    p: int = 0
    o: int = 0
    k: str | None = None
    r: str = ""
    x: _JsonTerms | None = None
    w: int | None = None


_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(list[StepValue])
_DECODE_JSON = msgspec.json.Decoder(_JsonStep)


def step_of(h: Held, terms: Terms | None) -> StepValue:
    """The step of one released order event, with the terms its first payment locked."""
    x = None
    if terms is not None:
        x = TermsValue(terms.beneficiaries, terms.rates_bps, terms.max_total_bps, terms.item_rates_bps)
    return StepValue(h.topic, h.partition, h.offset, h.key, h.raw, x)


def watermark(until_ms: int) -> StepValue:
    """A watermark: every order step with ts <= until_ms has been forwarded."""
    return StepValue(w=until_ms)


def step_partition(order_id: str, partitions: int) -> int:
    """The order-steps partition of an order: all of its steps in one partition, in order."""
    return java_partition(order_id.encode(), partitions)


def pack(steps: Sequence[tuple[str, StepValue]], mark: int | None, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, record value) for a batch's (order_id, step)s, in order; the watermark closes every partition."""
    per: dict[int, list[StepValue]] = {}
    for order_id, step in steps:
        per.setdefault(step_partition(order_id, partitions), []).append(step)
    if mark is not None:
        wm = watermark(mark)
        for p in range(partitions):
            per.setdefault(p, []).append(wm)
    return [(p, _ENCODE.encode(chunk)) for p in sorted(per) for chunk in _chunks(per[p])]


def _chunks(items: list[StepValue]) -> Iterator[list[StepValue]]:
    start, size = 0, 0
    for n, item in enumerate(items):
        if n > start and (n - start >= PACK_STEPS or size + len(item.r) > PACK_BYTES):
            yield items[start:n]
            start, size = n, 0
        size += len(item.r)
    yield items[start:]


def decode_steps(raw: bytes) -> list[StepValue]:
    """A record of fenxiao.order-steps (written only by the attribution stage: a failure here is a bug)."""
    if raw[:1] != b"{":
        return _DECODE.decode(raw)
    old = _DECODE_JSON.decode(raw)
    x = None if old.x is None else TermsValue(old.x.b, old.x.r, old.x.m, old.x.i)
    key = None if old.k is None else old.k.encode("latin-1")
    return [StepValue(old.t, old.p, old.o, key, old.r.encode("utf-8", errors="surrogateescape"), x, old.w)]


def terms_of(value: StepValue) -> Terms | None:
    """The locked terms a step carries, if it is a first payment."""
    x = value.x
    if x is None:
        return None
    return Terms(list(x.b), list(x.r), x.m, None if x.i is None else [list(row) for row in x.i])
