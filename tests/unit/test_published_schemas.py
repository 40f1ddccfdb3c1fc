"""The published JSON Schemas (issue #12): up to date, and never in disagreement with the decoder."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas import publish
from schemas.events import Invalid, decode
from streams import names
from streams.engine import config, reference
from streams.pipeline.sequencer import DeadLetter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXAMPLE_DIRS = sorted(p.parent for p in FIXTURES.rglob("events.jsonl"))
V1_EXAMPLES = ["basic", "messy", "two-level"]
INPUTS = (*names.INPUT_TOPICS, *names.V2_INPUT_TOPICS)
TS = "2026-11-11T00:00:00.000Z"


@cache
def validator(topic: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((publish.OUT_DIR / f"{topic}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


class NotJson(ValueError):
    """What a strict RFC 8259 reader refuses."""


def _no_constants(token: str) -> Any:
    raise NotJson(f"{token} is not JSON")


def schema_accepts(topic: str, raw: bytes) -> bool:
    """What a producer validating with the published schema concludes: strict UTF-8 JSON, then the schema."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text.removeprefix("\ufeff"), parse_constant=_no_constants)
    except ValueError:
        return False
    return validator(topic).is_valid(value)


def decoder_accepts(topic: str, raw: bytes) -> bool:
    return not isinstance(decode(topic, raw), Invalid)


def raw(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


# ---- (a) the committed files are what the generator writes -----------------------------------------


def test_committed_schemas_equal_what_publish_writes_now() -> None:
    wanted = publish.files()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in publish.OUT_DIR.glob("*.schema.json")}
    assert sorted(on_disk) == sorted(wanted), "run: python -m schemas.publish"
    for name, text in wanted.items():
        assert on_disk[name] == text, f"{name} is stale; run: python -m schemas.publish"


def test_there_is_a_schema_for_every_input_and_output_topic() -> None:
    expected = {*names.INPUT_TOPICS, *names.V2_INPUT_TOPICS, *names.OUTPUT_TOPICS}
    assert {p.name.removesuffix(".schema.json") for p in publish.OUT_DIR.glob("*.schema.json")} == expected


def test_check_mode_fails_on_a_stale_file_and_passes_once_written(tmp_path: Path) -> None:
    assert publish.main(["--out", str(tmp_path)]) == 0
    assert publish.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "fenxiao.orders.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "fenxiao.gone.schema.json").write_text("{}\n", encoding="utf-8")
    assert publish.main(["--check", "--out", str(tmp_path)]) == 1
    assert publish.main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "fenxiao.gone.schema.json").exists()
    assert publish.main(["--check", "--out", str(tmp_path)]) == 0


# ---- (b) every example record validates and decodes ------------------------------------------------


def test_every_spec_example_is_a_fixture_including_money_out() -> None:
    assert {d.name for d in EXAMPLE_DIRS} == {"basic", "messy", "two-level", "money-out"}


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=[d.name for d in EXAMPLE_DIRS])
def test_every_example_record_validates_and_decodes(example: Path) -> None:
    lines = (example / "events.jsonl").read_text(encoding="utf-8").splitlines()
    problems, seen = [], set()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        rec = json.loads(line)
        topic, value = rec["topic"], raw(rec["value"])
        seen.add(topic)
        errors = [e.message for e in validator(topic).iter_errors(json.loads(value))]
        if errors:
            problems.append(f"line {n + 1}: schema: {errors}")
        if not decoder_accepts(topic, value):
            problems.append(f"line {n + 1}: decoder: {decode(topic, value)}")
    assert not problems, "\n".join(problems[:20])
    assert seen <= set(INPUTS)
    if example.name == "money-out":
        assert set(names.V2_INPUT_TOPICS) <= seen


# ---- (c) schema and decoder agree on good and bad records ------------------------------------------

