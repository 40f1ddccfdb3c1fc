"""Input events of the contract, and the one place where raw Kafka bytes are decoded and validated."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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

from streams import names

MAX_AMOUNT_CENTS = 10**12
MAX_ID_LEN = 128

Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LEN)]
Cents = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT_CENTS)]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


def parse_ts_ms(value: str) -> int:
    """RFC 3339 with an explicit zone to epoch milliseconds; anything else is refused."""
    if not _TS_RE.match(value):
        raise ValueError("ts must be RFC 3339 with a zone, like 2026-11-11T00:00:00.000Z")
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def format_ts(ms: int) -> str:
    """Epoch milliseconds to the contract's canonical form, 2026-11-11T00:00:00.000Z."""
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


class _Event(BaseModel):
    """Fields every event has; unknown extra fields are ignored, as the contract allows."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Id
    ts: StrictStr
    _ts_ms: int = PrivateAttr(default=0)

    @field_validator("ts")
    @classmethod
    def _ts_is_rfc3339(cls, v: str) -> str:
        parse_ts_ms(v)
        return v

    def model_post_init(self, __context: Any) -> None:
        self._ts_ms = parse_ts_ms(self.ts)

    @property
    def ts_ms(self) -> int:
        """The event time in epoch milliseconds (not a field: producers may send their own ts_ms)."""
        return self._ts_ms


class Click(_Event):
    """A visitor opened a distributor's share link."""

    visitor_id: Id
    ref: Id
    campaign_id: Id | None = None
    product_id: Id | None = None
    ip: StrictStr | None = None
    user_agent: StrictStr | None = None


class Signup(_Event):
    """A new user; a distributor unless distributor is false."""

    user_id: Id
    ref: Id | None = None
    visitor_id: Id | None = None
    distributor: StrictBool = True


OrderType = Literal["paid", "refunded", "completed", "cancelled"]


class Item(BaseModel):
    """One line of an order (contract v2): a product and the cents paid or refunded for it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sku_id: Id
    amount_cents: Cents


class Order(_Event):
    """One step of an order's life; all steps of one order share the buyer key."""

    order_id: Id
    type: OrderType
    buyer_id: Id
    amount_cents: Cents | None = None
    campaign_id: Id | None = None
    ref: Id | None = None
    visitor_id: Id | None = None
    items: tuple[Item, ...] | None = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.type in ("paid", "refunded") and self.amount_cents is None:
            raise ValueError(f"amount_cents is required on a {self.type} order")
        if self.items is not None:
            if not self.items:
                raise ValueError("items must not be empty")
            if self.type == "paid" and len({i.sku_id for i in self.items}) != len(self.items):
                raise ValueError("items: sku_id must be distinct")
            if sum(i.amount_cents for i in self.items) != self.amount_cents:
                raise ValueError("items: amounts must add up to amount_cents")


class Tier(_Event):
    """An operator (or the tier evaluator) moved a user to another tier."""

    user_id: Id
    tier: Id


class DistributorStatus(_Event):
    """An operator approved, froze or revoked a distributor (contract v2)."""

    user_id: Id
    status: Literal["active", "frozen", "revoked"]
    reason: StrictStr | None = None


SignedCents = Annotated[StrictInt, Field(ge=-MAX_AMOUNT_CENTS, le=MAX_AMOUNT_CENTS)]


class Adjustment(_Event):
    """An operator's manual credit or debit on a distributor's available balance (contract v2)."""

    adjustment_id: Id
    distributor_id: Id
    amount_cents: SignedCents
    reason: Annotated[StrictStr, Field(min_length=1)]

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.amount_cents == 0:
            raise ValueError("amount_cents must not be zero")


class Withdrawal(_Event):
    """One step of a withdrawal request's life (contract v2)."""

    withdrawal_id: Id
    distributor_id: Id
    type: Literal["requested", "approved", "rejected", "paid", "failed"]
    amount_cents: Cents | None = None
    channel: StrictStr | None = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.type == "requested" and self.amount_cents is None:
            raise ValueError("amount_cents is required on a requested withdrawal")


Event = Click | Signup | Order | Tier | DistributorStatus | Adjustment | Withdrawal

MODEL_BY_TOPIC: dict[str, type[_Event]] = {
    names.CLICKS: Click,
    names.SIGNUPS: Signup,
    names.ORDERS: Order,
    names.TIERS: Tier,
    names.DISTRIBUTORS: DistributorStatus,
    names.ADJUSTMENTS: Adjustment,
    names.WITHDRAWALS: Withdrawal,
}


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot be an event: why, and whatever id could be read."""

    detail: str
    event_id: str | None
    ts: str | None


def _detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode(topic: str, raw: bytes | str | None) -> Event | Invalid:
    """Decode and validate one record value; never raises on bad input."""
    model = MODEL_BY_TOPIC.get(topic)
    if model is None:
        return Invalid(f"not an input topic: {topic}", None, None)
    if raw is None:
        return Invalid("empty record (null value)", None, None)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return Invalid(f"not JSON: {e}", None, None)
    if not isinstance(data, dict):
        return Invalid(f"value must be a JSON object, got {type(data).__name__}", None, None)
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        return Invalid(_detail(e), _readable_id(data.get("event_id")), _readable_id(data.get("ts")))
    except ValueError as e:
        return Invalid(str(e), _readable_id(data.get("event_id")), _readable_id(data.get("ts")))


def _readable_id(v: object) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= MAX_ID_LEN else None
