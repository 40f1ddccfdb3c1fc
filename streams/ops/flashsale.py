"""A seeded 双11 flash sale as contract events, so load tests and demos get realistic traffic without Kafka."""

# The sale opens at `start`. Recruiting starts up to an hour before (most users are already in
# the program when the wall of orders hits), the order wall peaks at the opening second and
# decays exponentially over `duration_s`, and order lifecycles (refunds, cancellations,
# completions) trail their orders by minutes. Output is streamed in the contract's apply order
# (ts, tiers < clicks < signups < orders, event_id); only the users' plan is held in memory,
# orders live in a heap only while their events are still to come.

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import math
import random
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams import names

_RANK_TOPIC = {rank: topic for topic, rank in names.TOPIC_RANK.items()}
_R_TIER = names.TOPIC_RANK[names.TIERS]
_R_CLICK = names.TOPIC_RANK[names.CLICKS]
_R_SIGNUP = names.TOPIC_RANK[names.SIGNUPS]
_R_ORDER = names.TOPIC_RANK[names.ORDERS]

_USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 MicroMessenger/8.0.53",
    "Mozilla/5.0 (Linux; Android 14; 23127PN0CC) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36 AliApp(TB/10.40)",
    "Mozilla/5.0 (Linux; Android 13; V2309A) AppleWebKit/537.36 Chrome/118.0 Mobile MicroMessenger/8.0.50",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 DingTalk/7.6",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36",
)

# Outcomes of an order, in the order of Shape's shares; _COMPLETED is whatever those leave.
_CANCEL_UNPAID, _CANCEL_PAID, _FULL_REFUND, _PARTIAL_REFUND, _AFTER_SALE, _OPEN, _OVER_REFUND, _COMPLETED = range(8)

# A heap or plan entry: (ts_ms, topic rank, event_id, *payload); the first three are the spec's apply order.
_Entry = tuple[Any, ...]


@dataclass(frozen=True)
class Shape:
    """The knobs of the sale's mix; the defaults are what a mid-size shop's 双11 looks like."""

    presale_signup_share: float = 0.7  # users who joined during the warm-up hour, before the wall
    seed_distributors: int = 5  # roots of the referral forest, the shop's own promoters
    signup_ref_share: float = 0.55  # signups carrying an invite code (`ref`)
    signup_click_share: float = 0.2  # signups attributed through the visitor's earlier click
    second_click_share: float = 0.1  # of click signups: an older click by another distributor (latest wins)
    non_distributor_share: float = 0.05  # signups with "distributor": false
    explicit_distributor_share: float = 0.1  # signups that spell out "distributor": true
    kol_share: float = 0.01  # distributors with a big audience: their share links spread much faster
    gold_share: float = 0.002
    silver_share: float = 0.01
    guest_share: float = 0.15  # orders by buyers who never sign up
    guest_click_share: float = 0.4  # of guest orders: attributed by a click, not a `ref` on the order
    guest_organic_share: float = 0.1  # of guest orders: neither (nobody earns)
    repeat_guest_share: float = 0.15  # guest orders by a recent guest buying again
    user_order_ref_share: float = 0.1  # user orders carrying a share link's `ref`
    campaign_share: float = 0.6  # orders placed under the campaign
    browse_clicks_per_order: float = 0.3  # clicks that never turn into anything
    cancel_unpaid_share: float = 0.02  # orders cancelled before payment
    paid_after_cancel_share: float = 0.25  # of those: the payment races the cancel and lands after it
    cancel_paid_share: float = 0.03  # paid, then cancelled before completion
    full_refund_share: float = 0.04
    partial_refund_share: float = 0.07  # one or two partial refunds, then completion
    after_sale_refund_share: float = 0.02  # completed, then refunded (售后): claws back
    open_share: float = 0.05  # paid and still in delivery when the data ends
    over_refund_share: float = 0.001  # abuse: refunds adding up to more than was paid
    click_lead_s: float = 120.0  # a buyer's click comes at most this long before the order


