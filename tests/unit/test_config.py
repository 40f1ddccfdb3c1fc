"""fenxiao.toml validation: refused configs name the offending key; good ones resolve to the right Plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.engine.config import ConfigError, Plan, load, parse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# The spec's own example config, verbatim.
SPEC_EXAMPLE = """
[program]
levels = 3                          # 1..3
self_purchase = false               # 自购返佣: a distributor's own order pays them as level 1
attribution_window_seconds = 604800 # how long a click can bind a visitor
freeze_seconds = 604800             # completion -> settlement
max_total_bps = 3000                # cap on all levels together, per order

[tiers.standard]                    # the default tier; others are assigned on fenxiao.tiers
rates_bps = [1000, 500, 200]        # level 1, 2, 3
[tiers.gold]
rates_bps = [1500, 700, 300]

[campaigns.d11]                     # orders with campaign_id = "d11" use these overrides
max_total_bps = 4000
[campaigns.d11.tiers.standard]
rates_bps = [1300, 500, 200]
"""

PROGRAM = """
[program]
levels = {levels}
self_purchase = false
attribution_window_seconds = 3600
freeze_seconds = 60
max_total_bps = 3000
"""

TIERS = """
[tiers.standard]
rates_bps = [1000, 500, 200]
[tiers.gold]
rates_bps = [1500, 700, 300]
"""


def cfg(extra: str = "", *, levels: int | str = 3, tiers: str = TIERS) -> str:
    return PROGRAM.format(levels=levels) + tiers + extra


# (config text, substrings the ConfigError message must contain)
BAD = [
    pytest.param(cfg(levels=0), ["program.levels"], id="levels-0"),
    pytest.param(cfg(levels=4), ["program.levels"], id="levels-4"),
    pytest.param(cfg(levels=-1), ["program.levels"], id="levels-negative"),
    pytest.param(cfg(levels="2.0"), ["program.levels"], id="levels-float"),
    pytest.param(cfg(levels='"3"'), ["program.levels"], id="levels-string"),
    pytest.param(
        cfg(tiers="[tiers.standard]\nrates_bps = [1000, 500, 200]\n[tiers.gold]\nrates_bps = [1500, -1, 300]\n"),
        ["tiers.gold.rates_bps"],
        id="negative-rate",
    ),
    pytest.param(
        cfg("[campaigns.d11.tiers.standard]\nrates_bps = [1300, -5, 200]\n"),
        ["campaigns.d11.tiers.standard.rates_bps"],
        id="negative-rate-in-campaign",
    ),
    pytest.param(
        cfg(tiers="[tiers.standard]\nrates_bps = [1000, 500, 200]\n[tiers.gold]\nrates_bps = [1500, 700]\n"),
        ["tiers.gold.rates_bps"],
        id="fewer-rates-than-levels",
    ),
    pytest.param(
        cfg(tiers="[tiers.standard]\nrates_bps = [1000, 500]\n", levels=3),
        ["tiers.standard.rates_bps"],
        id="standard-fewer-rates-than-levels",
    ),
    pytest.param(
        # levels 2 is fine for the base tiers, but campaign c raises it to 3 and standard has only 2 rates
        cfg("[campaigns.c]\nlevels = 3\n", levels=2, tiers="[tiers.standard]\nrates_bps = [1000, 500]\n"),
        ["tiers.standard.rates_bps", "campaigns.c"],
        id="campaign-raises-levels-base-tier-short",
    ),
    pytest.param(
        cfg(
            "[campaigns.c]\nlevels = 3\n[campaigns.c.tiers.standard]\nrates_bps = [1000, 500]\n",
            levels=2,
            tiers="[tiers.standard]\nrates_bps = [1000, 500, 200]\n",
        ),
        ["campaigns.c.tiers.standard.rates_bps"],
        id="campaign-raises-levels-own-tier-short",
    ),
    pytest.param(
        cfg(tiers="[tiers.gold]\nrates_bps = [1500, 700, 300]\n"),
        ["tiers.standard"],
        id="missing-standard-tier",
    ),
    pytest.param(
        cfg("[campaigns.d11]\nmax_total_bps = 2500\nbogus = 1\n"), ["campaigns.d11.bogus"], id="campaign-unknown-key"
    ),
    pytest.param(
        cfg("[campaigns.d11]\nfreeze_seconds = 0\n"), ["campaigns.d11.freeze_seconds"], id="campaign-cannot-set-freeze"
    ),
    pytest.param(
        cfg("[campaigns.d11.tiers.platinum]\nrates_bps = [2000, 800, 300]\n"),
        ["campaigns.d11.tiers.platinum"],
        id="campaign-unknown-tier",
    ),
    pytest.param(cfg("[campaigns.d11]\nlevels = 4\n"), ["campaigns.d11.levels"], id="campaign-levels-4"),
    pytest.param(cfg("[campaigns.d11]\nlevels = 0\n"), ["campaigns.d11.levels"], id="campaign-levels-0"),
    pytest.param(
        cfg("[campaigns.d11]\nmax_total_bps = -1\n"), ["campaigns.d11.max_total_bps"], id="campaign-cap-negative"
    ),
    pytest.param(cfg("[bogus]\nx = 1\n"), ["bogus"], id="unknown-top-level-table"),
    pytest.param("typo = 1\n" + cfg(), ["typo"], id="unknown-top-level-key"),
    pytest.param(
        cfg().replace("max_total_bps = 3000", "max_total_bps = 3000\nmax_levels = 3"),
        ["program.max_levels"],
        id="unknown-program-key",
    ),
    pytest.param(
        cfg(tiers="[tiers.standard]\nrates_bps = [1000, 500, 200]\nrate = 3\n"),
        ["tiers.standard.rate"],
        id="unknown-tier-key",
    ),
    pytest.param(
        cfg(tiers="[tiers.standard]\nrates_bps = [10.5, 500, 200]\n"), ["tiers.standard.rates_bps"], id="rate-10.5"
    ),
    pytest.param(
        cfg(tiers="[tiers.standard]\nrates_bps = [1000.0, 500, 200]\n"),
        ["tiers.standard.rates_bps"],
        id="rate-float-1000.0",
    ),
    pytest.param(
        cfg(tiers='[tiers.standard]\nrates_bps = ["1000", 500, 200]\n'), ["tiers.standard.rates_bps"], id="rate-string"
    ),
    pytest.param(cfg(tiers="[tiers.standard]\nrates_bps = []\n"), ["tiers.standard.rates_bps"], id="rates-empty"),
    pytest.param(
        cfg(tiers="[tiers.standard]\n[tiers.gold]\nrates_bps = [1, 2, 3]\n"),
        ["tiers.standard.rates_bps"],
        id="rates-missing",
    ),
    pytest.param(
        cfg().replace("max_total_bps = 3000", "max_total_bps = -1"), ["program.max_total_bps"], id="cap-negative"
    ),
    pytest.param(
        cfg().replace("self_purchase = false", "self_purchase = 2"),
        ["program.self_purchase"],
        id="self-purchase-not-bool",
    ),
    pytest.param(PROGRAM.format(levels=3), ["tiers"], id="no-tiers-at-all"),
    pytest.param("[program\nlevels = 3\n", ["TOML"], id="bad-toml-header"),
    pytest.param(cfg() + "\nlevels = = 3\n", ["TOML"], id="bad-toml-value"),
    pytest.param(cfg() + "\n[tiers.standard]\nrates_bps = [1, 2, 3]\n", ["TOML"], id="bad-toml-duplicate-table"),
    # ---- contract v2: [products] and [withdrawals] ----
    pytest.param(
        cfg('[products."sku-1"]\nrates_bps = [2000, 800]\n'),
        ["products.sku-1.rates_bps", "2 rates", "levels = 3"],
        id="product-fewer-rates-than-levels",
    ),
    pytest.param(
        cfg('[products."sku-1"]\nrates_bps = [2000, 800]\n', levels=2).replace(
            "\n[tiers.standard]", "\n[campaigns.big]\nlevels = 3\n[tiers.standard]"
        ),
        ["products.sku-1.rates_bps", "levels = 3"],
        id="product-fewer-rates-than-a-campaigns-levels",
    ),
    pytest.param(
        cfg('[products."sku-1"]\nrates_bps = [2000, -1, 300]\n'), ["products.sku-1.rates_bps.1"], id="product-negative"
    ),
    pytest.param(
        cfg('[products."sku-1"]\nrates_bps = [2000, 10001, 300]\n'),
        ["products.sku-1.rates_bps.1"],
        id="product-over-100pct",
    ),
    pytest.param(
        cfg('[products."sku-1"]\nrates_bps = [2000, 800, 300]\ncommission = false\n'),
        ["products.sku-1", "not both"],
        id="product-rates-and-no-commission",
    ),
    pytest.param(cfg('[products."sku-1"]\n'), ["products.sku-1", "rates_bps"], id="product-empty"),
    pytest.param(cfg('[products."sku-1"]\ncommission = "no"\n'), ["products.sku-1.commission"], id="product-bool"),
    pytest.param(cfg('[products."sku-1"]\nrates_bps = []\n'), ["products.sku-1.rates_bps"], id="product-no-rates"),
    pytest.param(
        cfg('[products."sku-1"]\nrate_bps = [1, 2, 3]\n'), ["products.sku-1.rate_bps", "unknown key"], id="product-typo"
    ),
    pytest.param(cfg("[withdrawals]\nmin_cents = -1\n"), ["withdrawals.min_cents"], id="withdraw-min-negative"),
    pytest.param(cfg("[withdrawals]\nfee_bps = -1\n"), ["withdrawals.fee_bps"], id="withdraw-fee-negative"),
    pytest.param(cfg("[withdrawals]\nfee_bps = 10001\n"), ["withdrawals.fee_bps"], id="withdraw-fee-over-100pct"),
    pytest.param(
        cfg("[withdrawals]\nfee_min_cents = -5\n"), ["withdrawals.fee_min_cents"], id="withdraw-fee-min-negative"
    ),
    pytest.param(cfg("[withdrawals]\nmin_cents = 1.5\n"), ["withdrawals.min_cents"], id="withdraw-min-float"),
    pytest.param(cfg("[withdrawals]\nfee = 60\n"), ["withdrawals.fee", "unknown key"], id="withdraw-typo"),
]


@pytest.mark.parametrize(("text", "must_mention"), BAD)
def test_bad_config_is_refused_naming_the_key(text: str, must_mention: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    for key in must_mention:
        assert key in message, message


def test_error_names_the_source_file(tmp_path: Path) -> None:
    path = tmp_path / "fenxiao.toml"
    path.write_text(cfg(levels=4), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "program.levels" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path / "nope.toml")


# ---- good configs --------------------------------------------------------------------------------

WEEK_MS = 604_800 * 1000


def test_spec_example_base_plan() -> None:
    program = parse(SPEC_EXAMPLE)
    assert program.base == Plan(
        levels=3,
        self_purchase=False,
        max_total_bps=3000,
        attribution_window_ms=WEEK_MS,
        freeze_ms=WEEK_MS,
        rates={"standard": (1000, 500, 200), "gold": (1500, 700, 300)},
    )
    assert program.attribution_window_ms == WEEK_MS
    assert program.freeze_ms == WEEK_MS


def test_spec_example_campaign_plan_merges_overrides() -> None:
    program = parse(SPEC_EXAMPLE)
    assert program.plan_for("d11") == Plan(
        levels=3,
        self_purchase=False,
        max_total_bps=4000,  # overridden
        attribution_window_ms=WEEK_MS,
        freeze_ms=WEEK_MS,
        rates={"standard": (1300, 500, 200), "gold": (1500, 700, 300)},  # standard overridden, gold inherited
    )


@pytest.mark.parametrize("campaign", [None, "nope", "D11", ""], ids=["none", "unknown", "wrong-case", "empty"])
def test_no_or_unknown_campaign_gets_base_plan(campaign: str | None) -> None:
    program = parse(SPEC_EXAMPLE)
    assert program.plan_for(campaign) == program.base
    assert program.plan_for(campaign).max_total_bps == 3000


def test_campaign_overrides_levels_and_self_purchase() -> None:
    text = cfg("[campaigns.one]\nlevels = 1\nself_purchase = true\n[campaigns.two]\nlevels = 2\n")
    program = parse(text)
    one, two = program.plan_for("one"), program.plan_for("two")
    assert (one.levels, one.self_purchase, one.max_total_bps) == (1, True, 3000)
    assert (two.levels, two.self_purchase, two.max_total_bps) == (2, False, 3000)
    assert one.rates == two.rates == {"standard": (1000, 500, 200), "gold": (1500, 700, 300)}
    assert (program.base.levels, program.base.self_purchase) == (3, False)


def test_campaign_can_raise_levels_when_tiers_have_the_rates() -> None:
    program = parse(cfg("[campaigns.c]\nlevels = 3\n", levels=2))
    assert program.base.levels == 2
    assert program.plan_for("c").levels == 3


@pytest.mark.parametrize(
    ("levels", "rates"),
    [(1, "[1000]"), (2, "[1000, 500]"), (1, "[1000, 500, 200]")],
    ids=["1-of-1", "2-of-2", "1-of-3"],
)
def test_fewer_levels_are_a_config_choice(levels: int, rates: str) -> None:
    program = parse(cfg(levels=levels, tiers=f"[tiers.standard]\nrates_bps = {rates}\n"))
    assert program.base.levels == levels


@pytest.mark.parametrize(
    ("tier", "level", "bps"),
    [
        ("gold", 1, 1500),
        ("gold", 2, 700),
        ("gold", 3, 300),
        ("standard", 2, 500),
        (None, 1, 1000),  # no tier event: standard
        ("platinum", 1, 1000),  # unknown tier name falls back to standard
        ("platinum", 3, 200),
    ],
    ids=[
        "gold-1",
        "gold-2",
        "gold-3",
        "standard-2",
        "none-is-standard",
        "unknown-is-standard-1",
        "unknown-is-standard-3",
    ],
)
def test_plan_rate(tier: str | None, level: int, bps: int) -> None:
    assert parse(cfg()).base.rate(tier, level) == bps


def test_campaign_rate_for_unknown_tier_uses_campaign_standard() -> None:
    plan = parse(SPEC_EXAMPLE).plan_for("d11")
    assert plan.rate("platinum", 1) == 1300
    assert plan.rate("gold", 1) == 1500


@pytest.mark.parametrize(
    ("section", "expected"),
    [("", 10.0), ("[pipeline]\nordering_grace_seconds = 2.5\n", 2.5)],
    ids=["default-10s", "set"],
)
def test_ordering_grace(section: str, expected: float) -> None:
    assert parse(cfg(section)).ordering_grace_seconds == expected


@pytest.mark.parametrize(
    ("name", "levels", "freeze_ms", "max_bps", "self_purchase"),
    [
        ("basic", 3, 0, 2000, False),
        ("messy", 3, 0, 2000, True),
        ("two-level", 2, 315_360_000 * 1000, 2000, False),
    ],
)
def test_fixture_configs_load(name: str, levels: int, freeze_ms: int, max_bps: int, self_purchase: bool) -> None:
    program = load(FIXTURES / name / "fenxiao.toml")
    assert program.base.levels == levels
    assert program.freeze_ms == freeze_ms
    assert program.attribution_window_ms == 86_400_000
    assert program.base.max_total_bps == max_bps
    assert program.base.self_purchase is self_purchase
    assert program.plan_for("d11").max_total_bps == 2500
    assert program.plan_for("d11").rate("standard", 1) == 1300
    assert program.plan_for("d11").rate("gold", 1) == 1500
    assert program.plan_for("d11").rate("silver", 2) == 600


def test_products_and_withdrawals_resolve() -> None:
    text = cfg(
        '[products."sku-1"]\nrates_bps = [2000, 800, 300]\n[products."gift"]\ncommission = false\n'
        '[products."plain"]\nrates_bps = [0, 0, 0, 0]\n'
        "[withdrawals]\nmin_cents = 500\nfee_bps = 60\nfee_min_cents = 10\n"
    )
    program = parse(text)
    assert program.products == {"sku-1": (2000, 800, 300), "gift": None, "plain": (0, 0, 0, 0)}
    assert (program.withdrawals.min_cents, program.withdrawals.fee_bps, program.withdrawals.fee_min_cents) == (
        500,
        60,
        10,
    )
    # product over tier; commission = false pays 0; an unlisted sku gets the tier rate it was given
    assert program.item_rate("sku-1", 2, 500) == 800
    assert program.item_rate("gift", 1, 1000) == 0
    assert program.item_rate("other", 3, 200) == 200


def test_withdrawals_defaults_without_the_section() -> None:
    program = parse(cfg())
    assert program.products == {}
    assert (program.withdrawals.min_cents, program.withdrawals.fee_bps, program.withdrawals.fee_min_cents) == (
        100,
        0,
        0,
    )
    assert program.withdrawals.fee(12345) == 0


def test_money_out_config_loads() -> None:
    program = load(FIXTURES / "v2" / "money-out" / "fenxiao.toml")
    assert program.products == {"sku-phone": (300, 100, 50), "sku-tea": (2500, 800, 300), "sku-gift": None}
    # fee 60 bps half up, at least 10: 30000×60 = 1800000 + 5000 → 180; 500×60 = 30000 + 5000 → 3 → 10
    assert program.withdrawals.fee(30000) == 180
    assert program.withdrawals.fee(500) == 10