ORDER = {"event_id": "o1-p", "ts": TS, "order_id": "o1", "type": "paid", "buyer_id": "b1", "amount_cents": 100}
SIGNUP = {"event_id": "s1", "ts": TS, "user_id": "u1"}
CLICK = {"event_id": "c1", "ts": TS, "visitor_id": "v1", "ref": "u1"}
TIER = {"event_id": "t1", "ts": TS, "user_id": "u1", "tier": "gold"}
STATUS = {"event_id": "d1", "ts": TS, "user_id": "u1", "status": "revoked"}
ADJ = {"event_id": "a1", "ts": TS, "adjustment_id": "x", "distributor_id": "u1", "amount_cents": -5, "reason": "r"}
WD = {"event_id": "w1", "ts": TS, "withdrawal_id": "w", "distributor_id": "u1", "type": "requested", "amount_cents": 1}
BASE = {
    names.ORDERS: ORDER,
    names.SIGNUPS: SIGNUP,
    names.CLICKS: CLICK,
    names.TIERS: TIER,
    names.DISTRIBUTORS: STATUS,
    names.ADJUSTMENTS: ADJ,
    names.WITHDRAWALS: WD,
}
ORD, SGN, CLK, TIR = names.ORDERS, names.SIGNUPS, names.CLICKS, names.TIERS
DST, ADJT, WDT = names.DISTRIBUTORS, names.ADJUSTMENTS, names.WITHDRAWALS


def with_(topic: str, **changes: object) -> bytes:
    return raw({**BASE[topic], **changes})


def without(topic: str, field: str) -> bytes:
    return raw({k: v for k, v in BASE[topic].items() if k != field})


def items(*pairs: tuple[str, int]) -> list[dict[str, object]]:
    return [{"sku_id": s, "amount_cents": a} for s, a in pairs]


GOOD = [
    *[pytest.param(t, raw(v), id=f"base-{t.split('.')[1]}") for t, v in BASE.items()],
    pytest.param(SGN, with_(SGN, ts="2026-11-11T08:00:00.000+08:00"), id="ts-plus-8"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11t00:00:00.000z"), id="ts-lower-case"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T00:00:00Z"), id="ts-no-fraction"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T00:00:00.123456789Z"), id="ts-nanos"),
    pytest.param(SGN, with_(SGN, ts="2024-02-29T00:00:00.000Z"), id="ts-leap-day"),
    pytest.param(SGN, with_(SGN, ts="2000-02-29T00:00:00.000Z"), id="ts-leap-day-2000"),
    pytest.param(SGN, b"\xef\xbb\xbf" + raw(SIGNUP) + b"\r\n", id="bom-and-crlf"),
    pytest.param(SGN, raw(SIGNUP)[:-1] + b', "user_id": "u2"}', id="duplicate-key"),
    pytest.param(SGN, with_(SGN, extra={"nested": [1, 2.5, None]}, ts_ms="x"), id="extras"),
    pytest.param(SGN, with_(SGN, user_id="用" * 128), id="128-cjk-chars"),
    pytest.param(SGN, with_(SGN, user_id="🙂" * 128), id="128-astral-chars"),
    pytest.param(ORD, with_(ORD, type="completed", amount_cents=None), id="completed-null-amount"),
    pytest.param(ORD, with_(ORD, type="cancelled", items=None), id="cancelled-null-items"),
    pytest.param(ORD, with_(ORD, amount_cents=10**12), id="amount-10^12"),
    pytest.param(ORD, with_(ORD, items=items(("a", 60), ("b", 40))), id="items"),
    pytest.param(ORD, with_(ORD, type="refunded", items=items(("a", 100))), id="refund-items"),
    pytest.param(ADJT, with_(ADJT, amount_cents=-(10**12)), id="adjust-minus-10^12"),
    pytest.param(WDT, with_(WDT, type="paid", amount_cents=None), id="withdrawal-paid-no-amount"),
    pytest.param(DST, with_(DST, reason=None), id="status-null-reason"),
]

