"""The projector's planning: the team index as a closure in any reading order, duplicates skipped, live counted once."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from streams import names
from streams.engine.ledger import ACCRUED, SETTLED, Binding, Entry
from streams.state.projections import board_key, feed_key, live_key, team_key
from streams.state.projector import Tree, candidates, entry_of, paid_needed, plan_batch, seen_key

T0 = 1_794_355_200_000  # 2026-11-11T00:00:00Z
NOW_MS = 1_800_000_000_500

# b, c, d signed up under a chain a <- b <- c <- d; x bound to b on its first purchase and brought its own
# recruits y (under x) and z (under y). Bind ts = T0 + i, so members are "{T0 + i:013d}|user".
EDGES = [
    Binding("b", "a", T0 + 1, "signup"),
    Binding("c", "b", T0 + 2, "signup"),
    Binding("d", "c", T0 + 3, "signup"),
    Binding("y", "x", T0 + 4, "signup"),
    Binding("z", "y", T0 + 5, "signup"),
    Binding("x", "b", T0 + 6, "order"),
]


def m(user: str, i: int) -> str:
    return f"{T0 + i:013d}|{user}"


# Worked out by hand from the tree: a's level 2 is b's recruits (c, and x bound to b), and so on.
FINAL_TEAMS = {
    team_key(1, "a"): {m("b", 1)},
    team_key(2, "a"): {m("c", 2), m("x", 6)},
    team_key(3, "a"): {m("d", 3), m("y", 4)},
    team_key(1, "b"): {m("c", 2), m("x", 6)},
    team_key(2, "b"): {m("d", 3), m("y", 4)},
    team_key(3, "b"): {m("z", 5)},
    team_key(1, "c"): {m("d", 3)},
    team_key(1, "x"): {m("y", 4)},
    team_key(2, "x"): {m("z", 5)},
    team_key(1, "y"): {m("z", 5)},
}


def zsets(commands: list[list[str]], into: dict[str, set[str]]) -> dict[str, set[str]]:
    """Play the ZADDs of a plan over a model of Redis' sorted sets (members only; scores are all 0)."""
    for c in commands:
        if c[0] == "ZADD":
            into[c[1]].update(c[3::2])
    return into


def entry(beneficiary: str, level: int, kind: str, amount: int, source: str = "e-o1", order: str = "o1") -> Entry:
    return Entry(f"{source}:{level}:{kind}", source, T0 + 1000, order, "buyer", beneficiary, level, kind, amount, "d11")


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(EDGES)))))
def test_team_index_is_the_trees_closure_in_any_reading_order(order: tuple[int, ...]) -> None:
    """Bindings arrive by user partition, so in any order; each batch sees only the bindings read so far."""
    tree, redis = Tree(), defaultdict(set)
    for i in order:
        tree.bind(EDGES[i])
        zsets(plan_batch([], [EDGES[i]], tree, set(), {}, NOW_MS).commands, redis)
    assert {k: v for k, v in redis.items() if k.startswith(names.KEY_TEAM)} == FINAL_TEAMS


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4, 5), (5, 4, 3, 2, 1, 0), (3, 5, 0, 4, 2, 1)])
def test_team_index_from_a_tree_loaded_ahead_of_the_projection(order: tuple[int, ...]) -> None:
    """After a restart the tree holds the whole topic before the projection catches up: same final index."""
    tree, redis = Tree(), defaultdict(set)
    for b in EDGES:
        tree.bind(b)
    for i in order:
        zsets(plan_batch([], [EDGES[i]], tree, set(), {}, NOW_MS).commands, redis)
    assert {k: v for k, v in redis.items() if k.startswith(names.KEY_TEAM)} == FINAL_TEAMS


def test_a_binding_already_projected_or_without_inviter_writes_nothing() -> None:
    tree = Tree()
    tree.bind(EDGES[0])
    done = plan_batch([], [EDGES[0]], tree, {"b:b"}, {}, NOW_MS)
    unbound = plan_batch([], [Binding("q", None, T0, "signup")], tree, set(), {}, NOW_MS)
    assert done.commands == [] and unbound.commands == []


