"""The outcome summary counts a replayed record once: entries by entry_id, dead letters by their source."""

from __future__ import annotations

from streams import outcome


def _entry(entry_id: str, kind: str, amount: int, who: str = "u1") -> dict[str, object]:
    return {
        "entry_id": entry_id,
        "order_id": "o1",
        "level": 1,
        "beneficiary_id": who,
        "kind": kind,
        "amount_cents": amount,
    }


def test_replayed_entries_count_once_and_balances_follow_the_spec() -> None:
    entries = [
        _entry("e1", "accrued", 100),
        _entry("e1", "accrued", 100),
        _entry("e2", "settled", 60),
        _entry("e3", "clawed_back", -10),
    ]
    s = outcome.summarize(entries, [], [])
    assert s["totals"] == {"accrued": 100, "reversed": 0, "settled": 60, "clawed_back": -10}
    assert s["balances"] == {"u1": {"available_cents": 50, "pending_cents": 40}}
    assert s["entries"] == {"o1|1|u1|accrued": 100, "o1|1|u1|settled": 60, "o1|1|u1|clawed_back": -10}


def test_replayed_dead_letters_count_once_by_source_coordinates() -> None:
    d1 = {"topic": "fenxiao.orders", "partition": 0, "offset": 7, "reason": "over_refund"}
    d2 = {"topic": "fenxiao.orders", "partition": 1, "offset": 7, "reason": "over_refund"}
    d3 = {"topic": "fenxiao.signups", "partition": 0, "offset": 7, "reason": "duplicate_user"}
    s = outcome.summarize([], [], [d1, dict(d1), d2, d3, dict(d3)])
    assert s["dead_letters"] == {"duplicate_user": 1, "over_refund": 2}


def test_latest_binding_per_user_wins() -> None:
    b = [{"user_id": "u2", "inviter_id": None}, {"user_id": "u2", "inviter_id": "u1"}]
    assert outcome.summarize([], b, [])["bindings"] == {"u2": "u1"}