BAD = [
    *[pytest.param(t, without(t, "event_id"), id=f"{t.split('.')[1]}-no-event_id") for t in BASE],
    *[pytest.param(t, without(t, "ts"), id=f"{t.split('.')[1]}-no-ts") for t in BASE],
    pytest.param(ORD, with_(ORD, amount_cents="100"), id="amount-string"),
    pytest.param(ORD, with_(ORD, amount_cents=True), id="amount-bool"),
    pytest.param(ORD, with_(ORD, amount_cents=-1), id="amount-negative"),
    pytest.param(ORD, with_(ORD, amount_cents=10**12 + 1), id="amount-over"),
    pytest.param(ORD, with_(ORD, amount_cents=None), id="paid-null-amount"),
    pytest.param(ORD, without(ORD, "amount_cents"), id="paid-no-amount"),
    pytest.param(ORD, with_(ORD, type="refunded", amount_cents=None), id="refunded-null-amount"),
    pytest.param(ORD, with_(ORD, type="shipped"), id="type-unknown"),
    pytest.param(ORD, with_(ORD, order_id="x" * 129), id="id-129"),
    pytest.param(ORD, with_(ORD, buyer_id=""), id="id-empty"),
    pytest.param(ORD, with_(ORD, items=[]), id="items-empty"),
    pytest.param(ORD, with_(ORD, items=items(("a", -1))), id="item-negative"),
    pytest.param(ORD, with_(ORD, items=[{"sku_id": "a"}]), id="item-no-amount"),
    pytest.param(ORD, with_(ORD, type="completed", items=items(("a", 100))), id="items-on-completed"),
    pytest.param(ORD, with_(ORD, type="cancelled", items=items(("a", 100))), id="items-on-cancelled"),
    pytest.param(SGN, with_(SGN, distributor=0), id="distributor-int"),
    pytest.param(SGN, with_(SGN, user_id="🙂" * 129), id="129-astral-chars"),
    pytest.param(CLK, with_(CLK, ip=5), id="ip-number"),
    pytest.param(TIR, with_(TIR, tier=""), id="tier-empty"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T00:00:00.000"), id="ts-no-zone"),
    pytest.param(SGN, with_(SGN, ts=TS + "\n"), id="ts-trailing-newline"),
    pytest.param(SGN, with_(SGN, ts=" " + TS), id="ts-leading-space"),
    pytest.param(SGN, with_(SGN, ts="2026-02-29T00:00:00.000Z"), id="ts-feb-29-2026"),
    pytest.param(SGN, with_(SGN, ts="2100-02-29T00:00:00.000Z"), id="ts-feb-29-2100"),
    pytest.param(SGN, with_(SGN, ts="2026-06-31T00:00:00.000Z"), id="ts-june-31"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T23:59:60.000Z"), id="ts-leap-second"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T00:00:00.0000000001Z"), id="ts-10-digits"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11 00:00:00.000Z"), id="ts-space"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T00:00:00.000+0800"), id="ts-offset-no-colon"),
    pytest.param(SGN, with_(SGN, ts="１９９９-11-11T00:00:00.000Z"), id="ts-fullwidth"),
    pytest.param(SGN, with_(SGN, ts="1899-12-31T00:00:00.000Z"), id="ts-1899"),
    pytest.param(SGN, with_(SGN, ts="2300-01-01T00:00:00.000Z"), id="ts-2300"),
    pytest.param(SGN, with_(SGN, ts=1_794_355_200_000), id="ts-number"),
    pytest.param(DST, with_(DST, status="deleted"), id="status-unknown"),
    pytest.param(DST, without(DST, "user_id"), id="status-no-user"),
    pytest.param(ADJT, with_(ADJT, amount_cents=0), id="adjust-zero"),
    pytest.param(ADJT, with_(ADJT, amount_cents=-(10**12) - 1), id="adjust-under"),
    pytest.param(ADJT, with_(ADJT, reason=""), id="adjust-reason-empty"),
    pytest.param(ADJT, without(ADJT, "reason"), id="adjust-no-reason"),
    pytest.param(WDT, with_(WDT, amount_cents=None), id="requested-null-amount"),
    pytest.param(WDT, without(WDT, "amount_cents"), id="requested-no-amount"),
    pytest.param(WDT, with_(WDT, amount_cents=0), id="withdraw-zero"),
    pytest.param(WDT, with_(WDT, type="approved", amount_cents=-3), id="approved-negative"),
    pytest.param(WDT, with_(WDT, type="done"), id="withdraw-type-unknown"),
    pytest.param(WDT, with_(WDT, channel=""), id="channel-empty"),
    pytest.param(SGN, b"[" + raw(SIGNUP) + b"]", id="array"),
    pytest.param(SGN, b"null", id="null"),
    pytest.param(SGN, b"", id="empty"),
    pytest.param(SGN, raw(SIGNUP) + b" {}", id="trailing-object"),
    pytest.param(SGN, raw(SIGNUP)[:-1] + b', "x": NaN}', id="nan"),
    pytest.param(SGN, raw(SIGNUP)[:-1] + b', "x": Infinity}', id="infinity"),
    pytest.param(SGN, raw(SIGNUP)[:-1] + b', "x": "\xff"}', id="invalid-utf8-in-extra"),
    pytest.param(SGN, b"\xef\xbb\xbf\xef\xbb\xbf" + raw(SIGNUP), id="two-boms"),
    pytest.param(SGN, raw(SIGNUP)[:-1] + b', "user_id": ""}', id="duplicate-key-last-bad"),
]


