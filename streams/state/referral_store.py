"""Redis as the engine's state: the referral tree, tiers, clicks and their rate counts, orders, balances, dead ids.

A batch is read with one Lua call (users with their whole ancestor chain, so chain resolution and the
cycle check need no further trips) and written back with one more: the commit script checks the lease and
the state epoch and then runs the batch's commands, atomically, so either all of a batch's decisions land
or none do. Layout: docs/redis.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.commands.core import DataAccessCommands

from schemas.events import Click, Event, Order, Signup, Tier
from streams import names
from streams.engine.config import ClickLimits
from streams.engine.ledger import (
    APPROVED,
    FAILED,
    REJECTED,
    REQUESTED,
    Balance,
    ClickMark,
    IpWindow,
    OrderState,
    SeqKey,
    State,
    TierMark,
    User,
    WithdrawalState,
)
from streams.state import redis_conn

_JSON = msgspec.json.Encoder()
_ORDER = msgspec.json.Decoder(list[Any])
CLICK_TTL_MARGIN_MS = 86_400_000
# A per-ip window count is kept a few windows (wall clock, from its last write), at least 5 minutes, so the
# aligner's grace and a short stop cannot split one window's count; after that it costs nothing.
IP_CLICKS_TTL_WINDOWS = 3
IP_CLICKS_MIN_TTL_MS = 300_000
LEASE_TTL_MS = 10_000
MAX_CHAIN = 100_000
# redis-py 8 gives up on a reply after 5 s; a big batch's script may run longer, and a worker that gave up
# would crash and redo the same batch. A Redis that stays silent for this long is a real failure.
STORE_SOCKET_TIMEOUT_S = 60.0
# Distributor status values of the user hash's `s` field (contract v2's fenxiao.distributors).
ACTIVE, FROZEN, REVOKED = "active", "frozen", "revoked"
# Withdrawal states that sit in the operator's review queue (fx:wq).
OPEN_WITHDRAWAL = (REQUESTED, APPROVED)

_LOAD_LUA = """
local req = cjson.decode(ARGV[1])
local pu, pc, po, dl_key, settle_key = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_chain = tonumber(ARGV[7])
local epoch = redis.call('GET', ARGV[8])
local pci = ARGV[9]
local users, clicks, orders, dead, ips = {}, {}, {}, {}, {}
local function hmap(key)
  local flat = redis.call('HGETALL', key)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m, #flat > 0
end
local function walk(uid)
  local n = 0
  while uid and users[uid] == nil and n < max_chain do
    local m, found = hmap(pu .. uid)
    users[uid] = found and m or false
    uid = found and m['i'] or nil
    n = n + 1
  end
end
for _, v in ipairs(req.visitors) do
  local m, found = hmap(pc .. v)
  clicks[v] = found and m or false
  if found and m['r'] then walk(m['r']) end
end
for _, uid in ipairs(req.users) do walk(uid) end
for _, w in ipairs(req.ips) do ips[w] = redis.call('GET', pci .. w) or false end
for _, oid in ipairs(req.orders) do
  orders[oid] = redis.call('GET', po .. oid) or false
end
local due = redis.call('ZRANGEBYSCORE', settle_key, '-inf', req.settle_until, 'LIMIT', 0, req.settle_limit)
for _, oid in ipairs(due) do
  if orders[oid] == nil then orders[oid] = redis.call('GET', po .. oid) or false end