@dataclass
class _Users:
    """The referral forest, decided up front so orders and clicks can pick valid people at any time."""

    signup_ms: array[int]  # ascending, strictly
    urn: array[int]  # user indexes, one per unit of recruiting pull: preferential attachment
    urn_len: array[int]  # urn length once user i has signed up
    events: list[_Entry]  # signups, their clicks and tier changes, in apply order
    clicks: int  # click events so far, so later clicks continue the id sequence

    def pick_sharer(self, rng: random.Random, ts_ms: int) -> int | None:
        """A distributor who signed up before ts_ms, weighted by recruiting pull; None if there is none yet."""
        n = bisect.bisect_left(self.signup_ms, ts_ms)
        size = self.urn_len[n - 1] if n else 0
        return self.urn[rng.randrange(size)] if size else None

    def pick_buyer(self, rng: random.Random, ts_ms: int) -> int | None:
        """Any user who signed up before ts_ms; None if nobody has yet."""
        n = bisect.bisect_left(self.signup_ms, ts_ms)
        return rng.randrange(n) if n else None


class _TsFormat:
    """Epoch ms to `2026-11-11T00:00:00.000Z`, reusing the date-time prefix since output is ascending."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        sec, milli = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{milli:03d}Z"


def _ms(dt: datetime) -> int:
    """Epoch milliseconds; a naive datetime is taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _ip(rng: random.Random) -> str:
    """A plausible mobile client address, only ever written into events."""
    first = rng.choice((36, 39, 58, 112, 113, 117, 120, 183, 223))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


