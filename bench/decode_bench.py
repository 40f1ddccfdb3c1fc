"""Records/s of the old json + strict pydantic decoder vs the msgspec one on the same records: prints only.

    .venv/bin/python bench/decode_bench.py [--orders 50000] [--rounds 5]

The records are a generated flash sale (streams/ops/flashsale.py) as the bytes a producer sends; every input
record is decoded by both, best of --rounds each, interleaved so machine noise hits both alike. The old
decoder is a copy of schemas/events.py before msgspec, kept only here; both must agree on which records
are valid, or the numbers would compare different work.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from schemas.events import Invalid, decode
from streams import names
from streams.ops import flashsale

# ---- the old decoder (schemas/events.py at 40ea698), unchanged but for names ----------------------

_Id = Annotated[StrictStr, Field(min_length=1, max_length=128)]
_Cents = Annotated[StrictInt, Field(ge=0, le=10**12)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


def _old_parse_ts_ms(value: str) -> int:
    if not _TS_RE.match(value):
        raise ValueError("ts must be RFC 3339 with a zone, like 2026-11-11T00:00:00.000Z")
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (dt - _EPOCH) // timedelta(milliseconds=1)


class _OldEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    event_id: _Id
    ts: StrictStr
    _ts_ms: int = PrivateAttr(default=0)

    @field_validator("ts")
    @classmethod
    def _ts_is_rfc3339(cls, v: str) -> str:
        _old_parse_ts_ms(v)
        return v

    def model_post_init(self, __context: Any) -> None:
        self._ts_ms = _old_parse_ts_ms(self.ts)


class _OldClick(_OldEvent):
    visitor_id: _Id
    ref: _Id
    campaign_id: _Id | None = None
    product_id: _Id | None = None
    ip: StrictStr | None = None
    user_agent: StrictStr | None = None


class _OldSignup(_OldEvent):
    user_id: _Id
    ref: _Id | None = None
    visitor_id: _Id | None = None
    distributor: StrictBool = True


class _OldOrder(_OldEvent):
    order_id: _Id
    type: Literal["paid", "refunded", "completed", "cancelled"]
    buyer_id: _Id
    amount_cents: _Cents | None = None
    campaign_id: _Id | None = None
    ref: _Id | None = None
    visitor_id: _Id | None = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.type in ("paid", "refunded") and self.amount_cents is None:
            raise ValueError(f"amount_cents is required on a {self.type} order")


class _OldTier(_OldEvent):
    user_id: _Id
    tier: _Id


_OLD_MODELS: dict[str, type[_OldEvent]] = {
    names.CLICKS: _OldClick,
    names.SIGNUPS: _OldSignup,
    names.ORDERS: _OldOrder,
    names.TIERS: _OldTier,
}


def old_decode(topic: str, raw: bytes) -> _OldEvent | None:
    """The old path: json.loads, then the strict pydantic model; None where it made an Invalid."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return _OLD_MODELS[topic].model_validate(data)
    except (ValidationError, ValueError):
        return None


# ---- the run --------------------------------------------------------------------------------------


def records(orders: int) -> list[tuple[str, bytes]]:
    """A flash sale's input records as (topic, value bytes), with a few broken ones mixed in."""
    start = datetime(2026, 11, 11, tzinfo=UTC)
    out = [
        (r["topic"], json.dumps(r["value"], ensure_ascii=False).encode("utf-8"))
        for r in flashsale.generate(orders // 2, orders, 11, start, 3600.0)
    ]
    for i in range(0, len(out), 200):  # 0.5 % bad input: a string amount, a missing field
        topic, raw = out[i]
        out[i] = (topic, raw.replace(b'"ts"', b'"tz"') if i % 400 else raw.replace(b"}", b', "amount_cents": "1"}'))
    return out


def run_once(fn: Callable[[str, bytes], object], recs: list[tuple[str, bytes]]) -> float:
    """Seconds to decode every record once."""
    t0 = time.perf_counter()
    for topic, raw in recs:
        fn(topic, raw)
    return time.perf_counter() - t0


def main() -> None:
    """Print records/s of both decoders and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    recs = records(args.orders)
    old_ok = [old_decode(t, r) is not None for t, r in recs]
    new_ok = [not isinstance(decode(t, r), Invalid) for t, r in recs]
    if old_ok != new_ok:
        diff = [i for i, (a, b) in enumerate(zip(old_ok, new_ok, strict=True)) if a != b]
        raise SystemExit(f"the decoders disagree on {len(diff)} records, e.g. {recs[diff[0]]!r}")
    mix = ", ".join(f"{t.split('.')[1]} {sum(1 for x, _ in recs if x == t):,}" for t in names.INPUT_TOPICS)
    invalid = len(recs) - sum(new_ok)
    size = sum(len(r) for _, r in recs) / len(recs)
    print(f"{len(recs):,} records ({mix}), {invalid:,} invalid, {size:.0f} B average")
    best_old = best_new = float("inf")
    for _ in range(args.rounds):
        best_old = min(best_old, run_once(old_decode, recs))
        best_new = min(best_new, run_once(decode, recs))
    old_rate, new_rate = len(recs) / best_old, len(recs) / best_new
    print(f"json + pydantic (old): {old_rate:>12,.0f} records/s  {best_old / len(recs) * 1e6:6.2f} us/record")
    print(f"msgspec (new):         {new_rate:>12,.0f} records/s  {best_new / len(recs) * 1e6:6.2f} us/record")
    print(f"speedup: {new_rate / old_rate:.2f}x (best of {args.rounds} rounds each)")


if __name__ == "__main__":
    main()