def test_recruits_count_each_bound_user_once_even_when_the_record_repeats() -> None:
    tree = Tree()
    tree.bind(EDGES[0])
    plan = plan_batch([], [EDGES[0], EDGES[0]], tree, set(), {}, NOW_MS)
    recruits = [c for c in plan.commands if c[0] == "ZINCRBY" and c[1] == board_key("recruits", "all", "all")]
    assert recruits == [["ZINCRBY", board_key("recruits", "all", "all"), "1", "a"]]
    assert plan.seen == {seen_key(T0 + 1): ["b:b"]}


def test_a_repeated_entry_is_fed_once_and_one_projected_before_not_at_all() -> None:
    """The worker may produce a batch twice (killed between produce and commit): the copies carry one entry id."""
    e1, e2 = entry("a", 1, ACCRUED, 1000), entry("b", 2, ACCRUED, 500)
    paid = {"e-o1": 12_345}
    plan = plan_batch([e1, e1, e2], [], Tree(), {"e:" + e2.entry_id}, paid, NOW_MS)
    xadds = [c[1] for c in plan.commands if c[0] == "XADD"]
    assert xadds == [feed_key("a"), names.KEY_FEED_ALL]


def test_gmv_is_the_paid_amount_of_the_level1_accrual() -> None:
    plan = plan_batch(
        [entry("a", 1, ACCRUED, 1000), entry("b", 2, ACCRUED, 500)], [], Tree(), set(), {"e-o1": 12_345}, NOW_MS
    )
    gmv = {(c[1], c[3]): int(c[2]) for c in plan.commands if c[0] == "ZINCRBY" and ":gmv:" in c[1]}
    assert gmv[(board_key("gmv", "month", "2026-11"), "a")] == 12_345
    assert (board_key("gmv", "month", "2026-11"), "b") not in gmv


def test_live_counts_an_order_once_when_its_entries_land_in_two_batches() -> None:
    """Level 1 in one batch, level 2 in the next (other partitions): the order and its paid cents once."""
    already: set[str] = set()
    paid = {"e-o1": 12_345}
    first = plan_batch([entry("a", 1, ACCRUED, 1000)], [], Tree(), already, paid, NOW_MS)
    second = plan_batch([entry("b", 2, ACCRUED, 500)], [], Tree(), already, paid, NOW_MS)
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for c in first.commands + second.commands:
        if c[0] == "HINCRBY":
            sums[(c[1], c[2])] += int(c[3])
    for key in (live_key(1_800_000_000), live_key(1_800_000_000, "d11")):
        assert (sums[(key, "o")], sums[(key, "g")], sums[(key, "c")]) == (1, 12_345, 1500)


def test_settlement_moves_no_earnings_and_counts_no_order() -> None:
    plan = plan_batch([entry("a", 1, SETTLED, 900, source="e-done")], [], Tree(), set(), {}, NOW_MS)
    assert not [c for c in plan.commands if c[0] == "HINCRBY"]
    assert not [c for c in plan.commands if c[0] == "ZINCRBY" and ":earnings:" in c[1]]


def test_what_to_ask_redis_and_clickhouse_before_planning() -> None:
    e1, e2, s = entry("a", 1, ACCRUED, 10), entry("b", 2, ACCRUED, 5, source="e-o2"), entry("a", 1, SETTLED, 9, "e-c")
    late = Binding("q", "a", T0 + 86_400_000, "click")  # the next UTC day: another set
    assert candidates([e1], [EDGES[0], late]) == {
        seen_key(T0): {"e:" + e1.entry_id, "p:e-o1", "b:b"},
        seen_key(T0 + 86_400_000): {"b:q"},
    }
    assert seen_key(T0 + 86_400_000) == names.KEY_PJ_SEEN + "2026-11-12"
    # e2's order was counted live already and level 2 needs no GMV; the settlement needs no amount.
    assert paid_needed([e1, e2, s], {"p:e-o2"}) == {"e-o1"}
    assert paid_needed([e1], {"e:" + e1.entry_id}) == set()


def test_a_commissions_record_becomes_an_entry() -> None:
    record = {
        "entry_id": "e-o1:1:accrued",
        "source_event_id": "e-o1",
        "ts": "2026-11-11T00:00:01.000Z",
        "order_id": "o1",
        "buyer_id": "buyer",
        "beneficiary_id": "a",
        "level": 1,
        "kind": "accrued",
        "amount_cents": 1000,
        "campaign_id": None,
    }
    e = entry_of(record)
    assert (e.ts_ms, e.campaign_id, e.amount_cents) == (T0 + 1000, None, 1000)
    assert e.as_record() == record