class _Catalog:
    """Products with 双11 prices (whole yuan ending in 9) and Zipf popularity, and the 满300减50 discount."""

    def __init__(self, rng: random.Random, size: int = 400) -> None:
        self.ids = [f"p{i}" for i in range(size)]
        self.prices: list[int] = []
        for _ in range(size):
            yuan = min(49_999, max(9, int(rng.lognormvariate(math.log(89), 1.1))))
            self.prices.append((yuan // 10 * 10 + 9) * 100)
        weights = [1.0 / (i + 1) ** 1.1 for i in range(size)]
        self.cum: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w
            self.cum.append(acc)

    def product(self, rng: random.Random) -> int:
        """A product index, popular ones more often."""
        return bisect.bisect_left(self.cum, rng.random() * self.cum[-1])

    def basket_cents(self, rng: random.Random) -> int:
        """One order's commissionable amount: 1-3 lines, mostly quantity 1, after 每满300减50."""
        subtotal = 0
        for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
            qty = 1 if rng.random() < 0.85 else rng.randint(2, 5)
            subtotal += self.prices[self.product(rng)] * qty
        return subtotal - subtotal // 30_000 * 5_000


def _plan_users(
    rng: random.Random,
    users: int,
    seed_tag: str,
    start_ms: int,
    warm_ms: int,
    sale_ms: int,
    shape: Shape,
    campaign_id: str,
    catalog: _Catalog,
) -> _Users:
    """Sign-up times, the forest (preferential attachment with a few high-pull KOLs) and its events."""
    times = sorted(
        start_ms - int(rng.random() * warm_ms)
        if rng.random() < shape.presale_signup_share
        else start_ms + int(rng.random() * sale_ms)
        for _ in range(users)
    )
    for i in range(1, users):
        if times[i] <= times[i - 1]:
            times[i] = times[i - 1] + 1  # an inviter always signs up strictly before the invitee
    signup_ms = array("q", times)
    urn = array("l")
    urn_len = array("l")
    pull = array("l")  # urn units added per recruit, 0 for non-distributors
    recruits = array("l")
    events: list[_Entry] = []
    clicks = 0
    seeds = min(users, max(1, shape.seed_distributors))

    def click(ts: int, visitor: str, ref: int) -> None:
        nonlocal clicks
        clicks += 1
        events.append(
            (
                ts,
                _R_CLICK,
                f"c{seed_tag}-{clicks}",
                visitor,
                f"u{seed_tag}-{ref}",
                campaign_id if rng.random() < 0.8 else None,
                catalog.ids[catalog.product(rng)],
                _ip(rng),
                rng.choice(_USER_AGENTS),
            )
        )

    for i in range(users):
        ts = signup_ms[i]
        inviter = urn[rng.randrange(len(urn))] if i >= seeds and urn else None
        how = rng.random()
        ref: int | None = None
        visitor: str | None = None
        if inviter is not None and how < shape.signup_ref_share + shape.signup_click_share:
            lo = max(signup_ms[inviter] + 1, ts - 3_600_000)
            hi = ts - 1_000
            if how < shape.signup_ref_share or lo > hi:
                ref = inviter
            else:
                visitor = f"v{seed_tag}-{i}"
                at = rng.randint(lo, hi)
                if rng.random() < shape.second_click_share and len(urn) > 1:
                    other = urn[rng.randrange(len(urn))]
                    if other != inviter and signup_ms[other] < at - 1:
                        click(rng.randint(max(signup_ms[other] + 1, at - 3_600_000), at - 1), visitor, other)
                click(at, visitor, inviter)
        else:
            inviter = None
            if rng.random() < 0.2:
                visitor = f"v{seed_tag}-{i}"  # came from search or an ad: a visitor id without any share click
        distributor = i < seeds or rng.random() >= shape.non_distributor_share
        flag: bool | None = None
        if not distributor:
            flag = False
        elif rng.random() < shape.explicit_distributor_share:
            flag = True
        events.append(
            (
                ts,
                _R_SIGNUP,
                f"s{seed_tag}-{i}",
                f"u{seed_tag}-{i}",
                None if ref is None else f"u{seed_tag}-{ref}",
                visitor,
                flag,
            )
        )
        weight = 0
        if distributor:
            # fitness: the chance to recruit next is fitness × (1 + recruits so far), rich get richer
            weight = 4 if i < seeds or rng.random() < shape.kol_share else rng.randint(1, 2)
            urn.extend([i] * weight)
        pull.append(weight)
        recruits.append(0)
        if inviter is not None:
            recruits[inviter] += 1
            urn.extend([inviter] * pull[inviter])
        urn_len.append(len(urn))

    distributors = [i for i in range(users) if pull[i]]
    ranked = sorted(distributors, key=lambda i: (-recruits[i], i))
    n_gold = round(len(ranked) * shape.gold_share)
    n_silver = round(len(ranked) * shape.silver_share)
    tiers = {i: "gold" for i in ranked[:n_gold]} | {i: "silver" for i in ranked[n_gold : n_gold + n_silver]}
    for i in distributors:
        if rng.random() < shape.silver_share / 4:
            tiers.setdefault(i, "silver")  # promoted for sales, not for the team
    for k, (i, tier) in enumerate(sorted(tiers.items())):
        at = max(signup_ms[i] + 1_000, start_ms - warm_ms) + int(rng.expovariate(1 / 300) * 1000)
        events.append((at, _R_TIER, f"t{seed_tag}-{k}", f"u{seed_tag}-{i}", tier))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return _Users(signup_ms, urn, urn_len, events, clicks)


def _record(e: _Entry, fmt: _TsFormat) -> dict[str, Any]:
    """An entry as a Kafka record of the contract: only the spec's fields, optional ones only when set."""
    ts, rank, event_id = e[0], e[1], e[2]
    v: dict[str, Any] = {"event_id": event_id, "ts": fmt(ts)}
    if rank == _R_ORDER:
        _, _, _, order_id, typ, buyer, amount, campaign, ref, visitor = e
        v.update(order_id=order_id, type=typ, buyer_id=buyer)
        key = buyer
        if amount is not None:
            v["amount_cents"] = amount
        if campaign is not None:
            v["campaign_id"] = campaign
        if ref is not None:
            v["ref"] = ref
        if visitor is not None:
            v["visitor_id"] = visitor
    elif rank == _R_CLICK:
        _, _, _, visitor, ref, campaign, product, ip, ua = e
        v.update(visitor_id=visitor, ref=ref)
        key = visitor
        if campaign is not None:
            v["campaign_id"] = campaign
        v.update(product_id=product, ip=ip, user_agent=ua)
    elif rank == _R_SIGNUP:
        _, _, _, user, ref, visitor, flag = e
        v["user_id"] = user
        key = user
        if ref is not None:
            v["ref"] = ref
        if visitor is not None:
            v["visitor_id"] = visitor
        if flag is not None:
            v["distributor"] = flag
    else:
        _, _, _, user, tier = e
        v.update(user_id=user, tier=tier)
        key = user
    return {"topic": _RANK_TOPIC[rank], "key": key, "value": v}


def _sorted_uniforms(rng: random.Random, n: int) -> Iterator[float]:
    """n uniform [0, 1) order statistics in ascending order, one at a time (no list of n floats)."""
    u = 0.0
    for k in range(n):
        u = 1.0 - (1.0 - u) * rng.random() ** (1.0 / (n - k))
        yield u


def generate(
    users: int,
    orders: int,
    seed: int,
    start: datetime,
    duration_s: float,
    campaign_id: str = "d11",
    *,
    shape: Shape | None = None,
) -> Iterator[dict[str, Any]]:
    """The sale's records `{"topic", "key", "value"}` in apply order; the same arguments give the same bytes."""
    if users < 0 or orders < 0 or duration_s <= 0:
        raise ValueError("users and orders must be >= 0 and duration_s > 0")
    sh = shape or Shape()
    rng = random.Random(seed)
    tag = str(seed)
    start_ms = _ms(start)
    sale_ms = int(duration_s * 1000)
    warm_ms = min(sale_ms, 3_600_000)
    catalog = _Catalog(random.Random(f"catalog-{seed}"))
    people = _plan_users(rng, users, tag, start_ms, warm_ms, sale_ms, sh, campaign_id, catalog)
    fmt = _TsFormat()
    plan = people.events
    p = 0
    heap: list[_Entry] = []
    tau_s = duration_s / 6  # the wall's decay time: a sixth of the sale, so the opening minutes dominate
    tail = 1.0 - math.exp(-duration_s / tau_s)
    life_s = min(max(duration_s * 0.05, 20.0), 86_400.0)  # typical gap between an order's steps
    lead_ms = int(sh.click_lead_s * 1000)
    outcomes = list(
        itertools.accumulate(
            (
                sh.cancel_unpaid_share,
                sh.cancel_paid_share,
                sh.full_refund_share,
                sh.partial_refund_share,
                sh.after_sale_refund_share,
                sh.open_share,
                sh.over_refund_share,
            )
        )
    )
    n_events = n_guests = n_visitors = 0
    n_clicks = people.clicks
    recent_guests: list[tuple[str, str]] = []

    def order_event(
        ts: int,
        order_id: str,
        typ: str,
        buyer: str,
        amount: int | None = None,
        campaign: str | None = None,
        ref: str | None = None,
        visitor: str | None = None,
    ) -> None:
        nonlocal n_events
        n_events += 1
        heapq.heappush(heap, (ts, _R_ORDER, f"e{tag}-{n_events}", order_id, typ, buyer, amount, campaign, ref, visitor))

    def click_event(ts: int, visitor: str, ref: int) -> None:
        nonlocal n_clicks
        n_clicks += 1
        heapq.heappush(
            heap,
            (
                ts,
                _R_CLICK,
                f"c{tag}-{n_clicks}",
                visitor,
                f"u{tag}-{ref}",
                campaign_id,
                catalog.ids[catalog.product(rng)],
                _ip(rng),
                rng.choice(_USER_AGENTS),
            ),
        )

    def new_visitor() -> str:
        nonlocal n_visitors
        n_visitors += 1
        return f"w{tag}-{n_visitors}"

    def step(ts: int, scale: float) -> int:
        return ts + 1_000 + int(rng.expovariate(1.0 / (life_s * scale)) * 1000)

    for k, u in enumerate(_sorted_uniforms(rng, orders)):
        t = start_ms + int(-tau_s * math.log1p(-u * tail) * 1000)
        order_id = f"o{tag}-{k}"
        campaign = campaign_id if rng.random() < sh.campaign_share else None
        ref: str | None = None
        visitor: str | None = None
        buyer_ix = None if rng.random() < sh.guest_share else people.pick_buyer(rng, t)
        if buyer_ix is not None:
            buyer = f"u{tag}-{buyer_ix}"
            if rng.random() < sh.user_order_ref_share:
                sharer = people.pick_sharer(rng, t)
                if sharer is not None and sharer != buyer_ix:
                    ref = f"u{tag}-{sharer}"
        else:
            if recent_guests and rng.random() < sh.repeat_guest_share:
                buyer, guest_visitor = recent_guests[rng.randrange(len(recent_guests))]
            else:
                n_guests += 1
                buyer, guest_visitor = f"g{tag}-{n_guests}", new_visitor()
                if len(recent_guests) < 512:
                    recent_guests.append((buyer, guest_visitor))
                else:
                    recent_guests[rng.randrange(512)] = (buyer, guest_visitor)
            how = rng.random()
            if how < sh.guest_click_share:
                at = t - 500 - int(rng.random() * (lead_ms - 500))
                sharer = people.pick_sharer(rng, at)
                if sharer is not None:
                    click_event(at, guest_visitor, sharer)
                    visitor = guest_visitor
            elif how < 1.0 - sh.guest_organic_share:
                sharer = people.pick_sharer(rng, t)
                ref = None if sharer is None else f"u{tag}-{sharer}"
        browse = sh.browse_clicks_per_order
        for _ in range(int(browse) + (rng.random() < browse - int(browse))):
            at = t - int(rng.random() * lead_ms)
            sharer = people.pick_sharer(rng, at)
            if sharer is not None:
                click_event(at, new_visitor(), sharer)

        amount = catalog.basket_cents(rng)
        outcome = bisect.bisect_right(outcomes, rng.random())
        if outcome == _CANCEL_UNPAID:  # sometimes the payment races the cancel and lands just after it
            order_event(t, order_id, "cancelled", buyer)
            if rng.random() < sh.paid_after_cancel_share:
                order_event(t + rng.randint(50, 3_000), order_id, "paid", buyer, amount, campaign, ref, visitor)
        else:
            order_event(t, order_id, "paid", buyer, amount, campaign, ref, visitor)
            for ts, typ, cents in _lifecycle(outcome, t, amount, step, rng):
                order_event(ts, order_id, typ, buyer, cents)

        horizon = t - lead_ms  # nothing generated from here on is earlier than this
        while True:
            from_plan = p < len(plan) and (not heap or plan[p] < heap[0])
            if from_plan:
                head = plan[p]
            elif heap:
                head = heap[0]
            else:
                break
            if head[0] >= horizon:
                break
            if from_plan:
                p += 1
            else:
                heapq.heappop(heap)
            yield _record(head, fmt)

    while p < len(plan) or heap:
        if p < len(plan) and (not heap or plan[p] < heap[0]):
            yield _record(plan[p], fmt)
            p += 1
        else:
            yield _record(heapq.heappop(heap), fmt)


def _lifecycle(
    outcome: int, t: int, amount: int, step: Callable[[int, float], int], rng: random.Random
) -> list[tuple[int, str, int | None]]:
    """What happens to a paid order after payment: (ts, type, amount), each strictly later than the one before."""
    steps: list[tuple[int, str, int | None]] = []

    def emit(ts: int, typ: str, cents: int | None = None) -> None:
        steps.append((ts, typ, cents))

    if outcome == _CANCEL_PAID:
        emit(step(t, 0.25), "cancelled")
    elif outcome == _FULL_REFUND:
        emit(step(t, 0.5), "refunded", amount)
    elif outcome == _PARTIAL_REFUND:
        left, ts = amount, t
        for _ in range(1 + (rng.random() < 0.3)):
            if left < 2:
                break
            part = rng.randint(1, max(1, left * 6 // 10))
            left -= part
            ts = step(ts, 0.5)
            emit(ts, "refunded", part)
        emit(step(ts, 1.0), "completed")
    elif outcome == _AFTER_SALE:
        ts = step(t, 1.0)
        emit(ts, "completed")
        emit(step(ts, 1.0), "refunded", amount if rng.random() < 0.5 else rng.randint(1, max(1, amount // 2)))
    elif outcome == _OVER_REFUND:
        ts = step(t, 0.5)
        emit(ts, "refunded", amount)
        emit(step(ts, 0.5), "refunded", rng.randint(1, max(1, amount // 3)))
    elif outcome == _COMPLETED:
        emit(step(t, 1.0), "completed")
    return steps


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one compact JSON record per line (the scenario format `fenxiao replay` reads); returns the count."""
    n = 0
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(encode(rec))
            f.write("\n")
            n += 1
    return n
