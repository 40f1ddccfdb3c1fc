"""The read-model projector: the API's Redis read models from fenxiao.commissions and fenxiao.bindings, exactly once.

It runs in the `fenxiao sink` process, off the worker's commit. Exactly once across crashes rests on three
things: (1) each batch's commands, the offsets it consumed and what it projected go to Redis in one atomic
step (one Lua call; on a Redis Cluster a journal entry in the {pj} slot, then per-node applies guarded by
slot markers, as the cluster store does), and a start seeks to those stored offsets, not a group's;
(2) the outputs are at-least-once (a worker that dies between produce and commit produces a batch again),
so every entry id, bound user and paid event projected is remembered in a per-event-day set and a
repeated one is skipped; (3) the team index is written as the closure of the tree in memory (idempotent
ZADDs), which is the same whatever order the bindings partitions are read in.
GMV and live order counts need the paid amount, which no output record carries: it is read from
ClickHouse's orders table by the paid event id (the accrued entry's source_event_id), waiting for the
sink when it has not written that order yet. Key layout: docs/api.md; the decisions: docs/decisions.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.events import parse_ts_ms
from streams import names
from streams.engine.ledger import ACCRUED, Binding, Entry, OrderState, State
from streams.pipeline.consume import unread
from streams.sinks.clickhouse import ClickHouse, ClickHouseError
from streams.state import redis_conn
from streams.state.projections import (
    LIVE_TTL_S,
    TEAM_LEVELS,
    Leaderboards,
    LedgerFeed,
    bucket,
    live_key,
    net_cents,
    team_key,
)
from streams.state.referral_store import StagedCommands

log = logging.getLogger(__name__)

LEASE_TTL_MS = 15_000
SEEN_TTL_S = 3 * 86400  # how long a projected id is remembered after its event day's set was last written
TAKE_MAX = 5000
PAID_WAIT_S = 0.5  # between two ClickHouse lookups of paid events the sink has not written yet
ZADD_CHUNK = 2000
CRASH_POINT = "projector"  # FENXIAO_CRASH_AT=projector_{before_write,after_journal,after_write}:N (tests)

_PAID_SQL = (
    "SELECT event_id, amount_cents FROM orders FINAL WHERE type = 'paid'"
    " AND event_id IN (SELECT arrayJoin(JSONExtract({keys:String}, 'Array(String)')))"
)

# KEYS: lease, offsets. ARGV: owner, lease ttl ms, offsets [field, value, ...], seen [[key, [members]], ...],
# seen ttl s, commands. The lease check fences a projector that stalled while another took over.
_WRITE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for _, s in ipairs(cjson.decode(ARGV[4])) do
  local m = s[2]
  for i = 1, #m, 1000 do redis.call('SADD', s[1], unpack(m, i, math.min(i + 999, #m))) end
  redis.call('EXPIRE', s[1], ARGV[5])
end
for _, c in ipairs(cjson.decode(ARGV[6])) do redis.call(unpack(c)) end
local offs = cjson.decode(ARGV[3])
if #offs > 0 then redis.call('HSET', KEYS[2], unpack(offs)) end
return 'ok'
"""

# Cluster step 1, all in the {pj} slot: the same checks and bookkeeping, and the commands journaled under seq.
_JOURNAL_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lease', '0'} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for _, s in ipairs(cjson.decode(ARGV[4])) do
  local m = s[2]
  for i = 1, #m, 1000 do redis.call('SADD', s[1], unpack(m, i, math.min(i + 999, #m))) end
  redis.call('EXPIRE', s[1], ARGV[5])
end
local offs = cjson.decode(ARGV[3])
if #offs > 0 then redis.call('HSET', KEYS[2], unpack(offs)) end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('HSET', KEYS[3], 'commands', ARGV[6])
return {'ok', tostring(seq)}
"""

# Cluster step 2, one call per node: the slots whose marker is below seq run their commands (missing = 0).
_APPLY_LUA = """#!lua flags=allow-cross-slot-keys
local seq = tonumber(ARGV[1])
local n = 0
for _, g in ipairs(cjson.decode(ARGV[2])) do
  if tonumber(redis.call('GET', g[1]) or '0') < seq then
    for _, c in ipairs(g[2]) do redis.call(unpack(c)) end
    redis.call('SET', g[1], ARGV[1])
    n = n + 1
  end
