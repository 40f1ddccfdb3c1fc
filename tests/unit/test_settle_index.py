"""The settlement index finds due orders in (moment, id) order without rescanning every scheduled order."""

from __future__ import annotations

import pytest

from streams.engine.ledger import SettleIndex


def _index(schedule: list[tuple[str, int | None]]) -> SettleIndex:
    """Apply (order, moment) writes in sequence; a None moment unschedules the order."""
    idx = SettleIndex()
    for oid, at in schedule:
        if at is None:
            idx.pop(oid, None)
        else:
            idx[oid] = at
    return idx


@pytest.mark.parametrize(
    ("schedule", "until", "due"),
    [
        ([("a", 300), ("b", 100), ("c", 200)], 250, ["b", "c"]),
        ([("a", 300), ("b", 100), ("c", 200)], 300, ["b", "c", "a"]),
        ([("a", 300), ("b", 100), ("c", 200)], 99, []),
        ([("y", 5), ("x", 5), ("z", 5)], 5, ["x", "y", "z"]),
        ([("a", 300), ("a", 100)], 1000, ["a"]),
        ([("a", 100), ("a", 300)], 200, []),
        ([("a", 100), ("a", 300)], 300, ["a"]),
        ([("a", 100), ("a", None)], 1000, []),
        ([("a", 100), ("a", None), ("a", 100)], 1000, ["a"]),
        ([("a", 100), ("a", 100)], 1000, ["a"]),
    ],
)
def test_due_orders_in_moment_then_id_order_each_once(
    schedule: list[tuple[str, int | None]], until: int, due: list[str]
) -> None:
    """Changed, removed and repeated schedules yield each order's current moment once."""
    assert list(_index(schedule).pop_due(until)) == due


def test_a_later_call_continues_where_the_earlier_stopped() -> None:
    """Each batch settles up to a later bound; nothing due is skipped and nothing is yielded twice."""
    idx = _index([("a", 10), ("b", 20), ("c", 30), ("d", 40)])
    assert list(idx.pop_due(15)) == ["a"]
    idx["e"] = 12
    assert list(idx.pop_due(30)) == ["e", "b", "c"]
    assert list(idx.pop_due(30)) == []
    assert list(idx.pop_due(100)) == ["d"]
