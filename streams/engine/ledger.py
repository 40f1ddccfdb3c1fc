"""Where an event becomes bindings and ledger entries: the spec's rules over plain state, no I/O."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from schemas.events import Adjustment, Click, DistributorStatus, Event, Order, Signup, Tier, Withdrawal, format_ts
from streams.engine import commission
from streams.engine.config import Plan, Program

SeqKey = tuple[int, int, str]
IpWindow = tuple[int, str]  # (window id, ip): the key of a per-ip click count
T = TypeVar("T")

# Dead-letter reasons of the contract.
DUPLICATE_USER = "duplicate_user"
ORDER_CANCELLED = "order_cancelled"
ORDER_ALREADY_PAID = "order_already_paid"
UNKNOWN_ORDER = "unknown_order"
OVER_REFUND = "over_refund"
CANNOT_CANCEL_COMPLETED = "cannot_cancel_completed"
DUPLICATE_COMPLETED = "duplicate_completed"
INVALID_EVENT = "invalid_event"
# Contract v2.
UNKNOWN_USER = "unknown_user"
DUPLICATE_ADJUSTMENT = "duplicate_adjustment"
NOT_A_DISTRIBUTOR = "not_a_distributor"
DISTRIBUTOR_FROZEN = "distributor_frozen"
DUPLICATE_WITHDRAWAL = "duplicate_withdrawal"
BELOW_MINIMUM = "below_minimum"
INSUFFICIENT_BALANCE = "insufficient_balance"
INVALID_TRANSITION = "invalid_transition"

# Why a click was limited (not used for attribution); fenxiao.clicks-limited `reason`.
VISITOR_RATE = "visitor_rate"
IP_RATE = "ip_rate"

ACCRUED = "accrued"
REVERSED = "reversed"
SETTLED = "settled"
CLAWED_BACK = "clawed_back"
HELD = "held"
RELEASED = "released"
WITHDRAWN = "withdrawn"
ADJUSTED = "adjusted"

# Withdrawal states (the `type` of the event that moved it there).
REQUESTED = "requested"
APPROVED = "approved"
REJECTED = "rejected"
PAID = "paid"
FAILED = "failed"


@dataclass(slots=True)
class User:
    """A signed-up user: a node of the referral tree."""

    signup_ms: int
    distributor: bool
    inviter: str | None
    signup_event_id: str
    frozen: bool = False
    status_key: SeqKey | None = None


@dataclass(slots=True)
class TierMark:
    """A user's current tier and the sequence key of the event that set it (newest wins)."""

    tier: str
    key: SeqKey


@dataclass(slots=True)
class ClickMark:
    """A visitor's latest binding click (who shared the link, and when) and how many clicks bound in its window."""

    ts_ms: int
    ref: str
    key: SeqKey
    window: int = -1
    count: int = 0


@dataclass(slots=True)
class OrderState:
    """An order's locked terms and where its money stands."""

    buyer_id: str
    campaign_id: str | None = None
    cancelled: bool = False
    paid: bool = False
    paid_cents: int = 0
    refunded_cents: int = 0
    beneficiaries: list[str | None] = field(default_factory=list)
    rates_bps: list[int] = field(default_factory=list)
    max_total_bps: int = 0
    amounts: list[int] = field(default_factory=list)
    completed_event_id: str | None = None
    settle_at_ms: int | None = None
    settled: bool = False
    event_ids: list[str] = field(default_factory=list)
    # Itemized orders (contract v2); all empty for an order paid without items.
    item_skus: list[str] = field(default_factory=list)
    item_cents: list[int] = field(default_factory=list)
    item_refunded_cents: list[int] = field(default_factory=list)
    item_rates_bps: list[list[int]] = field(default_factory=list)  # [level - 1][item]

    def item_left(self) -> list[int]:
        """What each item has left after refunds."""
        return [c - r for c, r in zip(self.item_cents, self.item_refunded_cents, strict=True)]


@dataclass(frozen=True, slots=True)
class Terms:
    """What a first payment locks from the tree and tiers at its ts: the attribution stage's answer (staged)."""

    beneficiaries: list[str | None]
    rates_bps: list[int]
    max_total_bps: int
    item_rates_bps: list[list[int]] | None = None  # [level - 1][item], itemized orders only


