"""Write schemas/json/<topic>.schema.json for every topic from the decoder's types: `python -m schemas.publish`.

msgspec.json.schema gives the fields, types and bounds; RULES adds what msgspec cannot say in a schema
(cross-field rules, the ts pattern). What JSON Schema cannot say at all is listed under
"x-fenxiao-decoder-only" in each file: the decoder refuses it, a schema validator cannot.
`--check` exits 1 when the committed files differ from what this writes (CI, the unit test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from schemas import events, outputs
from streams import names

OUT_DIR = Path(__file__).resolve().parent / "json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]

STRICT_INTEGERS = "integers are written without a fraction or exponent: 100, not 100.0 or 1e2"
INPUT_DECODER_ONLY = [
    STRICT_INTEGERS,
    "the value is UTF-8 JSON (RFC 8259): no NaN or Infinity, no invalid UTF-8 and no lone surrogate "
    "escapes (\\ud800), not even in ignored fields",
    "one leading UTF-8 BOM and whitespace around the JSON are allowed; with duplicate keys the last one counts",
]


def _if_type(values: tuple[str, ...], then: Schema, field: str = "type") -> Schema:
    """A JSON Schema conditional on an enum field."""
    return {"if": {"required": [field], "properties": {field: {"enum": list(values)}}}, "then": then}


def _order_rules() -> list[Schema]:
    """amount_cents on paid and refunded; items only there."""
    others = tuple(t for t in ("paid", "refunded", "completed", "cancelled") if t not in events.AMOUNT_REQUIRED_ON)
    return [
        _if_type(
            events.AMOUNT_REQUIRED_ON,
            {"required": ["amount_cents"], "properties": {"amount_cents": {"not": {"type": "null"}}}},
        ),
        _if_type(others, {"properties": {"items": {"type": "null"}}}),
    ]


def _commission_rules() -> list[Schema]:
    """Which fields each ledger kind carries, and its sign."""
    text = {"type": "string", "minLength": 1, "maxLength": events.MAX_ID_LEN}
    return [
        _if_type(
            outputs.ORDER_KINDS,
            {"properties": {"order_id": text, "buyer_id": text, "level": {"minimum": 1}}},
            "kind",
        ),
        _if_type(
            outputs.MONEY_OUT_KINDS,
            {
                "properties": {
                    "order_id": {"type": "null"},
                    "buyer_id": {"type": "null"},
                    "campaign_id": {"type": "null"},
                    "level": {"const": 0},
                }
            },
            "kind",
        ),
        _if_type(
            ("held", "released", "withdrawn"),
            {"required": ["withdrawal_id"], "properties": {"withdrawal_id": text}},
            "kind",
        ),
        _if_type(
            ("withdrawn",),
            {
                "required": ["fee_cents", "payout_cents"],
                "properties": {"fee_cents": {"type": "integer"}, "payout_cents": {"type": "integer"}},
            },
            "kind",
        ),
        _if_type(
            ("adjusted",),
            {
                "required": ["adjustment_id", "reason"],
                "properties": {"adjustment_id": text, "reason": {"type": "string", "minLength": 1}},
            },
            "kind",
        ),
        _if_type(outputs.CREDIT_KINDS, {"properties": {"amount_cents": {"minimum": 1}}}, "kind"),
        _if_type(outputs.DEBIT_KINDS, {"properties": {"amount_cents": {"maximum": -1}}}, "kind"),
        _if_type(("adjusted",), {"properties": {"amount_cents": {"not": {"const": 0}}}}, "kind"),
    ]


# topic -> (type, extra allOf rules, field patches, decoder-only notes)
TOPICS: dict[str, tuple[type[msgspec.Struct], list[Schema], dict[str, Schema], list[str]]] = {
    names.TIERS: (events.Tier, [], {}, INPUT_DECODER_ONLY),
    names.CLICKS: (events.Click, [], {}, INPUT_DECODER_ONLY),
    names.SIGNUPS: (events.Signup, [], {}, INPUT_DECODER_ONLY),
    names.ORDERS: (
        events.Order,
        _order_rules(),
        {},
        [
            *INPUT_DECODER_ONLY,
            "items: each sku_id at most once per order",
            "items: the items' amount_cents add up exactly to the order's amount_cents",
        ],
    ),
    names.DISTRIBUTORS: (events.DistributorStatus, [], {}, INPUT_DECODER_ONLY),
    names.ADJUSTMENTS: (events.Adjustment, [], {"amount_cents": {"not": {"const": 0}}}, INPUT_DECODER_ONLY),
    names.WITHDRAWALS: (
        events.Withdrawal,
        [
            _if_type(
                ("requested",),
                {"required": ["amount_cents"], "properties": {"amount_cents": {"not": {"type": "null"}}}},
            )
        ],
        {},
        INPUT_DECODER_ONLY,
    ),
    names.COMMISSIONS: (outputs.CommissionEntry, _commission_rules(), {}, []),
    names.BINDINGS: (outputs.BindingRecord, [], {}, []),
    names.DEAD_LETTERS: (outputs.DeadLetterRecord, [], {}, []),
    names.CLICKS_LIMITED: (outputs.LimitedClickRecord, [], {}, []),
    names.WITHDRAWAL_STATES: (outputs.WithdrawalStateRecord, [], {}, []),
}
INPUTS = (*names.INPUT_TOPICS, *names.V2_INPUT_TOPICS)


def topic_schema(topic: str) -> Schema:
    """The JSON Schema of one topic's record values."""
    cls, rules, patches, decoder_only = TOPICS[topic]
    generated = msgspec.json.schema(cls)
    defs: dict[str, Schema] = generated["$defs"]
    root = defs.pop(cls.__name__)
    props: dict[str, Schema] = root["properties"]
    if topic in INPUTS:
        props["ts"] = {**props["ts"], "pattern": events.TS_PATTERN, "description": f"RFC 3339; {events.TS_HINT}"}
    for field, patch in patches.items():
        props[field] = {**props[field], **patch}
    out: Schema = {"$schema": DRAFT, "title": topic, **root}
    out["description"] = f"{root.get('description', '')} Key: {KEYS[topic]}."
    if rules:
        out["allOf"] = rules
    if decoder_only:
        out["x-fenxiao-decoder-only"] = decoder_only
    if defs:
        out["$defs"] = defs
    return out