@pytest.mark.parametrize(("topic", "value"), GOOD)
def test_good_records_are_accepted_by_both(topic: str, value: bytes) -> None:
    assert decoder_accepts(topic, value), decode(topic, value)
    assert schema_accepts(topic, value)


@pytest.mark.parametrize(("topic", "value"), BAD)
def test_bad_records_are_refused_by_both(topic: str, value: bytes) -> None:
    assert not decoder_accepts(topic, value)
    assert not schema_accepts(topic, value)


# What JSON Schema cannot express: the decoder refuses it, the schema accepts it, and the schema says so.
DECODER_ONLY = [
    pytest.param(ORD, with_(ORD, amount_cents=100.0), publish.STRICT_INTEGERS, id="amount-100.0"),
    pytest.param(ORD, raw(ORDER).replace(b"100", b"1e2"), publish.STRICT_INTEGERS, id="amount-1e2"),
    pytest.param(ORD, with_(ORD, items=items(("a", 60), ("a", 40))), "each sku_id at most once", id="sku-twice"),
    pytest.param(ORD, with_(ORD, items=items(("a", 60), ("b", 39))), "add up exactly", id="items-sum"),
    pytest.param(SGN, raw(SIGNUP)[:-1] + b', "x": "\\ud800"}', "lone surrogate", id="lone-surrogate-escape"),
]


@pytest.mark.parametrize(("topic", "value", "note"), DECODER_ONLY)
def test_what_only_the_decoder_checks_is_listed_in_the_schema(topic: str, value: bytes, note: str) -> None:
    assert not decoder_accepts(topic, value)
    assert schema_accepts(topic, value)
    notes = validator(topic).schema["x-fenxiao-decoder-only"]
    assert any(note in n for n in notes), notes


# ---- outputs: the reference's records validate against the output schemas --------------------------


@pytest.mark.parametrize("example", V1_EXAMPLES)
def test_reference_outputs_validate_against_the_output_schemas(example: str) -> None:
    d = FIXTURES / example
    records = [json.loads(line) for line in (d / "events.jsonl").read_text(encoding="utf-8").splitlines() if line]
    run = reference.run(records, config.load(d / "fenxiao.toml"), 1_796_169_600_000)
    assert run.entries and run.bindings
    for topic, produced in ((names.COMMISSIONS, run.entries), (names.BINDINGS, run.bindings)):
        for rec in produced:
            errors = [e.message for e in validator(topic).iter_errors(rec)]
            assert not errors, (rec, errors)