end
return n
"""


_json = msgspec.json.Decoder().decode  # output records of the engine: plain JSON objects, decoded in C
_encode = msgspec.json.Encoder().encode  # the batch's commands for the script, UTF-8 as json.dumps(ensure_ascii=False)


def day_of(ts_ms: int) -> str:
    """The UTC day of an event: both copies of a repeated record carry the same ts, so they meet in one set."""
    return bucket("day", ts_ms)


def seen_key(ts_ms: int) -> str:
    """The set of ids projected for events of that day."""
    return names.KEY_PJ_SEEN + day_of(ts_ms)


def entry_of(record: Mapping[str, Any]) -> Entry:
    """A fenxiao.commissions value as an Entry (the fields the read models keep; absent ids become '')."""
    return Entry(
        entry_id=str(record["entry_id"]),
        source_event_id=str(record["source_event_id"]),
        ts_ms=parse_ts_ms(str(record["ts"])),
        order_id=str(record.get("order_id") or ""),
        buyer_id=str(record.get("buyer_id") or ""),
        beneficiary_id=str(record["beneficiary_id"]),
        level=int(record["level"]),
        kind=str(record["kind"]),
        amount_cents=int(record["amount_cents"]),
        campaign_id=record.get("campaign_id") or None,
    )


def binding_of(record: Mapping[str, Any]) -> Binding:
    """A fenxiao.bindings value as a Binding."""
    inviter = record.get("inviter_id")
    return Binding(
        str(record["user_id"]),
        None if inviter is None else str(inviter),
        parse_ts_ms(str(record["ts"])),
        str(record["source"]),
    )


@dataclass
class Tree:
    """The referral tree from fenxiao.bindings: user -> (inviter, bind ts), and each inviter's direct recruits."""

    up: dict[str, tuple[str, int]] = field(default_factory=dict)
    down: dict[str, list[str]] = field(default_factory=dict)

    def bind(self, b: Binding) -> None:
        """Record a binding with an inviter; the first one of a user stays (an inviter is permanent)."""
        if b.inviter_id is None or b.user_id in self.up:
            return
        self.up[b.user_id] = (b.inviter_id, b.ts_ms)
        self.down.setdefault(b.inviter_id, []).append(b.user_id)

    def chain(self, first: str, n: int) -> list[str]:
        """`first` and its inviters, at most n users (a cycle, which the engine never binds, stops the walk)."""
        out = [first]
        while len(out) < n and out[-1] in self.up:
            nxt = self.up[out[-1]][0]
            if nxt in out:
                break
            out.append(nxt)
        return out

    def below(self, user: str, depth: int) -> list[tuple[str, int]]:
        """(user, 0) and every recruit down to `depth` levels below it, with its distance."""
        out, level = [(user, 0)], [user]
        for d in range(1, depth + 1):
            level = [c for u in level for c in self.down.get(u, ())]
            out.extend((c, d) for c in level)
        return out

    def member(self, user: str) -> str:
        """The team zset member of a bound user: its bind ts first, so lex order is time order."""
        return f"{self.up[user][1]:013d}|{user}"


