"""The demo's operator epilogue: valid v2 events that the pure engine applies as the demo says (hand-computed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from schemas.events import Invalid, decode
from streams import names
from streams.engine import config, outcome, reference
from streams.ops import demo, demo_money, flashsale

PROGRAM = config.parse(demo.program_toml())  # standard 10/5/2 %, freeze 20 s, fee 60 bps at least 10 cents
MONEY_TOPICS = set(names.V2_INPUT_TOPICS)


def rec(topic: str, key: str, **value: Any) -> dict[str, Any]:
    return {"topic": topic, "key": key, "value": value}


def tiny_sale() -> list[dict[str, Any]]:
    """Roots r1..r6 each invite one buyer b_i, who pays and completes an order: r_i earns 10% at level 1."""
    paid = [100_000, 80_000, 60_000, 40_000, 30_000, 15_000]
    out = []
    for i, cents in enumerate(paid, 1):
        out.append(rec(names.SIGNUPS, f"r{i}", event_id=f"sr{i}", ts=f"2026-11-11T00:00:0{i}.000Z", user_id=f"r{i}"))
        out.append(
            rec(
                names.SIGNUPS,
                f"b{i}",
                event_id=f"sb{i}",
                ts=f"2026-11-11T00:00:1{i}.000Z",
                user_id=f"b{i}",
                ref=f"r{i}",
            )
        )
        order = {"order_id": f"o{i}", "buyer_id": f"b{i}"}
        out.append(
            rec(names.ORDERS, f"b{i}", event_id=f"p{i}", ts=f"2026-11-11T00:01:0{i}.000Z", type="paid",
                amount_cents=cents, **order)
        )  # fmt: skip
        out.append(
            rec(names.ORDERS, f"b{i}", event_id=f"c{i}", ts=f"2026-11-11T00:02:0{i}.000Z", type="completed", **order)
        )
    return out


def test_the_tiny_sale_gets_the_stories_in_order_of_available_balance() -> None:
    sale = tiny_sale()
    script = demo_money.script(sale, PROGRAM)
    # available after settlement: r1 10000, r2 8000, r3 6000, r4 4000, r5 3000, r6 1500 (below the ¥20 candidate floor)
    steps = [
        (r["topic"], r["value"].get("type") or r["value"].get("status") or r["value"]["adjustment_id"],
         r["value"].get("user_id") or r["value"]["distributor_id"], r["value"].get("amount_cents"))
        for r in script.records
    ]  # fmt: skip
    assert steps == [
        (names.DISTRIBUTORS, "frozen", "r5", None),
        (names.ADJUSTMENTS, "demo-adj-1", "r3", 1000),
        (names.ADJUSTMENTS, "award:2026-11:earnings:1", "r1", 20000),
        (names.ADJUSTMENTS, "award:2026-11:earnings:2", "r2", 10000),
        (names.ADJUSTMENTS, "award:2026-11:earnings:3", "r3", 5000),
        (names.WITHDRAWALS, "requested", "r1", 5000),
        (names.WITHDRAWALS, "requested", "r2", 4000),
        (names.WITHDRAWALS, "requested", "r3", 3000),
        (names.WITHDRAWALS, "requested", "r4", 2000),
        (names.WITHDRAWALS, "requested", "r5", 1500),
        (names.WITHDRAWALS, "approved", "r1", None),
        (names.WITHDRAWALS, "paid", "r1", None),
        (names.WITHDRAWALS, "approved", "r2", None),
        (names.WITHDRAWALS, "rejected", "r4", None),
    ]
    # last sale event 00:02:06 + 20 s freeze + 1 s: the operators start at 00:02:27, one second apart
    assert [r["value"]["ts"] for r in script.records[:2]] == ["2026-11-11T00:02:27.000Z", "2026-11-11T00:02:28.000Z"]
    assert "withdrawal demo-wd-1: r1 ¥50.00 requested, approved, paid (fee ¥0.30, payout ¥49.70)" in script.lines


def test_the_engine_applies_the_tiny_epilogue_to_hand_computed_balances() -> None:
    sale = tiny_sale()
    money = demo_money.script(sale, PROGRAM).records
    run = reference.run(sale + money, PROGRAM, now_ms=1_796_169_600_000)
    summary = outcome.summarize(run.entries, run.bindings, run.dead_letters)

    def bal(available: int, reserved: int = 0, withdrawn: int = 0) -> dict[str, int]:
        return {
            "available_cents": available,
            "pending_cents": 0,
            "reserved_cents": reserved,
            "withdrawn_cents": withdrawn,
        }

    assert {u: b for u, b in summary["balances"].items() if u.startswith("r")} == {
        "r1": bal(10000 + 20000 - 5000, 0, 5000),  # award #1, paid out 5000
        "r2": bal(8000 + 10000 - 4000, 4000),  # award #2, 4000 approved and reserved
        "r3": bal(6000 + 1000 + 5000 - 3000, 3000),  # goodwill 1000, award #3, 3000 waiting for review
        "r4": bal(4000),  # 2000 held, then released by the rejection
        "r5": bal(3000),  # frozen: the request moved nothing
        "r6": bal(1500),
    }
    (paid,) = [e for e in run.entries if e["kind"] == "withdrawn"]
    assert (paid["beneficiary_id"], paid["amount_cents"], paid["fee_cents"], paid["payout_cents"]) == (
        "r1",
        -5000,
        30,
        4970,
    )
    refused = [d for d in run.dead_letters if d["topic"] in MONEY_TOPICS]
    assert [(d["event_id"], d["reason"]) for d in refused] == [(money[9]["value"]["event_id"], "distributor_frozen")]


def test_a_generated_sale_gets_valid_events_and_only_the_frozen_request_is_refused() -> None:
    sale = list(flashsale.generate(300, 2000, 5, datetime(2026, 11, 30, 23, 50, tzinfo=UTC), 60))
    script = demo_money.script(sale, PROGRAM)
    for r in script.records:
        assert r["topic"] in MONEY_TOPICS
        ev = decode(r["topic"], json.dumps(r["value"]).encode())
        assert not isinstance(ev, Invalid), ev
        assert r["key"] == r["value"].get("distributor_id", r["value"].get("user_id"))
    assert len({r["value"]["event_id"] for r in sale + script.records}) == len(sale) + len(script.records)
    kinds = [r["value"].get("type") for r in script.records if r["topic"] == names.WITHDRAWALS]
    assert sorted(k for k in kinds if k) == ["approved", "approved", "paid", "rejected", *["requested"] * 5]
    run = reference.run(sale + script.records, PROGRAM, now_ms=1_796_169_600_000)
    refused = [d["reason"] for d in run.dead_letters if d["topic"] in MONEY_TOPICS]
    assert refused == ["distributor_frozen"]
    money_kinds = sorted(e["kind"] for e in run.entries if e["level"] == 0)
    assert money_kinds == ["adjusted"] * 4 + ["held"] * 4 + ["released", "withdrawn"]


def test_no_sale_no_operators() -> None:
    assert demo_money.script([], PROGRAM).records == []
    nobody_earned = [rec(names.SIGNUPS, "r1", event_id="s1", ts="2026-11-11T00:00:00.000Z", user_id="r1")]
    assert demo_money.script(nobody_earned, PROGRAM).records == []
