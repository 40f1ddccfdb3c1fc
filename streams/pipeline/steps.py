"""The fenxiao.order-steps records between the staged topology's two stages: order steps and watermarks.

A step carries its input record as read (topic, partition, offset, key, raw bytes), so the credit stage decodes
the order itself and can dead-letter it exactly as one worker would, plus a first payment's locked terms. A
watermark says the attribution stage has applied every event up to its ts: the credit stage may settle what is
due by then (no refund older than it can still come on that partition).
"""

from __future__ import annotations

import msgspec

from streams import names
from streams.engine.ledger import Terms
from streams.pipeline.consume import Held
from streams.pipeline.outputs import OutputRecord


class TermsValue(msgspec.Struct, frozen=True):
    """A first payment's Terms on the wire (short names: one per paid order)."""

    b: list[str | None]
    r: list[int]
    m: int
    i: list[list[int]] | None = None


class StepValue(msgspec.Struct, frozen=True, omit_defaults=True):
    """One order-steps record: a step (t..r, x) or a watermark (w)."""

    t: str = ""
    p: int = 0
    o: int = 0
    k: str | None = None
    r: str = ""
    x: TermsValue | None = None
    w: int | None = None


_DECODE = msgspec.json.Decoder(StepValue)


def step_record(h: Held, terms: Terms | None) -> OutputRecord:
    """The order-steps record of one order step, keyed by order_id (all of an order's steps on one partition)."""
    value: dict[str, object] = {
        "t": h.topic,
        "p": h.partition,
        "o": h.offset,
        "k": None if h.key is None else h.key.decode("latin-1"),
        "r": h.raw.decode("utf-8", errors="surrogateescape"),
    }
    if terms is not None:
        value["x"] = {"b": terms.beneficiaries, "r": terms.rates_bps, "m": terms.max_total_bps}
        if terms.item_rates_bps is not None:
            value["x"]["i"] = terms.item_rates_bps  # type: ignore[index]
    order_id = getattr(h.event, "order_id", "")
    return (names.ORDER_STEPS, str(order_id).encode(), value)


def watermark_value(until_ms: int) -> dict[str, object]:
    """A watermark: every order step with ts <= until_ms has been forwarded."""
    return {"w": until_ms}


def decode_step(raw: bytes) -> StepValue:
    """A record of fenxiao.order-steps (written only by the attribution stage: a failure here is a bug)."""
    return _DECODE.decode(raw)


def terms_of(value: StepValue) -> Terms | None:
    """The locked terms a step carries, if it is a first payment."""
    x = value.x
    if x is None:
        return None
    return Terms(list(x.b), list(x.r), x.m, None if x.i is None else [list(row) for row in x.i])


def raw_of(value: StepValue) -> bytes:
    """The input record's bytes as read."""
    return value.r.encode("utf-8", errors="surrogateescape")


def key_of(value: StepValue) -> bytes | None:
    """The input record's key as read."""
    return None if value.k is None else value.k.encode("latin-1")