KEYS = {
    names.TIERS: "user_id",
    names.CLICKS: "visitor_id",
    names.SIGNUPS: "user_id",
    names.ORDERS: "buyer_id",
    names.DISTRIBUTORS: "user_id",
    names.ADJUSTMENTS: "distributor_id",
    names.WITHDRAWALS: "distributor_id",
    names.COMMISSIONS: "beneficiary_id",
    names.BINDINGS: "user_id",
    names.DEAD_LETTERS: "the refused record's own key",
    names.CLICKS_LIMITED: "visitor_id",
    names.WITHDRAWAL_STATES: "distributor_id",
}


def render(schema: Schema) -> str:
    """The file text: stable key order, so a regenerated file diffs only where the types changed."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def files() -> dict[str, str]:
    """File name -> text, for every topic."""
    return {f"{topic}.schema.json": render(topic_schema(topic)) for topic in TOPICS}


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) every schema file under schemas/json/."""
    parser = argparse.ArgumentParser(prog="python -m schemas.publish", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files are not up to date")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    wanted = files()
    stale = sorted(
        name
        for name, text in wanted.items()
        if not (args.out / name).exists() or (args.out / name).read_text(encoding="utf-8") != text
    )
    extra = sorted(p.name for p in args.out.glob("*.schema.json") if p.name not in wanted) if args.out.exists() else []
    if args.check:
        for name in [*stale, *extra]:
            print(f"out of date: {args.out / name} (run python -m schemas.publish)", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (args.out / name).write_text(wanted[name], encoding="utf-8")
    for name in extra:
        (args.out / name).unlink()
    print(f"{len(wanted)} schemas in {args.out}, {len(stale)} written, {len(extra)} removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
