"""The outcome summary counts a replayed record once: entries by entry_id, dead letters by their source."""

from __future__ import annotations

from streams.engine import outcome


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


def _money(entry_id: str, kind: str, amount: int, who: str = "u1", **ids: str) -> dict[str, object]:
    return {
        "entry_id": entry_id,
        "order_id": None,
        "level": 0,
        "beneficiary_id": who,
        "kind": kind,
        "amount_cents": amount,
        **ids,
    }


def test_v2_kinds_key_by_withdrawal_or_adjustment_and_fill_all_four_balances() -> None:
    entries = [
        _entry("e1", "accrued", 1000),
        _entry("e2", "settled", 800),
        _money("a1", "adjusted", 500, adjustment_id="aw"),
        _money("h1", "held", -600, withdrawal_id="w1"),
        _money("h1", "held", -600, withdrawal_id="w1"),  # replayed: counts once
        _money("x1", "withdrawn", -600, withdrawal_id="w1"),
        _money("h2", "held", -300, withdrawal_id="w2"),
        _money("r2", "released", 300, withdrawal_id="w2"),
        _money("h3", "held", -100, withdrawal_id="w3"),
    ]
    s = outcome.summarize(entries, [], [])
    # pending 1000 − 800 = 200; available 800 + 500 − 600 − 300 + 300 − 100 = 600
    # reserved 600 + 300 − 300 + 100 − 600 = 100; withdrawn 600
    assert s["balances"] == {
        "u1": {"available_cents": 600, "pending_cents": 200, "reserved_cents": 100, "withdrawn_cents": 600}
    }
    assert s["entries"] == {
        "o1|1|u1|accrued": 1000,
        "o1|1|u1|settled": 800,
        "a:aw|0|u1|adjusted": 500,
        "w:w1|0|u1|held": -600,
        "w:w1|0|u1|withdrawn": -600,
        "w:w2|0|u1|held": -300,
        "w:w2|0|u1|released": 300,
        "w:w3|0|u1|held": -100,
    }
    assert s["totals"] == {
        "accrued": 1000,
        "reversed": 0,
        "settled": 800,
        "clawed_back": 0,
        "held": -1000,
        "released": 300,
        "withdrawn": -600,
        "adjusted": 500,
    }


def test_v1_runs_keep_the_v1_shape_unless_asked() -> None:
    entries = [_entry("e1", "accrued", 100)]
    v1 = outcome.summarize(entries, [], [])
    assert v1["balances"] == {"u1": {"available_cents": 0, "pending_cents": 100}}
    assert list(v1["totals"]) == ["accrued", "reversed", "settled", "clawed_back"]
    v2 = outcome.summarize(entries, [], [], v2=True)
    assert v2["balances"] == {
        "u1": {"available_cents": 0, "pending_cents": 100, "reserved_cents": 0, "withdrawn_cents": 0}
    }
    assert v2["totals"]["held"] == 0
    forced_v1 = outcome.summarize([_money("a1", "adjusted", 5, adjustment_id="x")], [], [], v2=False)
    assert forced_v1["balances"] == {"u1": {"available_cents": 5, "pending_cents": 0}}