end
if #req.events > 0 then
  local flags = redis.call('SMISMEMBER', dl_key, unpack(req.events))
  for i, eid in ipairs(req.events) do if flags[i] == 1 then dead[#dead + 1] = eid end end
end
return cjson.encode({users = users, clicks = clicks, orders = orders, dead = dead, due = due, epoch = epoch, ips = ips})
"""


def _key_str(key: SeqKey) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}"


def _key_parse(s: str) -> SeqKey:
    ts, rank, eid = s.split("|", 2)
    return (int(ts), int(rank), eid)


def ip_window_suffix(key: IpWindow) -> str:
    """The per-ip count key after its prefix: window first, so an ip with ':' (IPv6) stays unambiguous."""
    return f"{key[0]}:{key[1]}"


def encode_order(o: OrderState) -> str:
    """Compact JSON of an order's locked state (positional, to keep open orders small)."""
    flags = (1 if o.cancelled else 0) | (2 if o.paid else 0) | (4 if o.settled else 0)
    return _JSON.encode(
        [
            o.buyer_id,
            o.campaign_id,
            flags,
            o.paid_cents,
            o.refunded_cents,
            o.beneficiaries,
            o.rates_bps,
            o.max_total_bps,
            o.amounts,
            o.completed_event_id,
            o.settle_at_ms,
            o.event_ids,
            *((o.item_skus, o.item_cents, o.item_refunded_cents, o.item_rates_bps) if o.item_skus else ()),
        ]
    ).decode()


def decode_order(s: str) -> OrderState:
    """Inverse of encode_order."""
    b, c, flags, paid, refunded, bens, rates, cap, amounts, completed, settle_at, eids, *items = _ORDER.decode(s)
    skus, cents, item_refunded, item_rates = items if items else ([], [], [], [])
    return OrderState(
        buyer_id=b,
        campaign_id=c,
        cancelled=bool(flags & 1),
        paid=bool(flags & 2),
        settled=bool(flags & 4),
        paid_cents=paid,
        refunded_cents=refunded,
        beneficiaries=bens,
        rates_bps=rates,
        max_total_bps=cap,
        amounts=amounts,
        completed_event_id=completed,
        settle_at_ms=settle_at,
        event_ids=eids,
        item_skus=skus,
        item_cents=cents,
        item_refunded_cents=item_refunded,
        item_rates_bps=item_rates,
    )


class CachedState(State):
    """The worker's complete in-memory state; orders are kept as their stored JSON between batches.

    A decoded order costs about five times its encoding in Python objects, and most orders are read again
    seldom (a refund, a completion): an order is decoded when the rules read it, and encoded back when its
    batch is staged, which the Redis write needs anyway.
    """

    def __init__(self) -> None:
        super().__init__(complete=True)
        self.cold: dict[str, str] = {}

    def order(self, order_id: str) -> OrderState | None:
        """The order's state (decoded on first use in a batch), or None if never seen."""
        o = self.orders.get(order_id)
        if o is not None:
            return o
        raw = self.cold.get(order_id)
        if raw is None:
            return None
        o = self.orders[order_id] = decode_order(raw)
        return o

    def order_count(self) -> int:
        """Orders held, hot or cold."""
        return len(self.cold) + sum(1 for oid in self.orders if oid not in self.cold)


@dataclass
class BatchRequest:
    """Which keys a batch of events can touch."""

    users: set[str] = field(default_factory=set)
    visitors: set[str] = field(default_factory=set)
    orders: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    ip_windows: set[IpWindow] = field(default_factory=set)

    @classmethod
    def for_events(cls, events: Iterable[Event], limits: ClickLimits | None = None) -> BatchRequest:
        """Collect every user, visitor, order, event id and (with an ip limit) per-ip window the rules may look at."""
        req = cls()
        per_ip = limits is not None and limits.max_per_ip > 0
        for ev in events:
            req.events.append(ev.event_id)
            if isinstance(ev, Order):
                req.orders.add(ev.order_id)
                req.users.add(ev.buyer_id)
                if ev.ref:
                    req.users.add(ev.ref)
                if ev.visitor_id:
                    req.visitors.add(ev.visitor_id)
            elif isinstance(ev, Signup):
                req.users.add(ev.user_id)
                if ev.ref:
                    req.users.add(ev.ref)
                if ev.visitor_id:
                    req.visitors.add(ev.visitor_id)
            elif isinstance(ev, Click):
                req.visitors.add(ev.visitor_id)
                req.users.add(ev.ref)
                if per_ip and ev.ip and limits is not None:
                    req.ip_windows.add((limits.window(ev.ts_ms), ev.ip))
            elif isinstance(ev, Tier):
                req.users.add(ev.user_id)
        return req


# KEYS[1] lease, KEYS[2] epoch; ARGV[1] owner, ARGV[2] epoch, ARGV[3] lease TTL ms. Refuses unless both are
# this worker's, then renews the lease. Shared by the commit script here and the cluster's journal script.
LEASE_AND_EPOCH_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {'lease', holder} end
local epoch = redis.call('GET', KEYS[2])
if epoch ~= ARGV[2] then return {'epoch', epoch or ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
"""
_COMMIT_LUA = (
    LEASE_AND_EPOCH_LUA
    + """local commands = cjson.decode(ARGV[4])
for i = 1, #commands do redis.call(unpack(commands[i])) end
return {'ok', tostring(#commands)}
"""
)
# Lua's unpack() handles a few thousand values; longer commands are split by whoever stages them.
MAX_COMMAND_ARGS = 4000


class StagedCommands(DataAccessCommands):
    """Records redis-py commands (hset, xadd, zincrby, ...) as argument lists for the commit script.

    Every argument becomes a string here, so the script never sees a Lua number (which would print a large
    integer as 1e+15 and lose cents).
    """

    _event_dispatcher: Any = None  # redis-py's command protocol declares it; nothing is dispatched here

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        """Queue one command; redis-py's command methods all end here."""
        if len(args) > MAX_COMMAND_ARGS:
            raise ValueError(f"{args[0]} with {len(args)} arguments is too long for one scripted call")
        self.commands.append([a.decode() if isinstance(a, bytes) else str(a) for a in args])

    def queue(self, command: list[str]) -> None:
        """Queue a command its caller has spelled as strings already (hot read-model paths skip the conversion)."""
        if len(command) > MAX_COMMAND_ARGS:
            raise ValueError(f"{command[0]} with {len(command)} arguments is too long for one scripted call")
        self.commands.append(command)

    def payload(self) -> bytes:
        """The commands as the script's JSON argument, as bytes: redis-py sends them unchanged (no str round trip)."""
        return _JSON.encode(self.commands)


class StateLost(RuntimeError):
    """Redis no longer holds the state this worker was applying to (flushed, or restarted empty)."""


class LeaseLost(RuntimeError):
    """Another worker holds this Redis: applying events here would move money twice."""


def acquire_lease(url: str, owner: str, wait_s: float | None, on_wait: Callable[[str], None] | None = None) -> bool:
    """Take the single-writer lease, waiting for the holder to stop (forever when wait_s is None: a standby).

    True when it had to wait for another holder.
    """
    r = redis_conn.connect(url, decode_responses=True)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    told = False
    try:
        while True:
            if r.set(names.KEY_LEASE, owner, nx=True, px=LEASE_TTL_MS) or r.get(names.KEY_LEASE) == owner:
                return told
            if on_wait is not None and not told:
                on_wait(str(r.get(names.KEY_LEASE)))
                told = True
            if deadline is not None and time.monotonic() > deadline:
                holder = str(r.get(names.KEY_LEASE))
                raise LeaseLost(
                    f"another worker ({holder}) is applying events to this Redis; only one may at a time. "
                    "Stop it, or give this worker its own Redis (FENXIAO_REDIS_URL)."
                )
            time.sleep(0.5)
    finally:
        r.close()


_RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def release_lease(url: str, owner: str) -> bool:
    """Give the lease up at a clean stop, only if still ours, so a standby takes over at once instead of in 10 s."""
    import redis

    r = redis_conn.connect(url, decode_responses=True, socket_connect_timeout=2)
    try:
        return bool(r.eval(_RELEASE_LUA, 1, names.KEY_LEASE, owner))
    except redis.RedisError:
        return False
    finally:
        r.close()


class RedisStore:
    """Loads a batch's slice of state and writes back what the ledger changed, atomically."""

    def __init__(
        self, url: str, attribution_window_ms: int, owner: str = "", epoch: str = "", click_window_ms: int = 60_000
    ) -> None:
        self.owner = owner
        self.epoch = epoch
        self.staged = False  # the staged topology's attribution stage: orders are the credit stage's
        self._lock = asyncio.Lock()
        self.redis = redis_conn.connect_async(url, decode_responses=True, socket_timeout=STORE_SOCKET_TIMEOUT_S)
        self._load = self.redis.register_script(_LOAD_LUA)
        self._commit = self.redis.register_script(_COMMIT_LUA)
        self.click_ttl_ms = attribution_window_ms + CLICK_TTL_MARGIN_MS
        self.ip_clicks_ttl_ms = max(IP_CLICKS_TTL_WINDOWS * click_window_ms, IP_CLICKS_MIN_TTL_MS)

    async def close(self) -> None:
        """Release the connection pool."""
        await self.redis.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self.redis.ping())

    async def load(self, req: BatchRequest, settle_until_ms: int, settle_limit: int = 10_000) -> State:
        """The batch's users with full ancestor chains, clicks, orders, due settlements and dead ids, as State."""
        payload = {
            "users": sorted(req.users),
            "visitors": sorted(req.visitors),
            "orders": sorted(req.orders),
            "events": req.events,
            "settle_until": settle_until_ms,
            "settle_limit": settle_limit,
            "ips": sorted(ip_window_suffix(k) for k in req.ip_windows),
        }
        data = await self._fetch(payload)
        return self._state(req, data)

    async def _fetch(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One round trip: the load script walks the chains on the server."""
        raw = await self._load(
            args=[
                json.dumps(payload),
                names.KEY_USER,
                names.KEY_CLICK,
                names.KEY_ORDER,
                names.KEY_DEAD,
                names.KEY_SETTLE,
                MAX_CHAIN,
                names.KEY_EPOCH,
                names.KEY_IP_CLICKS,
            ],
        )
        data: dict[str, Any] = json.loads(raw)
        return data

    def _state(self, req: BatchRequest, data: dict[str, Any]) -> State:
        """What the load found, as the ledger's State; refused when the epoch says Redis lost its state."""
        if data.get("epoch") != self.epoch:
            raise StateLost(_state_lost_message(data.get("epoch")))
        state = State(complete=False)
        for uid, m in _as_map(data["users"]).items():
            state.users[uid] = _user(m) if m and "t" in m else None
            state.tiers[uid] = TierMark(m["r"], _key_parse(m["k"])) if m and "r" in m else None
        for v in req.visitors:
            state.clicks[v] = None
        for v, m in _as_map(data["clicks"]).items():
            state.clicks[v] = _click(m) if m else None
        ips = _as_map(data.get("ips"))
        for k in req.ip_windows:
            n = ips.get(ip_window_suffix(k))
            state.ip_clicks[k] = int(n) if n else 0
        for oid in req.orders:
            state.orders[oid] = None
        for oid, s in _as_map(data["orders"]).items():
            state.orders[oid] = decode_order(s) if s else None
        for oid in _as_list(data["due"]):
            o = state.orders.get(oid)
            if o is not None and o.settle_at_ms is not None and not o.settled:
                state.settle_index[oid] = o.settle_at_ms
        state.dead_ids = set(_as_list(data["dead"]))
        state.dead_checked = set(req.events)
        return state

    async def renew_lease(self) -> None:
        """Extend the lease; raise if another worker took it (the timer keeps it alive between batches)."""
        await self._guarded(lambda p: None)

    async def _guarded(self, fill: Callable[[Any], None]) -> None:
        """Run the commit script: renew the lease and apply the staged commands, only while lease and epoch are ours.

        One script call instead of WATCH + MULTI/EXEC: the check and the writes are atomic on the server, and
        thousands of commands travel as one JSON argument instead of being packed and answered one by one.
        The lock keeps this worker's renewals and commits in order.
        """
        commands = StagedCommands()
        fill(commands)
        async with self._lock:
            await self._recover()
            commands.commands = await self._without_unions(commands.commands)
            verdict, found = await self._write(commands)
        if verdict == "lease":
            raise LeaseLost(f"worker {found} took over this Redis; this worker ({self.owner}) must stop")
        if verdict == "epoch":
            raise StateLost(_state_lost_message(found or None))

    async def _recover(self) -> None:
        """Nothing to redo on one server: a commit is one atomic script (the cluster store redoes its journal)."""

    async def _without_unions(self, commands: list[list[str]]) -> list[list[str]]:
        """Replace each ZUNIONSTORE (a user bound at first purchase brings its team up) by ZADDs of its sources.

        ZUNIONSTORE d 2 d s rewrites all of d: 375 ms for a 200,000-member team, so at 1M users a batch of them
        outran the client's timeout. ZADD d GT of s's members is the same union (AGGREGATE MAX, d among the
        sources) at the cost of s, and it touches one key, which a Redis Cluster needs (d and s are two users'
        keys, two slots). The sources are read now (this worker is the only writer) and the batch's earlier
        ZADDs and unions are played over them in order, so the written commands redo the same after a crash.
        """
        unions = [c for c in commands if c[0].upper() == "ZUNIONSTORE"]
        if not unions:
            return commands
        # Only keys read as another key's source need their members: a destination already holds its own.
        watched = sorted({k for c in unions for k in c[3 : 3 + int(c[2])] if k != c[1]})
        async with self.redis.pipeline(transaction=False) as p:
            for k in watched:
                p.zrange(k, 0, -1, withscores=True)
            got = await p.execute()
        sets: dict[str, dict[str, float]] = {k: dict(pairs) for k, pairs in zip(watched, got, strict=True)}
        out: list[list[str]] = []
        for c in commands:
            name = c[0].upper()
            if name == "ZADD" and c[1] in sets:
                args = c[2:]
                while args and args[0].upper() in ("NX", "XX", "GT", "LT", "CH"):
                    args = args[1:]
                zs = sets[c[1]]
                for raw, member in zip(args[0::2], args[1::2], strict=True):
                    zs[member] = float(raw)
            if name != "ZUNIONSTORE":
                out.append(c)
                continue
            dest, n = c[1], int(c[2])
            srcs, rest = c[3 : 3 + n], [a.upper() for a in c[3 + n :]]
            if rest not in ([], ["AGGREGATE", "MAX"]):
                raise ValueError(f"ZUNIONSTORE {rest} has no single-key equivalent here (only AGGREGATE MAX)")
            added: dict[str, float] = {}
            for k in srcs:
                if k != dest:
                    for member, score in sets[k].items():
                        added[member] = max(added.get(member, score), score)
            if dest not in srcs:
                out.append(["DEL", dest])
                if dest in sets:
                    sets[dest] = {}
            flat = [x for member, score in sorted(added.items()) for x in (format(score, ".17g"), member)]
            for i in range(0, len(flat), MAX_COMMAND_ARGS - 4):
                out.append(["ZADD", dest, "GT", *flat[i : i + MAX_COMMAND_ARGS - 4]])
            if dest in sets:
                zs = sets[dest]
                for member, score in added.items():
                    zs[member] = max(zs.get(member, score), score)
        return out

    async def _write(self, commands: StagedCommands) -> tuple[str, str]:
        """One atomic script call: check and renew the lease, check the epoch, run the commands."""
        verdict, found = await self._commit(
            keys=[names.KEY_LEASE, names.KEY_EPOCH],
            args=[self.owner, self.epoch, LEASE_TTL_MS, commands.payload()],
        )
        return str(verdict), str(found)

    async def commit(self, state: State, position: SeqKey | None, stage: Callable[[Any], None] | None = None) -> None:
        """Write every change of the batch in one atomic script call, only while this worker holds the lease.

        `stage` adds more commands to the same transaction (read models such as leaderboards), so they
        land exactly when the batch's state does: once. A retried attempt stages everything again.
        """

        def fill(p: Any) -> None:
            if stage is not None:
                stage(p)
            p.commands.extend(self._state_commands(state, position))

        await self._guarded(fill)

    def stage(self, state: State, position: SeqKey | None) -> StagedCommands:
        """The batch's writes as commands, built now (a snapshot: later batches mutate the same objects).

        The state is the worker's complete in-memory copy; its dirty sets and balance deltas are reset here,
        so the next batch starts with nothing to write.
        """
        staged = StagedCommands()
        staged.commands = self._state_commands(state, position)
        if isinstance(state, CachedState):
            state.orders.clear()  # every dirty order's encoding is in state.cold now
        state.dirty_users.clear()
        state.dirty_tiers.clear()
        state.dirty_clicks.clear()
        state.dirty_ip_clicks.clear()
        state.dirty_orders.clear()
        state.new_dead_ids.clear()
        state.new_order_marks.clear()
        state.balance_deltas.clear()
        state.dirty_balances.clear()
        state.dirty_adjustments.clear()
        state.dirty_withdrawals.clear()
        return staged

    async def write(self, staged: StagedCommands) -> None:
        """Write a staged batch atomically, only while this worker holds the lease and the epoch is unchanged."""

        def fill(p: Any) -> None:
            p.commands.extend(staged.commands)

        await self._guarded(fill)

    def _state_commands(self, state: State, position: SeqKey | None) -> list[list[str]]:
        """The batch's state changes as plain command lists (strings only), cheaper than redis-py's builders."""
        cmds: list[list[str]] = []
        add = cmds.append
        ku, kc, ko, kb = names.KEY_USER, names.KEY_CLICK, names.KEY_ORDER, names.KEY_BALANCE
        for uid in state.dirty_users:
            u = state.users[uid]
            assert u is not None
            c = ["HSET", ku + uid, "t", str(u.signup_ms), "d", "1" if u.distributor else "0", "e", u.signup_event_id]
            if u.inviter is not None:
                c += ["i", u.inviter]
            if u.status_key is not None:
                c += ["s", user_status(u), "sk", _key_str(u.status_key)]
            add(c)
        for uid in state.dirty_tiers:
            mark = state.tiers[uid]
            assert mark is not None
            add(["HSET", ku + uid, "r", mark.tier, "k", _key_str(mark.key)])
        ttl = str(self.click_ttl_ms)
        for v in state.dirty_clicks:
            cm = state.clicks[v]
            assert cm is not None
            k = kc + v
            fields = ["t", str(cm.ts_ms), "r", cm.ref, "k", _key_str(cm.key), "w", str(cm.window), "n", str(cm.count)]
            add(["HSET", k, *fields])
            add(["PEXPIRE", k, ttl])
        ip_ttl = str(self.ip_clicks_ttl_ms)
        for ipw in state.dirty_ip_clicks:
            add(["SET", names.KEY_IP_CLICKS + ip_window_suffix(ipw), str(state.ip_clicks[ipw]), "PX", ip_ttl])
        settle = names.KEY_SETTLE
        cold = state.cold if isinstance(state, CachedState) else None
        for oid in state.dirty_orders:
            o = state.orders[oid]
            assert o is not None
            enc = encode_order(o)
            if cold is not None:
                cold[oid] = enc
            add(["SET", ko + oid, enc])
            if o.settle_at_ms is not None and not o.settled:
                add(["ZADD", settle, str(o.settle_at_ms), oid])
            else:
                add(["ZREM", settle, oid])
        for uid, b in state.balance_deltas.items():
            k = kb + uid  # all three even when zero: a beneficiary whose entries cancel out still has a balance
            add(["HINCRBY", k, "p", str(b.pending)])
            add(["HINCRBY", k, "a", str(b.available)])
            add(["HINCRBY", k, "l", str(b.earned)])
            if b.reserved:  # only money out moves these; v1 batches stay as they were
                add(["HINCRBY", k, "r", str(b.reserved)])
            if b.withdrawn:
                add(["HINCRBY", k, "w", str(b.withdrawn)])
        for aid in sorted(state.dirty_adjustments):
            applied = state.adjustments[aid]
            assert applied is not None
            add(["HSET", names.KEY_ADJUSTMENTS, aid, applied])
        for wid in sorted(state.dirty_withdrawals):
            w = state.withdrawals[wid]
            assert w is not None
            events = _JSON.encode(w.event_ids).decode()
            view = encode_withdrawal(wid, w)
            add(["HSET", names.KEY_WITHDRAWAL + wid, "s", view, "f", str(w.fee_cents), "e", events])
            add(["ZADD", names.KEY_DISTRIBUTOR_WITHDRAWALS + w.distributor_id, str(w.requested_ms), wid])
            if w.status in OPEN_WITHDRAWAL:
                add(["ZADD", names.KEY_WITHDRAWAL_QUEUE, str(w.requested_ms), wid])
            else:
                add(["ZREM", names.KEY_WITHDRAWAL_QUEUE, wid])
        dead = sorted(state.new_dead_ids)
        for i in range(0, len(dead), 1000):
            add(["SADD", names.KEY_DEAD, *dead[i : i + 1000]])
        marks = sorted(state.new_order_marks)
        for i in range(0, len(marks), 1000):
            add(["SADD", names.KEY_ORDER_MARKS, *marks[i : i + 1000]])
        if position is not None:
            add(["HSET", names.KEY_SEQ, "applied", _key_str(position)])
        return cmds

    async def load_all(self) -> CachedState:
        """Every key of the engine's state as one complete State: the worker's write-through cache.

        Loaded once at start (and after a takeover), so no batch has to read Redis; refused when the epoch
        says Redis lost its state.
        """
        await self._recover()
        epoch = await self.redis.get(names.KEY_EPOCH)
        if epoch != self.epoch:
            raise StateLost(_state_lost_message(epoch))
        await self._check_all_slots()
        state = CachedState()
        async for uid, m in self._scan_hashes(names.KEY_USER):
            if "t" in m:
                state.users[uid] = _user(m)
            if "r" in m:
                state.tiers[uid] = TierMark(m["r"], _key_parse(m["k"]))
        async for v, m in self._scan_hashes(names.KEY_CLICK):
            if "t" in m:
                state.clicks[v] = _click(m)
        async for suffix, n in self._scan_strings(names.KEY_IP_CLICKS):
            window, _, ip = suffix.partition(":")
            state.ip_clicks[(int(window), ip)] = int(n)
        if self.staged:  # the orders belong to the credit stage; the attribution stage needs only which exist
            async for oid in self.redis.sscan_iter(names.KEY_ORDER_MARKS, count=5000):
                state.order_marks.add(oid)
        else:
            async for oid, raw in self._scan_strings(names.KEY_ORDER):
                order = decode_order(raw)
                state.cold[oid] = raw
                if order.settle_at_ms is not None and not order.settled:
                    state.settle_index[oid] = order.settle_at_ms
        async for uid, m in self._scan_hashes(names.KEY_BALANCE):
            state.balances[uid] = _balance(m)
        async for wid, m in self._scan_hashes(names.KEY_WITHDRAWAL):
            state.withdrawals[wid] = decode_withdrawal(m)
        state.adjustments.update(await self.redis.hgetall(names.KEY_ADJUSTMENTS))
        state.dead_ids = set(await self.redis.smembers(names.KEY_DEAD))
        return state

    async def _check_all_slots(self) -> None:
        """Nothing to check on one server (the epoch covers it); the cluster checks every slot's marker."""

    async def _scan_keys(self, prefix: str) -> Any:
        """Every key with this prefix, in chunks."""
        chunk: list[str] = []
        async for key in self.redis.scan_iter(match=prefix + "*", count=5000):
            chunk.append(key)
            if len(chunk) >= 5000:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def _scan_hashes(self, prefix: str) -> Any:
        """(suffix, fields) of every hash under prefix."""
        async for suffix, m in self._scan(prefix, "hgetall"):
            if m:
                yield suffix, m

    async def _scan_strings(self, prefix: str) -> Any:
        """(suffix, value) of every string under prefix."""
        async for suffix, v in self._scan(prefix, "get"):
            if v is not None:
                yield suffix, v

    async def _scan(self, prefix: str, read: str) -> Any:
        """(suffix, reply of `read`) for every key under prefix, read in pipelined chunks."""
        n = len(prefix)
        async for keys in self._scan_keys(prefix):
            async with self.redis.pipeline(transaction=False) as p:
                for k in keys:
                    getattr(p, read)(k)
                got = await p.execute()
            for k, v in zip(keys, got, strict=True):
                yield k[n:], v

    async def balances(self, v2: bool = False) -> dict[str, dict[str, int]]:
        """Every beneficiary's pending and available cents, and with v2 reserved and withdrawn (tests, reports)."""
        out: dict[str, dict[str, int]] = {}
        async for key in self.redis.scan_iter(match=names.KEY_BALANCE + "*", count=1000):
            m = await self.redis.hgetall(key)
            b = out[key[len(names.KEY_BALANCE) :]] = {
                "available_cents": int(m.get("a", 0)),
                "pending_cents": int(m.get("p", 0)),
            }
            if v2:
                b["reserved_cents"] = int(m.get("r", 0))
                b["withdrawn_cents"] = int(m.get("w", 0))
        return out


def _state_lost_message(found: object) -> str:
    return (
        f"Redis no longer holds this worker's state (epoch {found!r}): it was flushed or restarted empty. "
        "The worker stops before deciding anything on empty state; start it again and it rebuilds Redis "
        "by replaying the input topics from the beginning."
    )


def _click(m: dict[str, str]) -> ClickMark:
    """A stored click record; one written before the rate limit has no window count (counts as none yet)."""
    return ClickMark(int(m["t"]), m["r"], _key_parse(m["k"]), int(m.get("w", -1)), int(m.get("n", 0)))


def _user(m: dict[str, str]) -> User:
    sk = m.get("sk")
    return User(
        signup_ms=int(m["t"]),
        distributor=m.get("d") == "1",
        inviter=m.get("i"),
        signup_event_id=m["e"],
        frozen=m.get("s") == FROZEN,
        status_key=_key_parse(sk) if sk else None,
    )


def user_status(u: User) -> str:
    """The user hash's `s`: what the last status event left (frozen stays frozen until an active event)."""
    if u.frozen:
        return FROZEN
    return ACTIVE if u.distributor else REVOKED


def _balance(m: dict[str, str]) -> Balance:
    """A stored balance hash (r and w absent until money first leaves)."""
    return Balance(
        pending=int(m.get("p", 0)),
        available=int(m.get("a", 0)),
        earned=int(m.get("l", 0)),
        reserved=int(m.get("r", 0)),
        withdrawn=int(m.get("w", 0)),
    )


def encode_withdrawal(withdrawal_id: str, w: WithdrawalState) -> str:
    """The `s` field of fx:w:<id>: the shared JSON shape read by the API and the CLI."""
    return _JSON.encode(withdrawal_view(withdrawal_id, w)).decode()


def withdrawal_view(withdrawal_id: str, w: WithdrawalState) -> dict[str, Any]:
    """A withdrawal as readers see it; fee and payout are null once it can no longer be paid (rejected, failed)."""
    payable = w.status not in (REJECTED, FAILED)
    return {
        "withdrawal_id": withdrawal_id,
        "distributor_id": w.distributor_id,
        "amount_cents": w.amount_cents,
        "channel": w.channel,
        "status": w.status,
        "requested_ts": w.requested_ms,
        "updated_ts": w.updated_ms,
        "fee_cents": w.fee_cents if payable else None,
        "payout_cents": w.amount_cents - w.fee_cents if payable else None,
    }


def decode_withdrawal(m: dict[str, str]) -> WithdrawalState:
    """Inverse of the fx:w:<id> hash (`f` keeps the fee locked at request, also where the view shows null)."""
    v = json.loads(m["s"])
    fee = int(m["f"]) if "f" in m else int(v["fee_cents"] or 0)
    return WithdrawalState(
        distributor_id=v["distributor_id"],
        amount_cents=v["amount_cents"],
        fee_cents=fee,
        status=v["status"],
        channel=v["channel"],
        event_ids=json.loads(m.get("e", "[]")),
        requested_ms=v["requested_ts"],
        updated_ms=v["updated_ts"],
    )


def _as_map(v: Any) -> dict[str, Any]:
    """cjson encodes an empty table as {} or []; both mean nothing loaded."""
    return v if isinstance(v, dict) else {}


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []
