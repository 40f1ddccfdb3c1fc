"""The spec's example scenarios: the reference run reaches each expected.json exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from streams.engine import config, outcome, reference

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXAMPLES = ["basic", "two-level", "messy", "v2/money-out"]

# Every scenario ends by 2026-11-11T00:11Z. basic and messy freeze for 0 s (orders settle at completion), money-out
# for 20 s;
# two-level freezes for 10 years (315360000 s), so with the clock a few weeks after the scenario nothing settles.
NOW_MS = 1_796_169_600_000  # 2026-12-02T00:00:00.000Z = 2026-11-11 + 21 days (21 × 86400000 ms)


def load(name: str) -> tuple[list[dict[str, Any]], config.Program, dict[str, Any]]:
    d = FIXTURES / name
    lines = (d / "events.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    expected = json.loads((d / "expected.json").read_text(encoding="utf-8"))
    return records, config.load(d / "fenxiao.toml"), expected


def summarize(records: list[dict[str, Any]], program: config.Program, now_ms: int = NOW_MS) -> dict[str, Any]:
    run = reference.run(records, program, now_ms)
    return outcome.summarize(run.entries, run.bindings, run.dead_letters)


def check(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    problems = outcome.diff(actual, expected)
    assert not problems, "\n".join(problems)
    assert actual == expected


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_outcome(name: str) -> None:
    records, program, expected = load(name)
    check(summarize(records, program), expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", EXAMPLES)
def test_shuffled_input_gives_the_same_outcome(name: str, seed: int) -> None:
    """The order is defined by (ts, topic, event_id) only, never by the order lines arrive in."""
    records, program, expected = load(name)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    assert shuffled != records
    check(summarize(shuffled, program), expected)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_record_delivered_twice_gives_the_same_outcome(name: str) -> None:
    """A repeated event_id is a redelivery: it changes nothing and dead-letters nothing."""
    records, program, expected = load(name)
    doubled = records + records
    random.Random(7).shuffle(doubled)
    check(summarize(doubled, program), expected)


@pytest.mark.parametrize("name", EXAMPLES)
def test_entry_ids_unique_and_deterministic(name: str) -> None:
    records, program, _ = load(name)
    first = reference.run(records, program, NOW_MS)
    ids = [e["entry_id"] for e in first.entries]
    assert len(ids) == len(set(ids))
    again = reference.run(records, program, NOW_MS)
    assert [e["entry_id"] for e in again.entries] == ids
    shuffled = list(records)
    random.Random(11).shuffle(shuffled)
    assert sorted(e["entry_id"] for e in reference.run(shuffled, program, NOW_MS).entries) == sorted(ids)


def test_two_level_nothing_settles_before_the_freeze_ends() -> None:
    records, program, expected = load("two-level")
    assert program.freeze_ms == 315_360_000_000
    assert expected["totals"]["settled"] == 0
    # the clock just before the earliest possible settle moment (first ts + 10 years) still settles nothing
    ten_years_after_start = 1_794_351_600_000 + 315_360_000_000  # 2026-11-10T23:00:00.000Z + freeze
    check(summarize(records, program, ten_years_after_start - 1), expected)


def test_two_level_settles_everything_completed_once_the_clock_passes() -> None:
    """Far past the 10-year freeze every completed order settles: nothing stays pending for completed orders."""
    records, program, _ = load("two-level")
    late = summarize(records, program, 1_794_355_200_000 + 315_360_000_000 + 86_400_000)
    completed = {
        r["value"]["order_id"]
        for r in records
        if r["topic"] == "fenxiao.orders" and r["value"].get("type") == "completed"
    }
    entries = late["entries"]
    settled_orders = set()
    for key, amount in entries.items():
        order_id, level, who, kind = key.split("|")
        if kind != "settled":
            continue
        settled_orders.add(order_id)
        assert order_id in completed, key
        # no event comes after a 10-year freeze, so what settles is exactly what is left of the accrual
        net = entries[f"{order_id}|{level}|{who}|accrued"] + entries.get(f"{order_id}|{level}|{who}|reversed", 0)
        assert amount == net > 0, key
    assert len(settled_orders) > 10
    assert late["totals"]["clawed_back"] == 0
    for who, bal in late["balances"].items():
        assert bal["available_cents"] >= 0, who


def test_money_out_balances_carry_all_four_and_match_their_formulas() -> None:
    """The balances of expected.json follow from its own entries by the spec's v2 formulas, and no one overdraws."""
    records, program, expected = load("v2/money-out")
    got = summarize(records, program)
    sums: dict[str, dict[str, int]] = {}
    for key, amount in expected["entries"].items():
        _, _, who, kind = key.split("|")
        b = sums.setdefault(who, {"available_cents": 0, "pending_cents": 0, "reserved_cents": 0, "withdrawn_cents": 0})
        if kind in ("accrued", "reversed"):
            b["pending_cents"] += amount
        if kind == "settled":
            b["pending_cents"] -= amount
        if kind in ("settled", "clawed_back", "adjusted", "held", "released"):
            b["available_cents"] += amount
        if kind in ("held", "released"):
            b["reserved_cents"] -= amount
        if kind == "withdrawn":
            b["reserved_cents"] += amount
            b["withdrawn_cents"] -= amount
    assert sums == expected["balances"] == got["balances"]
    assert all(
        set(b) == {"available_cents", "pending_cents", "reserved_cents", "withdrawn_cents"} for b in sums.values()
    )


def test_money_out_withdrawn_entries_carry_fee_and_payout() -> None:
    """fee 60 bps half up, at least 10 cents: 30000 → 180, 500 → 3 → 10."""
    records, program, _ = load("v2/money-out")
    run = reference.run(records, program, NOW_MS)
    fees = {
        e["withdrawal_id"]: (e["amount_cents"], e["fee_cents"], e["payout_cents"])
        for e in run.entries
        if e["kind"] == "withdrawn"
    }
    assert fees == {
        "wd-4-12": (-30000, 180, 29820),  # 30000×60 = 1800000 + 5000 → 180
        "wd-4-3": (-30000, 180, 29820),
        "wd-4-1": (-500, 10, 490),  # 500×60 = 30000 + 5000 → 3, raised to 10
        "wd-4-2": (-500, 10, 490),
        "wd-4-15": (-500, 10, 490),
    }
