"""The API's read models over hand-built state: which Redis commands each projection queues in the batch."""

from __future__ import annotations

from typing import Any

from streams import names
from streams.ledger import ACCRUED, CLAWED_BACK, REVERSED, SETTLED, Binding, Entry, OrderState, State, User
from streams.projections import (
    CampaignLive,
    Leaderboards,
    LedgerFeed,
    TeamIndex,
    board_key,
    bucket,
    entry_fields,
    entry_from_fields,
    live_key,
    team_key,
)

T0 = 1_794_355_200_000  # 2026-11-11T00:00:00Z


class FakePipe:
    """Records (command, args, kwargs) like a redis pipeline in MULTI would queue them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [a for n, a, _ in self.calls if n == name]


def entry(
    beneficiary: str, level: int, kind: str, amount: int, order: str = "o1", campaign: str | None = "d11"
) -> Entry:
    return Entry(
        f"e-{order}:{level}:{kind}", f"e-{order}", T0 + 1000, order, "buyer", beneficiary, level, kind, amount, campaign
    )


def chain_state() -> State:
    """a <- b <- c <- d (d's inviter is c, ...), plus x with no inviter."""
    s = State()
    s.users["a"] = User(T0, True, None, "sa")
    s.users["b"] = User(T0, True, "a", "sb")
    s.users["c"] = User(T0, True, "b", "sc")
    s.users["d"] = User(T0, True, "c", "sd")
    s.users["x"] = User(T0, True, None, "sx")
    s.orders["o1"] = OrderState(buyer_id="buyer", campaign_id="d11", paid=True, paid_cents=12_345)
    return s


def test_entry_fields_round_trip() -> None:
    e = entry("a", 2, REVERSED, -17, campaign=None)
    assert entry_from_fields({k: str(v) for k, v in entry_fields(e).items()}) == e


def test_feed_appends_each_entry_to_its_beneficiary_and_the_operator_stream_capped() -> None:
    p = FakePipe()
    LedgerFeed(maxlen=100, all_maxlen=1000).stage(
        p, chain_state(), [entry("a", 1, ACCRUED, 5), entry("b", 2, ACCRUED, 3)], []
    )
    xadds = [(a[0], kw["maxlen"], kw["approximate"]) for n, a, kw in p.calls if n == "xadd"]
    assert xadds == [
        (names.KEY_FEED + "a", 100, True),
        (names.KEY_FEED_ALL, 1000, True),
        (names.KEY_FEED + "b", 100, True),
        (names.KEY_FEED_ALL, 1000, True),
    ]
    assert p.of("xadd")[0][1]["a"] == 5


def test_team_binding_joins_three_levels_of_the_chain() -> None:
    p = FakePipe()
    TeamIndex().stage(p, chain_state(), [], [Binding("new", "d", T0 + 5, "signup")])
    member = f"{T0 + 5:013d}|new"
    assert p.of("zadd") == [
        (team_key(1, "d"), {member: 0}),
        (team_key(2, "c"), {member: 0}),
        (team_key(3, "b"), {member: 0}),
    ]
    assert p.of("zunionstore") == []


def test_team_ignores_bindings_without_inviter() -> None:
    p = FakePipe()
    TeamIndex().stage(p, chain_state(), [], [Binding("x", None, T0, "signup")])
    assert p.calls == []


def test_order_time_binding_moves_the_users_existing_team_under_the_new_chain() -> None:
    """x (with recruits, no inviter) binds to b on first purchase: x's L1 -> b's L2, a's L3; x's L2 -> b's L3."""
    s = chain_state()
    s.users["x"] = User(T0, True, "b", "sx")
    p = FakePipe()
    TeamIndex().stage(p, s, [], [Binding("x", "b", T0 + 9, "order")])
    unions = {(a[0], tuple(a[1])) for a in p.of("zunionstore")}
    assert unions == {
        (team_key(2, "b"), (team_key(2, "b"), team_key(1, "x"))),
        (team_key(3, "a"), (team_key(3, "a"), team_key(1, "x"))),
        (team_key(3, "b"), (team_key(3, "b"), team_key(2, "x"))),
    }
    assert all(kw["aggregate"] == "MAX" for n, _, kw in p.calls if n == "zunionstore")


def test_buckets_are_utc_day_month_quarter() -> None:
    ts = T0 - 1  # 2026-11-10T23:59:59.999Z
    assert [bucket(p, ts) for p in ("day", "month", "quarter", "all")] == ["2026-11-10", "2026-11", "2026-Q4", "all"]
    assert bucket("quarter", 1_767_225_600_000) == "2026-Q1"  # 2026-01-01


def test_leaderboards_net_earnings_gmv_for_level1_and_recruits() -> None:
    p = FakePipe()
    entries = [
        entry("a", 1, ACCRUED, 1000),
        entry("b", 2, ACCRUED, 500),
        entry("a", 1, REVERSED, -100),
        entry("a", 1, SETTLED, 900),
        entry("b", 2, CLAWED_BACK, -50),
    ]
    Leaderboards().stage(p, chain_state(), entries, [Binding("n", "a", T0 + 2, "click")])
    incr = {(a[0], a[2]): a[1] for a in p.of("zincrby")}
    day = "2026-11-11"
    assert incr[(board_key("earnings", "day", day), "a")] == 900
    assert incr[(board_key("earnings", "day", day), "b")] == 450
    assert incr[(board_key("earnings", "quarter", "2026-Q4", "d11"), "a")] == 900
    assert incr[(board_key("gmv", "month", "2026-11"), "a")] == 12_345
    assert (board_key("gmv", "month", "2026-11"), "b") not in incr
    assert incr[(board_key("recruits", "all", "all"), "a")] == 1
    assert not any(k.startswith(names.KEY_BOARD + "recruits") and k.endswith("d11") for k, _ in incr)
    expired = {a[0] for a in p.of("expire")}
    assert board_key("earnings", "day", day) in expired and board_key("earnings", "all", "all") not in expired


def test_campaign_live_counts_orders_gmv_and_commission_per_commit_second() -> None:
    p = FakePipe()
    now_ms = 1_800_000_000_123
    entries = [entry("a", 1, ACCRUED, 1000), entry("b", 2, ACCRUED, 500), entry("a", 1, SETTLED, 7, order="o9")]
    CampaignLive(lambda: now_ms).stage(p, chain_state(), entries, [])
    got: dict[tuple[str, str], int] = {(a[0], a[1]): a[2] for a in p.of("hincrby")}
    for key in (live_key(1_800_000_000), live_key(1_800_000_000, "d11")):
        assert got[(key, "o")] == 1
        assert got[(key, "g")] == 12_345
        assert got[(key, "c")] == 1500
    assert all(a[1] > 0 for a in p.of("expire"))


def test_campaign_live_writes_nothing_for_a_batch_without_entries() -> None:
    p = FakePipe()
    CampaignLive().stage(p, chain_state(), [], [Binding("n", "a", T0, "signup")])
    assert p.calls == []