def stage_team(pipe: Any, tree: Tree, users: Iterable[str]) -> None:
    """For each newly bound user u: everyone at depth d under u joins the inviter chain's levels d+k+1 (<= 3).

    Exact in any reading order: every ZADD states a fact of the final tree (bindings are permanent), and
    when the last binding of a path is projected the tree already holds the rest of the path.
    """
    adds: dict[str, set[str]] = defaultdict(set)
    for u in users:
        if u not in tree.up:
            continue
        chain = tree.chain(tree.up[u][0], TEAM_LEVELS)
        for x, d in tree.below(u, TEAM_LEVELS - 1):
            for k, anc in enumerate(chain):
                if d + k + 1 <= TEAM_LEVELS:
                    adds[team_key(d + k + 1, anc)].add(tree.member(x))
    for key, members in adds.items():
        ordered = sorted(members)
        for i in range(0, len(ordered), ZADD_CHUNK):
            pipe.zadd(key, dict.fromkeys(ordered[i : i + ZADD_CHUNK], 0))


def stage_live(pipe: Any, entries: Sequence[Entry], counted: Mapping[str, int], second: int) -> None:
    """The per-second live counters; `counted` = paid cents of the paid events counted now (each once ever)."""
    sums: dict[str | None, dict[str, int]] = defaultdict(lambda: {"o": 0, "g": 0, "c": 0})
    first: dict[str, str | None] = {}
    for e in entries:
        if e.kind == ACCRUED and e.source_event_id in counted:
            first.setdefault(e.source_event_id, e.campaign_id)
    for sid, campaign in first.items():
        for scope in {None, campaign}:
            sums[scope]["o"] += 1
            sums[scope]["g"] += counted[sid]
    for e in entries:
        for scope in {None, e.campaign_id}:
            sums[scope]["c"] += net_cents(e)
    for scope, fields in sums.items():
        key = live_key(second, scope)
        for f, v in fields.items():
            if v:
                pipe.hincrby(key, f, v)
        pipe.expire(key, LIVE_TTL_S)


@dataclass
class Plan:
    """What one batch writes: the commands and the ids to remember as projected, per event-day set."""

    commands: list[list[str]]
    seen: dict[str, list[str]]