@dataclass(slots=True)
class WithdrawalState:
    """A withdrawal request: whose, how much (fee locked at request), where it stands, which events moved it."""

    distributor_id: str
    amount_cents: int
    fee_cents: int
    status: str
    channel: str | None = None
    event_ids: list[str] = field(default_factory=list)
    requested_ms: int = 0  # ts of the request (the review queue's order)
    updated_ms: int = 0  # ts of the event that moved it last


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry: a money movement for one beneficiary at one level."""

    entry_id: str
    source_event_id: str
    ts_ms: int
    order_id: str | None
    buyer_id: str | None
    beneficiary_id: str
    level: int
    kind: str
    amount_cents: int
    campaign_id: str | None
    withdrawal_id: str | None = None
    adjustment_id: str | None = None
    reason: str | None = None
    fee_cents: int | None = None
    payout_cents: int | None = None

    def as_record(self) -> dict[str, object]:
        """The fenxiao.commissions value; the v2 fields only when set, so v1 records stay byte-identical."""
        rec: dict[str, object] = {
            "entry_id": self.entry_id,
            "source_event_id": self.source_event_id,
            "ts": format_ts(self.ts_ms),
            "order_id": self.order_id,
            "buyer_id": self.buyer_id,
            "beneficiary_id": self.beneficiary_id,
            "level": self.level,
            "kind": self.kind,
            "amount_cents": self.amount_cents,
            "campaign_id": self.campaign_id,
        }
        for name, value in (
            ("withdrawal_id", self.withdrawal_id),
            ("adjustment_id", self.adjustment_id),
            ("reason", self.reason),
            ("fee_cents", self.fee_cents),
            ("payout_cents", self.payout_cents),
        ):
            if value is not None:
                rec[name] = value
        return rec


@dataclass(frozen=True, slots=True)
class Binding:
    """A user's place in the tree as of ts: the fenxiao.bindings value."""

    user_id: str
    inviter_id: str | None
    ts_ms: int
    source: str

    def as_record(self) -> dict[str, object]:
        """The fenxiao.bindings value."""
        return {
            "user_id": self.user_id,
            "inviter_id": self.inviter_id,
            "ts": format_ts(self.ts_ms),
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class LimitedClick:
    """A click over the rate limit: valid input, kept out of attribution, counted in the funnel separately."""

    event_id: str
    visitor_id: str
    ip: str | None
    ref: str
    campaign_id: str | None
    ts_ms: int
    reason: str

    def as_record(self) -> dict[str, object]:
        """The fenxiao.clicks-limited value."""
        return {
            "event_id": self.event_id,
            "visitor_id": self.visitor_id,
            "ip": self.ip,
            "ref": self.ref,
            "campaign_id": self.campaign_id,
            "ts": format_ts(self.ts_ms),
            "reason": self.reason,
        }


@dataclass(slots=True)
class Outcome:
    """What applying one event produced; rejection is a dead-letter reason."""

    entries: list[Entry] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    rejection: str | None = None
    detail: str = ""
    duplicate: bool = False
    limited: LimitedClick | None = None


class NotLoaded(KeyError):
    """The engine asked for state the store did not load: a store bug, never a missing record."""


@dataclass(slots=True)
class Balance:
    """A beneficiary's balances (cents): absolute in State.balances, per-batch deltas in State.balance_deltas.

    earned is lifetime commission (accrued, reversed, clawed back); adjustments and withdrawals do not change it.
    """

    pending: int = 0
    available: int = 0
    earned: int = 0
    reserved: int = 0
    withdrawn: int = 0

    def add(self, kind: str, amount: int) -> None:
        """Move one ledger entry's signed amount into these balances, as the spec's balance formulas say."""
        if kind in (ACCRUED, REVERSED):
            self.pending += amount
            self.earned += amount
        elif kind == SETTLED:
            self.pending -= amount
            self.available += amount
        elif kind == CLAWED_BACK:
            self.available += amount
            self.earned += amount
        elif kind == ADJUSTED:
            self.available += amount
        elif kind in (HELD, RELEASED):
            self.available += amount
            self.reserved -= amount
        elif kind == WITHDRAWN:
            self.reserved += amount
            self.withdrawn -= amount
        else:
            raise ValueError(f"unknown ledger kind {kind!r}")


class SettleIndex(dict[str, int]):
    """Order id -> settle moment, with a heap beside it so each batch finds due orders without a full scan.

    Writes push onto the heap; removals and changed moments leave stale heap entries that are skipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[int, str]] = []

    def __setitem__(self, order_id: str, settle_at_ms: int) -> None:
        super().__setitem__(order_id, settle_at_ms)
        heapq.heappush(self._heap, (settle_at_ms, order_id))

    def pop_due(self, until_ms: int) -> Iterator[str]:
        """Order ids due at or before until_ms, oldest first (ties by id), each current moment once."""
        heap = self._heap
        while heap and heap[0][0] <= until_ms:
            at, order_id = heapq.heappop(heap)
            while heap and heap[0] == (at, order_id):
                heapq.heappop(heap)
            if self.get(order_id) == at:
                yield order_id


class State:
    """Plain in-memory state; a store loads the slice a batch needs and writes back what changed."""

    def __init__(self, *, complete: bool = True) -> None:
        self.complete = complete
        self.users: dict[str, User | None] = {}
        self.tiers: dict[str, TierMark | None] = {}
        self.clicks: dict[str, ClickMark | None] = {}
        self.ip_clicks: dict[IpWindow, int] = {}
        self.orders: dict[str, OrderState | None] = {}
        self.dead_ids: set[str] = set()
        self.dead_checked: set[str] = set()
        self.balance_deltas: dict[str, Balance] = {}
        # Absolute balances: complete, or loaded by the store for the users whose balance a batch reads (anyone
        # requesting a withdrawal). Entries for users not loaded only change balance_deltas.
        self.balances: dict[str, Balance] = {}
        self.dirty_balances: set[str] = set()
        self.adjustments: dict[str, str | None] = {}  # adjustment_id -> the event_id that applied it
        self.dirty_adjustments: set[str] = set()
        self.withdrawals: dict[str, WithdrawalState | None] = {}
        self.dirty_withdrawals: set[str] = set()
        self.dirty_users: set[str] = set()
        self.dirty_tiers: set[str] = set()
        self.dirty_clicks: set[str] = set()
        self.dirty_ip_clicks: set[IpWindow] = set()
        self.limited_ids: set[str] = set()
        self.dirty_orders: set[str] = set()
        self.new_dead_ids: set[str] = set()
        self.settle_index = SettleIndex()
        # Staged topology's attribution stage: orders it has seen paid or cancelled (their own state is downstream).
        self.order_marks: set[str] = set()
        self.new_order_marks: set[str] = set()

    def _get(self, table: dict[str, T | None], key: str) -> T | None:
        if key in table:
            return table[key]
        if self.complete:
            return None
        raise NotLoaded(key)

    def user(self, uid: str) -> User | None:
        """The user record, or None if never signed up."""
        return self._get(self.users, uid)

    def tier(self, uid: str) -> str | None:
        """The user's tier name, or None (standard)."""
        mark = self._get(self.tiers, uid)
        return mark.tier if mark else None

    def click(self, visitor_id: str) -> ClickMark | None:
        """The visitor's latest click."""
        return self._get(self.clicks, visitor_id)

    def order(self, order_id: str) -> OrderState | None:
        """The order's state, or None if never seen."""
        return self._get(self.orders, order_id)

    def balance(self, uid: str) -> Balance:
        """The user's absolute balances as of now (zero if it never had an entry)."""
        if uid in self.balances:
            return self.balances[uid]
        if self.complete:
            return Balance()
        raise NotLoaded(uid)

    def adjustment(self, adjustment_id: str) -> str | None:
        """The event id that applied this adjustment, or None if it never was."""
        return self._get(self.adjustments, adjustment_id)

    def put_adjustment(self, adjustment_id: str, event_id: str) -> None:
        """Remember an applied adjustment id (a repeat is duplicate_adjustment)."""
        self.adjustments[adjustment_id] = event_id
        self.dirty_adjustments.add(adjustment_id)

    def withdrawal(self, withdrawal_id: str) -> WithdrawalState | None:
        """The withdrawal's state, or None if it was never requested (or its request was refused)."""
        return self._get(self.withdrawals, withdrawal_id)

    def put_withdrawal(self, withdrawal_id: str, w: WithdrawalState) -> None:
        """Record a new or changed withdrawal."""
        self.withdrawals[withdrawal_id] = w
        self.dirty_withdrawals.add(withdrawal_id)

    def ip_count(self, key: IpWindow) -> int:
        """Clicks from this ip that bound in this window so far."""
        if key in self.ip_clicks:
            return self.ip_clicks[key]
        if self.complete:
            return 0
        raise NotLoaded(key)

    def put_ip_count(self, key: IpWindow, count: int) -> None:
        """Record a changed per-ip window count."""
        self.ip_clicks[key] = count
        self.dirty_ip_clicks.add(key)

    def is_dead(self, event_id: str) -> bool:
        """Whether this event id was already dead-lettered (a redelivery must not repeat it)."""
        if event_id in self.dead_ids:
            return True
        if self.complete or event_id in self.dead_checked:
            return False
        raise NotLoaded(event_id)

    def put_user(self, uid: str, user: User) -> None:
        """Record a new or changed user."""
        self.users[uid] = user
        self.dirty_users.add(uid)

    def put_order(self, order_id: str, order: OrderState) -> None:
        """Record a new or changed order (also keeps the settlement index current)."""
        self.orders[order_id] = order
        self.dirty_orders.add(order_id)
        if order.settle_at_ms is not None and not order.settled:
            self.settle_index[order_id] = order.settle_at_ms
        else:
            self.settle_index.pop(order_id, None)

    def mark_dead(self, event_id: str) -> None:
        """Remember a dead-lettered event id."""
        self.dead_ids.add(event_id)
        self.new_dead_ids.add(event_id)

    def add_balance(self, entry: Entry) -> None:
        """Move a ledger entry into the beneficiary's deltas, and its absolute balances where those are held."""
        uid = entry.beneficiary_id
        self.balance_deltas.setdefault(uid, Balance()).add(entry.kind, entry.amount_cents)
        if self.complete or uid in self.balances:
            self.balances.setdefault(uid, Balance()).add(entry.kind, entry.amount_cents)
            self.dirty_balances.add(uid)


def seq_key(rank: int, ev: Event) -> SeqKey:
    """The spec's total order: (ts, topic rank, event_id)."""
    return (ev.ts_ms, rank, ev.event_id)


class Ledger:
    """Applies events one at a time, in sequence order, to a State."""

    def __init__(self, program: Program, state: State) -> None:
        self.program = program
        self.state = state

    # ---- referral tree -------------------------------------------------

    def _candidate(self, ref: str | None, visitor_id: str | None, at_ms: int) -> tuple[str | None, str]:
        """The candidate inviter: ref, else the visitor's latest click in the attribution window."""
        if ref is not None:
            return ref, "ref"
        if visitor_id is not None:
            click = self.state.click(visitor_id)
            if click is not None and at_ms - self.program.attribution_window_ms <= click.ts_ms <= at_ms:
                return click.ref, "click"
        return None, ""

    def _valid_inviter(self, user_id: str, candidate: str | None) -> bool:
        """An existing distributor, not the user, whose chain does not contain the user."""
        if candidate is None or candidate == user_id:
            return False
        cand = self.state.user(candidate)
        if cand is None or not cand.distributor:
            return False
        seen = {candidate}
        up = cand.inviter
        while up is not None:
            if up == user_id or up in seen:
                return False
            seen.add(up)
            node = self.state.user(up)
            up = node.inviter if node else None
        return True

    def apply_click(self, ev: Click, key: SeqKey) -> Outcome:
        """Remember the latest click unless its visitor or ip is at the window's limit (only binding clicks count)."""
        cur = self.state.click(ev.visitor_id)
        if cur is not None and key <= cur.key:
            return Outcome()
        limits = self.program.clicks
        window = limits.window(ev.ts_ms)
        seen = cur.count if cur is not None and cur.window == window else 0
        ip_key = (window, ev.ip) if ev.ip and limits.max_per_ip else None
        ip_seen = self.state.ip_count(ip_key) if ip_key is not None else 0
        if limits.max_per_visitor and seen >= limits.max_per_visitor:
            reason: str | None = VISITOR_RATE
        elif ip_key is not None and ip_seen >= limits.max_per_ip:
            reason = IP_RATE
        else:
            reason = None
        if reason is not None:
            if ev.event_id in self.state.limited_ids:
                return Outcome(duplicate=True)
            self.state.limited_ids.add(ev.event_id)
            limited = LimitedClick(ev.event_id, ev.visitor_id, ev.ip or None, ev.ref, ev.campaign_id, ev.ts_ms, reason)
            return Outcome(limited=limited)
        self.state.clicks[ev.visitor_id] = ClickMark(ev.ts_ms, ev.ref, key, window, seen + 1)
        self.state.dirty_clicks.add(ev.visitor_id)
        if ip_key is not None:
            self.state.put_ip_count(ip_key, ip_seen + 1)
        return Outcome()

    def apply_tier(self, ev: Tier, key: SeqKey) -> Outcome:
        """Set the user's tier for orders paid after it (older redeliveries change nothing)."""
        cur = self._tier_mark(ev.user_id)
        if cur is None or key > cur.key:
            self.state.tiers[ev.user_id] = TierMark(ev.tier, key)
            self.state.dirty_tiers.add(ev.user_id)
        return Outcome()

    def _tier_mark(self, uid: str) -> TierMark | None:
        return self.state._get(self.state.tiers, uid)

    def apply_signup(self, ev: Signup) -> Outcome:
        """Create the user and bind it to a valid candidate inviter, if any."""
        existing = self.state.user(ev.user_id)
        if existing is not None:
            if existing.signup_event_id == ev.event_id:
                return Outcome(duplicate=True)
            return self._reject(ev.event_id, DUPLICATE_USER, f"user {ev.user_id} already signed up")
        candidate, how = self._candidate(ev.ref, ev.visitor_id, ev.ts_ms)
        inviter = candidate if self._valid_inviter(ev.user_id, candidate) else None
        self.state.put_user(ev.user_id, User(ev.ts_ms, ev.distributor, inviter, ev.event_id))
        source = "click" if inviter is not None and how == "click" else "signup"
        return Outcome(bindings=[Binding(ev.user_id, inviter, ev.ts_ms, source)])

    # ---- orders ----------------------------------------------------------

    def _reject(self, event_id: str, reason: str, detail: str) -> Outcome:
        if self.state.is_dead(event_id):
            return Outcome(duplicate=True)
        self.state.mark_dead(event_id)
        return Outcome(rejection=reason, detail=detail)

    def apply_order(self, ev: Order, terms: Terms | None = None) -> Outcome:
        """Route an order step; settle first if its freeze ended at or before this step.

        `terms` are a first payment's, locked upstream by attribute_order (staged topology); without them the
        tree and tiers in this state lock them.
        """
        order = self.state.order(ev.order_id)
        if order is not None and ev.event_id in order.event_ids:
            return Outcome(duplicate=True)
        if self.state.is_dead(ev.event_id):
            return Outcome(duplicate=True)
        out = Outcome()
        if (
            order is not None
            and order.settle_at_ms is not None
            and not order.settled
            and order.settle_at_ms <= ev.ts_ms
        ):
            out.entries.extend(self._settle(ev.order_id, order))
        if ev.type == "paid":
            step = self._paid(ev, order, terms)
        elif ev.type == "refunded":
            step = self._refunded(ev, order)
        elif ev.type == "cancelled":
            step = self._cancelled(ev, order)
        else:
            step = self._completed(ev, order)
        out.entries.extend(step.entries)
        out.bindings.extend(step.bindings)
        out.rejection, out.detail = step.rejection, step.detail
        return out

    def _record(self, ev: Order, order: OrderState) -> None:
        order.event_ids.append(ev.event_id)
        self.state.put_order(ev.order_id, order)

    def _paid(self, ev: Order, order: OrderState | None, terms: Terms | None = None) -> Outcome:
        if order is not None and order.cancelled and not order.paid:
            return self._reject(ev.event_id, ORDER_CANCELLED, f"order {ev.order_id} was cancelled before payment")
        if order is not None and order.paid:
            return self._reject(ev.event_id, ORDER_ALREADY_PAID, f"order {ev.order_id} is already paid")
        out = Outcome()
        if terms is None:
            terms = self.paid_terms(ev, out)
        out.entries.extend(self.accrue(ev, terms))
        return out

    def paid_terms(self, ev: Order, out: Outcome) -> Terms:
        """A first payment binds an unbound buyer (into out) and locks its beneficiaries and rates from the tree."""
        plan = self.program.plan_for(ev.campaign_id)
        buyer = self.state.user(ev.buyer_id)
        if buyer is not None and buyer.inviter is None:
            candidate, _ = self._candidate(ev.ref, ev.visitor_id, ev.ts_ms)
            if self._valid_inviter(ev.buyer_id, candidate):
                buyer.inviter = candidate
                self.state.put_user(ev.buyer_id, buyer)
                out.bindings.append(Binding(ev.buyer_id, candidate, ev.ts_ms, "order"))
        beneficiaries = self._beneficiaries(ev, buyer, plan)
        rates = [self._rate(b, level, plan) for level, b in enumerate(beneficiaries, start=1)]
        item_rates = None
        if ev.items is not None:
            skus = [i.sku_id for i in ev.items]
            item_rates = [
                [self.program.item_rate(sku, level, tier_bps) if self._eligible(b) else 0 for sku in skus]
                for level, (b, tier_bps) in enumerate(zip(beneficiaries, rates, strict=True), start=1)
            ]
        return Terms(beneficiaries, rates, plan.max_total_bps, item_rates)

    def accrue(self, ev: Order, terms: Terms) -> list[Entry]:
        """A first payment on its locked terms: the order's state and each level's accrued entry."""
        amount = ev.amount_cents or 0
        new = OrderState(
            buyer_id=ev.buyer_id,
            campaign_id=ev.campaign_id,
            paid=True,
            paid_cents=amount,
            beneficiaries=list(terms.beneficiaries),
            rates_bps=list(terms.rates_bps),
            max_total_bps=terms.max_total_bps,
        )
        beneficiaries = new.beneficiaries
        if ev.items is not None:
            new.item_skus = [i.sku_id for i in ev.items]
            new.item_cents = [i.amount_cents for i in ev.items]
            new.item_refunded_cents = [0] * len(ev.items)
            new.item_rates_bps = [list(r) for r in terms.item_rates_bps or []]
        new.amounts = self._amounts(new)
        self._record(ev, new)
        return [
            self._entry(ev.event_id, ev.ts_ms, ev.order_id, new, b, level, ACCRUED, a)
            for level, (b, a) in enumerate(zip(beneficiaries, new.amounts, strict=True), start=1)
            if b is not None and a > 0
        ]

    def attribute_order(self, ev: Order) -> tuple[Outcome, Terms | None, bool]:
        """Staged topology's first stage: an order step's part that reads the tree; (outcome, terms, forward).

        A first payment binds and locks its terms here; every step of an order then goes downstream, where the
        order's own state decides (apply_order with these terms). A paid or cancelled order is marked, so a later
        payment of it (always a duplicate or a dead letter downstream) binds nobody, as on one worker.
        """
        marks = self.state.order_marks
        if ev.order_id in marks:
            return Outcome(), None, True
        if ev.type == "paid":
            if self.state.is_dead(ev.event_id):
                return Outcome(duplicate=True), None, False
            out = Outcome()
            terms = self.paid_terms(ev, out)
            marks.add(ev.order_id)
            self.state.new_order_marks.add(ev.order_id)
            return out, terms, True
        if ev.type == "cancelled":
            marks.add(ev.order_id)
            self.state.new_order_marks.add(ev.order_id)
        return Outcome(), None, True

    def _beneficiaries(self, ev: Order, buyer: User | None, plan: Plan) -> list[str | None]:
        """Levels 1..n: the first beneficiary, then each one's inviter; a gap ends the chain."""
        if plan.self_purchase and buyer is not None and buyer.distributor:
            first: str | None = ev.buyer_id
        elif buyer is not None:
            first = buyer.inviter
        else:
            candidate, _ = self._candidate(ev.ref, ev.visitor_id, ev.ts_ms)
            first = candidate if self._valid_inviter(ev.buyer_id, candidate) else None
        chain: list[str | None] = [first]
        while len(chain) < plan.levels:
            prev = chain[-1]
            node = self.state.user(prev) if prev is not None else None
            chain.append(node.inviter if node is not None else None)
        return chain

    def _eligible(self, beneficiary: str | None) -> bool:
        """Whether a beneficiary can earn now: present, and a distributor (never approved or revoked: no)."""
        if beneficiary is None:
            return False
        user = self.state.user(beneficiary)
        return user is not None and user.distributor

    def _rate(self, beneficiary: str | None, level: int, plan: Plan) -> int:
        """0 for a missing beneficiary or a non-distributor (they get nothing, levels are not shifted)."""
        if beneficiary is None or not self._eligible(beneficiary):
            return 0
        return plan.rate(self.state.tier(beneficiary), level)

    def _amounts(self, order: OrderState) -> list[int]:
        """Every level's amount on what the order has left, with its locked rates (per item if itemized) and cap."""
        left = order.paid_cents - order.refunded_cents
        if order.item_skus:
            return commission.split_items(order.item_left(), order.item_rates_bps, left, order.max_total_bps)
        return commission.split(left, order.rates_bps, order.max_total_bps)

    def _item_shares(self, ev: Order, order: OrderState, amount: int) -> list[int] | str:
        """How much of each item this refund takes, or why it is an over_refund."""
        if ev.items is None:
            return commission.spread(amount, order.item_left())
        if not order.item_skus:
            return f"refund names items but order {ev.order_id} was paid without items"
        index = {sku: i for i, sku in enumerate(order.item_skus)}
        shares = [0] * len(order.item_skus)
        for item in ev.items:
            if item.sku_id not in index:
                return f"sku {item.sku_id} is not in order {ev.order_id}"
            shares[index[item.sku_id]] += item.amount_cents
        for i, (share, left) in enumerate(zip(shares, order.item_left(), strict=True)):
            if share > left:
                return f"refund of {share} cents of sku {order.item_skus[i]} exceeds the {left} cents it has left"
        return shares

    def _refunded(self, ev: Order, order: OrderState | None) -> Outcome:
        if order is None or not order.paid:
            return self._reject(ev.event_id, UNKNOWN_ORDER, f"order {ev.order_id} was never paid")
        amount = ev.amount_cents or 0
        if order.refunded_cents + amount > order.paid_cents:
            left = order.paid_cents - order.refunded_cents
            return self._refuse_step(
                ev, order, OVER_REFUND, f"refund of {amount} cents exceeds the {left} cents left on {ev.order_id}"
            )
        shares: list[int] | None = None
        if order.item_skus or ev.items is not None:
            found = self._item_shares(ev, order, amount)
            if isinstance(found, str):
                return self._refuse_step(ev, order, OVER_REFUND, found)
            shares = found
        return Outcome(entries=self._refund(ev, order, amount, shares))

    def _refuse_step(self, ev: Order, order: OrderState, reason: str, detail: str) -> Outcome:
        """Dead-letter a step of a known order; its event id joins the order's so a redelivery is a duplicate."""
        order.event_ids.append(ev.event_id)
        self.state.put_order(ev.order_id, order)
        return Outcome(rejection=reason, detail=detail)

    def _refund(self, ev: Order, order: OrderState, amount: int, item_shares: list[int] | None) -> list[Entry]:
        """Recompute every level on what is left with the locked terms; emit the differences."""
        order.refunded_cents += amount
        if item_shares is not None:
            order.item_refunded_cents = [r + s for r, s in zip(order.item_refunded_cents, item_shares, strict=True)]
        after = self._amounts(order)
        kind = CLAWED_BACK if order.settled else REVERSED
        entries = []
        for level, (b, d) in enumerate(
            zip(order.beneficiaries, commission.deltas(order.amounts, after), strict=True), 1
        ):
            if b is not None and d != 0:
                entries.append(self._entry(ev.event_id, ev.ts_ms, ev.order_id, order, b, level, kind, d))
        order.amounts = after
        self._record(ev, order)
        return entries

    def _cancelled(self, ev: Order, order: OrderState | None) -> Outcome:
        if order is None:
            self._record(ev, OrderState(buyer_id=ev.buyer_id, campaign_id=ev.campaign_id, cancelled=True))
            return Outcome()
        if order.completed_event_id is not None:
            return self._refuse_step(ev, order, CANNOT_CANCEL_COMPLETED, f"order {ev.order_id} is already completed")
        order.cancelled = True
        if not order.paid:
            self._record(ev, order)
            return Outcome()
        shares = order.item_left() if order.item_skus else None
        return Outcome(entries=self._refund(ev, order, order.paid_cents - order.refunded_cents, shares))

    def _completed(self, ev: Order, order: OrderState | None) -> Outcome:
        if order is None or not order.paid:
            return self._reject(ev.event_id, UNKNOWN_ORDER, f"order {ev.order_id} was never paid")
        if order.completed_event_id is not None:
            return self._refuse_step(ev, order, DUPLICATE_COMPLETED, f"order {ev.order_id} is already completed")
        order.completed_event_id = ev.event_id
        order.settle_at_ms = ev.ts_ms + self.program.freeze_ms
        self._record(ev, order)
        if order.settle_at_ms <= ev.ts_ms:
            return Outcome(entries=self._settle(ev.order_id, order))
        return Outcome()

    def _settle(self, order_id: str, order: OrderState) -> list[Entry]:
        """The freeze ended: each level's current amount moves pending -> available."""
        assert order.settle_at_ms is not None and order.completed_event_id is not None
        order.settled = True
        self.state.put_order(order_id, order)
        return [
            self._entry(order.completed_event_id, order.settle_at_ms, order_id, order, b, level, SETTLED, a)
            for level, (b, a) in enumerate(zip(order.beneficiaries, order.amounts, strict=True), 1)
            if b is not None and a > 0
        ]

    def settle_due(self, until_ms: int) -> list[Entry]:
        """Settle every loaded order whose freeze ended at or before until_ms, oldest first."""
        entries: list[Entry] = []
        for oid in self.state.settle_index.pop_due(until_ms):
            order = self.state.order(oid)
            if order is not None and not order.settled:
                entries.extend(self._settle(oid, order))
        return entries

    def _entry(
        self,
        source: str,
        ts_ms: int,
        order_id: str,
        order: OrderState,
        beneficiary: str,
        level: int,
        kind: str,
        amount: int,
    ) -> Entry:
        entry = Entry(
            entry_id=f"{source}:{level}:{kind}",
            source_event_id=source,
            ts_ms=ts_ms,
            order_id=order_id,
            buyer_id=order.buyer_id,
            beneficiary_id=beneficiary,
            level=level,
            kind=kind,
            amount_cents=amount,
            campaign_id=order.campaign_id,
        )
        self.state.add_balance(entry)
        return entry

    # ---- distributors, adjustments, withdrawals (contract v2) -------------

    def apply_status(self, ev: DistributorStatus, key: SeqKey) -> Outcome:
        """Approve, freeze or revoke a distributor for the events after it; an older redelivery changes nothing."""
        user = self.state.user(ev.user_id)
        if user is None:
            return self._reject(ev.event_id, UNKNOWN_USER, f"user {ev.user_id} never signed up")
        if user.status_key is not None and key <= user.status_key:
            return Outcome(duplicate=key == user.status_key)
        if ev.status == "active":
            user.distributor, user.frozen = True, False
        elif ev.status == "frozen":
            user.frozen = True
        else:
            user.distributor, user.frozen = False, False
        user.status_key = key
        self.state.put_user(ev.user_id, user)
        return Outcome()

    def apply_adjustment(self, ev: Adjustment) -> Outcome:
        """An operator's signed credit or debit on available, once per adjustment_id."""
        if self.state.is_dead(ev.event_id):
            return Outcome(duplicate=True)
        applied = self.state.adjustment(ev.adjustment_id)
        if applied == ev.event_id:
            return Outcome(duplicate=True)
        if self.state.user(ev.distributor_id) is None:
            return self._reject(ev.event_id, UNKNOWN_USER, f"user {ev.distributor_id} never signed up")
        if applied is not None:
            return self._reject(
                ev.event_id, DUPLICATE_ADJUSTMENT, f"adjustment {ev.adjustment_id} was already applied by {applied}"
            )
        self.state.put_adjustment(ev.adjustment_id, ev.event_id)
        entry = self._money_entry(
            ev.event_id,
            ev.ts_ms,
            ev.distributor_id,
            ADJUSTED,
            ev.amount_cents,
            adjustment_id=ev.adjustment_id,
            reason=ev.reason,
        )
        return Outcome(entries=[entry])

    def apply_withdrawal(self, ev: Withdrawal) -> Outcome:
        """One step of a withdrawal: a request holds available in reserved; the review releases or pays it out."""
        if self.state.is_dead(ev.event_id):
            return Outcome(duplicate=True)
        w = self.state.withdrawal(ev.withdrawal_id)
        if w is not None and ev.event_id in w.event_ids:
            return Outcome(duplicate=True)
        if ev.type == REQUESTED:
            return self._requested(ev, w)
        if w is None or w.distributor_id != ev.distributor_id:
            whose = "was never requested" if w is None else f"was requested by {w.distributor_id}"
            return self._reject(ev.event_id, INVALID_TRANSITION, f"withdrawal {ev.withdrawal_id} {whose}")
        allowed = {APPROVED: (REQUESTED,), REJECTED: (REQUESTED, APPROVED), FAILED: (APPROVED,), PAID: (APPROVED,)}
        if w.status not in allowed[ev.type]:
            return self._reject(
                ev.event_id, INVALID_TRANSITION, f"withdrawal {ev.withdrawal_id} is {w.status}, cannot be {ev.type}"
            )
        w.status = ev.type
        w.updated_ms = ev.ts_ms
        w.event_ids.append(ev.event_id)
        self.state.put_withdrawal(ev.withdrawal_id, w)
        if ev.type == APPROVED:
            return Outcome()
        if ev.type == PAID:
            entry = self._money_entry(
                ev.event_id,
                ev.ts_ms,
                w.distributor_id,
                WITHDRAWN,
                -w.amount_cents,
                withdrawal_id=ev.withdrawal_id,
                fee_cents=w.fee_cents,
                payout_cents=w.amount_cents - w.fee_cents,
            )
        else:
            entry = self._money_entry(
                ev.event_id, ev.ts_ms, w.distributor_id, RELEASED, w.amount_cents, withdrawal_id=ev.withdrawal_id
            )
        return Outcome(entries=[entry])

    def _requested(self, ev: Withdrawal, w: WithdrawalState | None) -> Outcome:
        """The spec's checks in its order; a refused request leaves no withdrawal behind."""
        uid = ev.distributor_id
        amount = ev.amount_cents or 0
        user = self.state.user(uid)
        rules = self.program.withdrawals
        if user is None:
            return self._reject(ev.event_id, UNKNOWN_USER, f"user {uid} never signed up")
        if not user.distributor:
            return self._reject(ev.event_id, NOT_A_DISTRIBUTOR, f"user {uid} is not a distributor")
        if user.frozen:
            return self._reject(ev.event_id, DISTRIBUTOR_FROZEN, f"distributor {uid} is frozen")
        if w is not None:
            return self._reject(
                ev.event_id, DUPLICATE_WITHDRAWAL, f"withdrawal {ev.withdrawal_id} was already requested"
            )
        if amount < rules.min_cents:
            return self._reject(
                ev.event_id, BELOW_MINIMUM, f"{amount} cents is below the minimum of {rules.min_cents} cents"
            )
        available = self.state.balance(uid).available
        if amount > available:
            return self._reject(
                ev.event_id, INSUFFICIENT_BALANCE, f"{amount} cents requested, {available} cents available"
            )
        new = WithdrawalState(uid, amount, rules.fee(amount), REQUESTED, ev.channel, [ev.event_id], ev.ts_ms, ev.ts_ms)
        self.state.put_withdrawal(ev.withdrawal_id, new)
        entry = self._money_entry(ev.event_id, ev.ts_ms, uid, HELD, -amount, withdrawal_id=ev.withdrawal_id)
        return Outcome(entries=[entry])

    def _money_entry(
        self,
        source: str,
        ts_ms: int,
        beneficiary: str,
        kind: str,
        amount: int,
        *,
        withdrawal_id: str | None = None,
        adjustment_id: str | None = None,
        reason: str | None = None,
        fee_cents: int | None = None,
        payout_cents: int | None = None,
    ) -> Entry:
        """An entry of a v2 kind: no order, level 0, the withdrawal or adjustment it belongs to."""
        entry = Entry(
            entry_id=f"{source}:0:{kind}",
            source_event_id=source,
            ts_ms=ts_ms,
            order_id=None,
            buyer_id=None,
            beneficiary_id=beneficiary,
            level=0,
            kind=kind,
            amount_cents=amount,
            campaign_id=None,
            withdrawal_id=withdrawal_id,
            adjustment_id=adjustment_id,
            reason=reason,
            fee_cents=fee_cents,
            payout_cents=payout_cents,
        )
        self.state.add_balance(entry)
        return entry

    # ---- dispatch --------------------------------------------------------

    def apply(self, ev: Event, key: SeqKey) -> Outcome:
        """Apply one event at its place in the sequence."""
        if isinstance(ev, Order):
            return self.apply_order(ev)
        if isinstance(ev, Signup):
            return self.apply_signup(ev)
        if isinstance(ev, Click):
            return self.apply_click(ev, key)
        if isinstance(ev, Tier):
            return self.apply_tier(ev, key)
        if isinstance(ev, DistributorStatus):
            return self.apply_status(ev, key)
        if isinstance(ev, Adjustment):
            return self.apply_adjustment(ev)
        return self.apply_withdrawal(ev)

    def step(self, ev: Event, key: SeqKey) -> Outcome:
        """Global settlement, then the event: every loaded order due at or before its ts settles first.

        The settlement entries come first in the outcome, so a withdrawal sees every settlement due by its ts.
        """
        settled = self.settle_due(key[0])
        res = self.apply(ev, key)
        res.entries[:0] = settled
        return res
