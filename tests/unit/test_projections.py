"""The API's read models over hand-built state: which Redis commands the feed and the leaderboards queue."""

from __future__ import annotations

from streams import names
from streams.engine.ledger import (
    ACCRUED,
    ADJUSTED,
    CLAWED_BACK,
    HELD,
    RELEASED,
    REVERSED,
    SETTLED,
    WITHDRAWN,
    Binding,
    Entry,
    OrderState,
    State,
    User,
)
from streams.state.projections import (
    Leaderboards,
    LedgerFeed,
    board_key,
    bucket,
    entry_fields,
    entry_from_fields,
)
from streams.state.referral_store import StagedCommands

T0 = 1_794_355_200_000  # 2026-11-11T00:00:00Z


def queued(p: StagedCommands, command: str) -> list[list[str]]:
    """The arguments of every queued `command` (ZINCRBY, EXPIRE, ...), in queue order."""
    return [c[1:] for c in p.commands if c[0] == command]


def increments(p: StagedCommands) -> dict[tuple[str, str], int]:
    """(leaderboard key, member) -> the ZINCRBY amount queued for it (each pair queued once per batch)."""
    pairs = [((key, who), int(amount)) for key, amount, who in queued(p, "ZINCRBY")]
    assert len(pairs) == len(dict(pairs)), "a key and member incremented twice in one batch"
    return dict(pairs)


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
    got = StagedCommands()
    a, b = entry("a", 1, ACCRUED, 5), entry("b", 2, ACCRUED, 3)
    LedgerFeed(maxlen=100, all_maxlen=1000).stage(got, chain_state(), [a, b], [])
    # The same commands as redis-py's own xadd() spells them, field for field.
    want = StagedCommands()
    for e in (a, b):
        want.xadd(names.KEY_FEED + e.beneficiary_id, entry_fields(e), maxlen=100, approximate=True)
        want.xadd(names.KEY_FEED_ALL, entry_fields(e), maxlen=1000, approximate=True)
    assert got.commands == want.commands
    assert [c[1] for c in got.commands] == [
        names.KEY_FEED + "a",
        names.KEY_FEED_ALL,
        names.KEY_FEED + "b",
        names.KEY_FEED_ALL,
    ]
    first = got.commands[0]
    assert dict(zip(first[6::2], first[7::2], strict=True))["a"] == "5"


def test_buckets_are_utc_day_month_quarter() -> None:
    ts = T0 - 1  # 2026-11-10T23:59:59.999Z
    assert [bucket(p, ts) for p in ("day", "month", "quarter", "all")] == ["2026-11-10", "2026-11", "2026-Q4", "all"]
    assert bucket("quarter", 1_767_225_600_000) == "2026-Q1"  # 2026-01-01


def test_leaderboards_net_earnings_gmv_for_level1_and_recruits() -> None:
    p = StagedCommands()
    entries = [
        entry("a", 1, ACCRUED, 1000),
        entry("b", 2, ACCRUED, 500),
        entry("a", 1, REVERSED, -100),
        entry("a", 1, SETTLED, 900),
        entry("b", 2, CLAWED_BACK, -50),
    ]
    Leaderboards().stage(p, chain_state(), entries, [Binding("n", "a", T0 + 2, "click")])
    incr = increments(p)
    day = "2026-11-11"
    assert incr[(board_key("earnings", "day", day), "a")] == 900
    assert incr[(board_key("earnings", "day", day), "b")] == 450
    assert incr[(board_key("earnings", "quarter", "2026-Q4", "d11"), "a")] == 900
    assert incr[(board_key("gmv", "month", "2026-11"), "a")] == 12_345
    assert (board_key("gmv", "month", "2026-11"), "b") not in incr
    assert incr[(board_key("recruits", "all", "all"), "a")] == 1
    assert not any(k.startswith(names.KEY_BOARD + "recruits") and k.endswith("d11") for k, _ in incr)
    expired = {a[0] for a in queued(p, "EXPIRE")}
    assert board_key("earnings", "day", day) in expired and board_key("earnings", "all", "all") not in expired


def test_money_out_is_not_earnings_on_the_leaderboards() -> None:
    """A withdrawal or an adjustment moves available, not what the distributor earned (decisions.md, v2)."""
    p = StagedCommands()

    def money(kind: str, amount: int, n: int) -> Entry:
        return Entry(f"m{n}:0:{kind}", f"m{n}", T0 + 1000, None, None, "a", 0, kind, amount, None, withdrawal_id="w1")

    entries = [
        entry("a", 1, ACCRUED, 1000),
        money(HELD, -600, 1),
        money(RELEASED, 600, 2),
        money(HELD, -400, 3),
        money(WITHDRAWN, -400, 4),
        money(ADJUSTED, 5000, 5),
    ]
    Leaderboards().stage(p, chain_state(), entries, [])
    incr = increments(p)
    assert incr[(board_key("earnings", "day", "2026-11-11"), "a")] == 1000


def test_leaderboard_commands_are_spelled_as_redis_py_spells_them() -> None:
    """The hot path queues argument lists by hand: they must be what redis-py's zincrby()/expire() would send."""
    got = StagedCommands()
    Leaderboards().stage(got, chain_state(), [entry("a", 1, ACCRUED, 1000), entry("b", 2, ACCRUED, 7)], [])
    want = StagedCommands()
    for key, amount, who in queued(got, "ZINCRBY"):
        want.zincrby(key, int(amount), who)
    for key, ttl in queued(got, "EXPIRE"):
        want.expire(key, int(ttl))
    assert sorted(got.commands) == sorted(want.commands)
    assert len(got.commands) == len(want.commands) > 0


def test_an_entry_counts_on_its_own_day_month_quarter_all_and_campaign_boards() -> None:
    """Hand-written key names across a year end (UTC): 4 boards, 8 with a campaign, and nothing else."""
    new_year = 1_798_761_600_000  # 2027-01-01T00:00:00Z
    late = Entry("e-y:1:accrued", "e-y", new_year - 1, "y", "buyer", "a", 1, ACCRUED, 10, "d11")
    early = Entry("e-z:1:accrued", "e-z", new_year, "z", "buyer", "b", 1, ACCRUED, 20, None)
    p = StagedCommands()
    Leaderboards().stage(p, State(), [late, early], [])

    def on(who: str, amount: int, *boards: str) -> dict[tuple[str, str], int]:
        return {(names.KEY_BOARD + "earnings:" + board, who): amount for board in boards}

    a_boards = ("day:2026-12-31", "month:2026-12", "quarter:2026-Q4", "all:all")
    assert increments(p) == (
        on("a", 10, *a_boards, *(board + ":d11" for board in a_boards))
        | on("b", 20, "day:2027-01-01", "month:2027-01", "quarter:2027-Q1", "all:all")
    )