def plan_batch(
    entries: Sequence[Entry],
    bindings: Sequence[Binding],
    tree: Tree,
    already: set[str],
    paid: Mapping[str, int],
    now_ms: int,
) -> Plan:
    """The batch's read-model commands over what was not projected yet (`already` = seen members)."""
    seen: dict[str, list[str]] = defaultdict(list)
    fresh: list[Entry] = []
    for e in entries:
        m = "e:" + e.entry_id
        if m not in already:
            already.add(m)
            seen[seen_key(e.ts_ms)].append(m)
            fresh.append(e)
    bound: list[Binding] = []
    for b in bindings:
        m = "b:" + b.user_id
        if b.inviter_id is not None and m not in already:
            already.add(m)
            seen[seen_key(b.ts_ms)].append(m)
            bound.append(b)
    counted: dict[str, int] = {}
    for e in fresh:
        m = "p:" + e.source_event_id
        if e.kind == ACCRUED and m not in already:
            already.add(m)
            seen[seen_key(e.ts_ms)].append(m)
            counted[e.source_event_id] = paid[e.source_event_id]
    state = State()
    for e in fresh:
        if e.kind == ACCRUED and e.level == 1 and e.order_id:
            state.orders[e.order_id] = OrderState(buyer_id=e.buyer_id or "", paid_cents=paid[e.source_event_id])
    pipe = StagedCommands()
    LedgerFeed().stage(pipe, state, fresh, [])
    Leaderboards().stage(pipe, state, fresh, bound)
    stage_team(pipe, tree, [b.user_id for b in bound])
    if fresh:
        stage_live(pipe, fresh, counted, now_ms // 1000)
    return Plan(pipe.commands, dict(seen))


def candidates(entries: Sequence[Entry], bindings: Sequence[Binding]) -> dict[str, set[str]]:
    """The seen-set members a batch may add, per set: what to ask Redis about before planning."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        out[seen_key(e.ts_ms)].update(("e:" + e.entry_id, "p:" + e.source_event_id))
    for b in bindings:
        out[seen_key(b.ts_ms)].add("b:" + b.user_id)
    return out


def paid_needed(entries: Sequence[Entry], already: set[str]) -> set[str]:
    """Paid event ids whose amount the batch needs: level-1 accruals (GMV) and orders counted live."""
    need = set()
    for e in entries:
        if e.kind != ACCRUED or "e:" + e.entry_id in already:
            continue
        if e.level == 1 or "p:" + e.source_event_id not in already:
            need.add(e.source_event_id)
    return need


def lookup_paid(ch: ClickHouse, event_ids: Sequence[str]) -> dict[str, int]:
    """Paid cents per paid event id, as far as ClickHouse holds them."""
    return {str(eid): int(c) for eid, c in ch.query(_PAID_SQL, {"keys": json.dumps(list(event_ids))}) if c is not None}


class Stopped(Exception):
    """The process is stopping while a batch waits for ClickHouse: give the batch up (nothing was written)."""


class Projector:
    """Consumes commissions and bindings from the offsets stored in Redis and writes the read models."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        ch: ClickHouse,
        owner: str,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        crash_at: str | None = None,
    ) -> None:
        self.bootstrap, self.redis_url, self.ch, self.owner, self.now_ms = bootstrap, redis_url, ch, owner, now_ms
        point, _, n = (crash_at or "").partition(":")
        self._crash_point, self._crash_write = point, int(n) if n and point.startswith(CRASH_POINT) else 0
        self.cluster = redis_conn.is_cluster(redis_url)
        self.redis: Any = redis_conn.connect_async(redis_url, decode_responses=True)
        self.tree = Tree()
        self.lag: int | None = None
        self.projected: dict[str, int] = {"entries": 0, "bindings": 0, "batches": 0}
        self.state = "starting"
        self._consumer: Any = None
        self._stopping = False

    def status(self) -> dict[str, object]:
        """For the sink's /status."""
        return {"state": self.state, "lag": self.lag, **self.projected}

    def stop(self) -> None:
        """Finish the current batch and return from run()."""
        self._stopping = True

    async def run(self) -> None:
        """Take the lease, rebuild the tree, seek to the stored offsets, then project batch after batch."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        await self._take_lease()
        if self._stopping:
            return
        if self.cluster:
            await self._recover()
        self.state = "loading the tree"
        await self._load_tree()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            max_poll_records=TAKE_MAX,
            isolation_level="read_committed",
        )
        await consumer.start()
        self._consumer = consumer
        try:
            parts = [TopicPartition(t, p) for t in names.PROJECTOR_SOURCES for p in await _partitions(consumer, t)]
            consumer.assign(parts)
            stored = await self.redis.hgetall(names.KEY_PJ_OFFSETS)
            for tp in parts:
                at = stored.get(f"{tp.topic}:{tp.partition}")
                if at is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, int(at))
            self.state = "running"
            renewed = time.monotonic()
            while not self._stopping:
                got = await consumer.getmany(timeout_ms=500, max_records=TAKE_MAX)
                records = [r for rs in got.values() for r in rs]
                if records:
                    await self._project(records, {tp: await consumer.position(tp) for tp in got})
                    renewed = time.monotonic()
                elif time.monotonic() - renewed > LEASE_TTL_MS / 3000:
                    await self._renew()
                    renewed = time.monotonic()
                self.lag = await unread(consumer, parts)
        except Stopped:
            pass  # stopped while waiting for the sink: the batch was not written and is read again next time
        finally:
            self._consumer = None
            await consumer.stop()
            await self._release()
            await self.redis.aclose()

    async def _take_lease(self) -> None:
        """Wait for the projector lease (a second sink stays a standby until the first lets go)."""
        told = False
        while not self._stopping:
            if await self.redis.set(names.KEY_PJ_LEASE, self.owner, nx=True, px=LEASE_TTL_MS):
                return
            if await self.redis.get(names.KEY_PJ_LEASE) == self.owner:  # ours, from before a restart of the loop
                await self.redis.pexpire(names.KEY_PJ_LEASE, LEASE_TTL_MS)
                return
            if not told:
                holder = await self.redis.get(names.KEY_PJ_LEASE)
                log.warning("projector: %s holds the read-model lease; waiting for it", holder)
                self.state, told = "standby", True
            await asyncio.sleep(0.5)

    async def _renew(self) -> None:
        """Keep the lease while idle; losing it means another projector took over: stop writing."""
        if await self.redis.get(names.KEY_PJ_LEASE) != self.owner:
            raise RuntimeError("projector: the read-model lease was taken by another projector")
        await self.redis.pexpire(names.KEY_PJ_LEASE, LEASE_TTL_MS)

    async def _release(self) -> None:
        """Give the lease up at a clean stop, so a standby starts at once."""
        try:
            if await self.redis.get(names.KEY_PJ_LEASE) == self.owner:
                await self.redis.delete(names.KEY_PJ_LEASE)
        except Exception as e:  # a stop must not fail on an unreachable Redis; the lease then expires
            log.warning("projector: could not release the lease: %s", e)

    async def _load_tree(self) -> None:
        """Read fenxiao.bindings from the beginning to its current end (it is compacted) into the tree."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None, max_poll_records=TAKE_MAX
        )
        await c.start()
        try:
            parts = [TopicPartition(names.BINDINGS, p) for p in await _partitions(c, names.BINDINGS)]
            c.assign(parts)
            await c.seek_to_beginning(*parts)
            ends = await c.end_offsets(parts)
            todo = {tp for tp in parts if ends[tp] > 0}
            while todo and not self._stopping:
                got = await c.getmany(*todo, timeout_ms=500, max_records=TAKE_MAX)
                for rs in got.values():
                    for r in rs:
                        if r.value is not None:
                            self.tree.bind(binding_of(_json(r.value)))
                todo = {tp for tp in todo if await c.position(tp) < ends[tp]}
        finally:
            await c.stop()

    async def _project(self, records: Sequence[Any], positions: Mapping[Any, int]) -> None:
        """One batch: decode, ask what was projected, look up paid amounts, then one atomic write."""
        entries: list[Entry] = []
        bindings: list[Binding] = []
        for r in records:
            if r.value is None:
                continue
            value = _json(r.value)
            if r.topic == names.COMMISSIONS:
                entries.append(entry_of(value))
            else:
                b = binding_of(value)
                self.tree.bind(b)
                bindings.append(b)
        cands = candidates(entries, bindings)
        already: set[str] = set()
        if cands:
            keys = list(cands)
            async with self.redis.pipeline(transaction=False) as p:
                for k in keys:
                    p.smismember(k, sorted(cands[k]))
                flags = await p.execute()
            for k, fs in zip(keys, flags, strict=True):
                already.update(m for m, f in zip(sorted(cands[k]), fs, strict=True) if f)
        paid = await self._paid(paid_needed(entries, already))
        plan = plan_batch(entries, bindings, self.tree, already, paid, self.now_ms())
        offsets: list[str] = []
        for tp, pos in positions.items():
            offsets += [f"{tp.topic}:{tp.partition}", str(pos)]
        await self._write(plan, offsets)
        self.projected["entries"] += len(entries)
        self.projected["bindings"] += len(bindings)
        self.projected["batches"] += 1

    async def _paid(self, need: set[str]) -> dict[str, int]:
        """The paid amounts from ClickHouse, waiting until the sink has written every one of them."""
        found: dict[str, int] = {}
        told = False
        while need - found.keys():
            if self._stopping:
                raise Stopped
            missing = sorted(need - found.keys())
            try:
                found.update(await asyncio.to_thread(lookup_paid, self.ch, missing))
            except ClickHouseError as e:
                log.warning("projector: reading paid amounts from ClickHouse failed (%s); retrying", e)
            if need - found.keys():
                if not told:
                    log.info("projector: waiting for the sink to write %d paid orders", len(need - found.keys()))
                    told = True
                await asyncio.sleep(PAID_WAIT_S)
        return found

    def _maybe_crash(self, point: str) -> None:
        """Fault injection for the tests: die like `kill -9` before or after the N-th batch write."""
        if self._crash_point == point and self.projected["batches"] + 1 == self._crash_write:
            log.warning("fault injection: SIGKILL at %s of projector batch %d", point, self._crash_write)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _write(self, plan: Plan, offsets: list[str]) -> None:
        """The batch's commands, its seen ids and its offsets, atomically (the cluster: journal, then apply)."""
        self._maybe_crash(CRASH_POINT + "_before_write")
        await self._write_atomically(plan, offsets)
        self._maybe_crash(CRASH_POINT + "_after_write")

    async def _write_atomically(self, plan: Plan, offsets: list[str]) -> None:
        """One Lua call on one server; on a cluster the journal script, then the per-node applies."""
        seen = _encode([[k, v] for k, v in plan.seen.items()]).decode()
        commands = _encode(plan.commands).decode()
        offs = json.dumps(offsets)
        if not self.cluster:
            verdict = await self.redis.eval(
                _WRITE_LUA,
                2,
                names.KEY_PJ_LEASE,
                names.KEY_PJ_OFFSETS,
                self.owner,
                LEASE_TTL_MS,
                offs,
                seen,
                SEEN_TTL_S,
                commands,
            )
            if verdict != "ok":
                raise RuntimeError("projector: the read-model lease was taken by another projector")
            return
        verdict, seq = await self.redis.eval(
            _JOURNAL_LUA,
            3,
            names.KEY_PJ_LEASE,
            names.KEY_PJ_OFFSETS,
            names.KEY_PJ_JOURNAL,
            self.owner,
            LEASE_TTL_MS,
            offs,
            seen,
            SEEN_TTL_S,
            commands,
        )
        if verdict != "ok":
            raise RuntimeError("projector: the read-model lease was taken by another projector")
        self._maybe_crash(CRASH_POINT + "_after_journal")
        await self._apply(int(seq), plan.commands)

    async def _recover(self) -> None:
        """Cluster: redo the last journal entry before anything else (slots that have it skip it)."""
        j = await self.redis.hgetall(names.KEY_PJ_JOURNAL)
        if j.get("seq") and j.get("commands"):
            await self._apply(int(j["seq"]), json.loads(j["commands"]))

    async def _apply(self, seq: int, commands: list[list[str]]) -> None:
        """Cluster step 2: each node runs its slots' share of journal entry seq once."""
        from streams.state.redis_cluster import APPLY_ATTEMPTS, group_by_slot

        if not commands:
            return
        groups = group_by_slot(commands)
        r = self.redis
        for attempt in range(APPLY_ATTEMPTS):
            await r.initialize()
            by_node: dict[str, tuple[Any, list[list[Any]]]] = {}
            for slot, cmds in groups.items():
                node = r.nodes_manager.get_node_from_slot(slot)
                by_node.setdefault(node.name, (node, []))[1].append([slot_marker(slot), cmds])
            try:
                await asyncio.gather(
                    *(
                        r.execute_command(
                            "EVAL",
                            _APPLY_LUA,
                            1,
                            gs[0][0],
                            seq,
                            json.dumps(gs, ensure_ascii=False, separators=(",", ":")),
                            target_nodes=node,
                        )
                        for node, gs in by_node.values()
                    )
                )
                return
            except Exception:
                if attempt == APPLY_ATTEMPTS - 1:
                    raise
                await r.nodes_manager.initialize()
                await asyncio.sleep(0.2 * (attempt + 1))


def slot_marker(slot: int) -> str:
    """The projector's marker key living in `slot` (the cluster store's hash tags, another prefix)."""
    from streams.state.redis_cluster import _slot_tags

    return f"{names.KEY_PJ_SLOT_MARK}{{{_slot_tags()[slot]}}}"


async def _partitions(consumer: Any, topic: str) -> list[int]:
    """The topic's partition numbers (the worker creates the topics before it spawns the sink)."""
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"projector: topic {topic} has no partitions (run the worker once to create the topics)")