def test_dead_letter_and_limited_click_records_validate() -> None:
    bad = b'{"event_id": "o9", "amount_cents": "x"}'
    dead = DeadLetter(names.ORDERS, 2, 41, None, "o9", "invalid_event", "amount_cents: ...", bad, TS)
    assert validator(names.DEAD_LETTERS).is_valid(dead.as_record())
    garbage = DeadLetter(names.ORDERS, 0, 0, b"k", None, "invalid_event", "not JSON", b"\xff\xfe", "")
    assert validator(names.DEAD_LETTERS).is_valid(json.loads(json.dumps(garbage.as_record())))
    limited = {"event_id": "c", "visitor_id": "v", "ip": None, "ref": "u", "campaign_id": None, "ts": TS}
    assert validator(names.CLICKS_LIMITED).is_valid({**limited, "reason": "ip_rate"})
    assert not validator(names.CLICKS_LIMITED).is_valid({**limited, "reason": "spam"})


COMMISSION = {
    "entry_id": "e1",
    "source_event_id": "o1-p",
    "ts": TS,
    "order_id": "o1",
    "buyer_id": "b1",
    "beneficiary_id": "u1",
    "level": 1,
    "kind": "accrued",
    "amount_cents": 10,
    "campaign_id": None,
}
MONEY_OUT = {**COMMISSION, "order_id": None, "buyer_id": None, "level": 0}
WITHDRAWN = {**MONEY_OUT, "kind": "withdrawn", "amount_cents": -500, "withdrawal_id": "w1"}


@pytest.mark.parametrize(
    ("entry", "ok"),
    [
        (COMMISSION, True),
        ({**COMMISSION, "kind": "reversed", "amount_cents": -10}, True),
        ({**COMMISSION, "kind": "reversed", "amount_cents": 10}, False),
        ({**COMMISSION, "amount_cents": 0}, False),
        ({**COMMISSION, "level": 0}, False),
        ({**COMMISSION, "order_id": None}, False),
        ({**COMMISSION, "ts": "2026-11-11T08:00:00.000+08:00"}, False),
        ({**COMMISSION, "kind": "bonus"}, False),
        ({**WITHDRAWN, "fee_cents": 5, "payout_cents": 495}, True),
        (WITHDRAWN, False),
        ({**WITHDRAWN, "fee_cents": 5, "payout_cents": 495, "order_id": "o1"}, False),
        ({**MONEY_OUT, "kind": "held", "amount_cents": -500, "withdrawal_id": "w1"}, True),
        ({**MONEY_OUT, "kind": "held", "amount_cents": -500}, False),
        ({**MONEY_OUT, "kind": "released", "amount_cents": 500, "withdrawal_id": "w1"}, True),
        ({**MONEY_OUT, "kind": "adjusted", "amount_cents": -7, "adjustment_id": "a1", "reason": "fix"}, True),
        ({**MONEY_OUT, "kind": "adjusted", "amount_cents": 0, "adjustment_id": "a1", "reason": "fix"}, False),
        ({**MONEY_OUT, "kind": "adjusted", "amount_cents": 7, "adjustment_id": "a1"}, False),
        ({**MONEY_OUT, "kind": "adjusted", "amount_cents": 7, "adjustment_id": "a1", "reason": "x", "level": 1}, False),
    ],
    ids=[
        "accrued",
        "reversed",
        "reversed-positive",
        "zero",
        "order-level-0",
        "order-no-order_id",
        "ts-not-canonical",
        "kind-unknown",
        "withdrawn",
        "withdrawn-no-fee",
        "withdrawn-with-order",
        "held",
        "held-no-withdrawal_id",
        "released",
        "adjusted",
        "adjusted-zero",
        "adjusted-no-reason",
        "adjusted-level-1",
    ],
)
def test_commission_schema_per_kind(entry: dict[str, Any], ok: bool) -> None:
    assert validator(names.COMMISSIONS).is_valid(entry) is ok
