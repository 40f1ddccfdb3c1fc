"""The engine's state on a Redis Cluster: a batch lands on every node exactly once, or is redone after a crash.

A cluster runs a script only over keys on one node, and the referral tree, orders and balances of one batch
span all nodes. So a batch is written in two steps:
1. the journal script, on the {m} slot beside the lease and the epoch, checks the lease and the epoch, renews
   the lease and stores the batch's commands under a new journal sequence number N;
2. one apply script per node runs that node's share of the commands. Every hash slot has a marker key
   ("epoch|last N applied in this slot", in the slot itself, so it moves with the slot), and a slot's
   commands run only when its marker is below N. Re-running step 2 is therefore harmless.
A worker that dies between the steps leaves the journal behind; the next one to load anything redoes it
first. Every slot is fenced with the epoch when the state is created, so a node that comes back empty is
noticed (its markers are gone) instead of being read as "no such user".
Reads walk the inviter chains client-side, one pipelined round trip per chain level for the whole batch.
"""

from __future__ import annotations

import asyncio
import json
from binascii import crc_hqx
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from streams import names
from streams.state.referral_store import (
    LEASE_AND_EPOCH_LUA,
    LEASE_TTL_MS,
    MAX_CHAIN,
    RedisStore,
    StagedCommands,
    StateLost,
    _state_lost_message,
)

SLOTS = 16384
APPLY_ATTEMPTS = 5

_JOURNAL_LUA = (
    LEASE_AND_EPOCH_LUA
    + """if ARGV[4] == '' then return {'ok', '0'} end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('HSET', KEYS[3], 'commands', ARGV[4])
return {'ok', tostring(seq)}
"""
)

# Every apply script starts with this. Its first line lets KEYS[1] (one of this node's slot markers, which routes
# the call) stand for undeclared keys of the same node; `fenced` reads a slot's epoch marker: the journal entry
# that slot has applied, or the refusal to return (marker gone, or of another epoch).
APPLY_PREAMBLE_LUA = """#!lua flags=allow-cross-slot-keys
local function fenced(key, epoch)
  local m = redis.call('GET', key)
  if not m then return nil, {'lost', key} end
  local bar = string.find(m, '|', 1, true)
  if string.sub(m, 1, bar - 1) ~= epoch then return nil, {'epoch', key} end
  return tonumber(string.sub(m, bar + 1)), nil
end
"""
# Every marker is checked before anything runs.
_APPLY_LUA = (
    APPLY_PREAMBLE_LUA
    + """local epoch, seq = ARGV[1], tonumber(ARGV[2])
local groups = cjson.decode(ARGV[3])
local todo = {}
for _, g in ipairs(groups) do
  local applied, refused = fenced(g[1], epoch)
  if refused then return refused end
  if applied < seq then todo[#todo + 1] = g end
end
for _, g in ipairs(todo) do
  for _, c in ipairs(g[2]) do redis.call(unpack(c)) end
  redis.call('SET', g[1], epoch .. '|' .. ARGV[2])
end
return {'ok', tostring(#todo)}
"""
)


def key_slot(key: str) -> int:
    """Redis Cluster's hash slot of a key (CRC16 of its hash tag, if it has one)."""
    b = key.encode()
    start = b.find(b"{")
    if start > -1:
        end = b.find(b"}", start + 1)
        if end > start + 1:
            b = b[start + 1 : end]
    return crc_hqx(b, 0) % SLOTS


@lru_cache(maxsize=1)
def _slot_tags() -> tuple[str, ...]:
    """For every slot, a short hash tag that lands in it (found once by counting up; ~50 ms)."""
    tags: list[str | None] = [None] * SLOTS
    missing, i = SLOTS, 0
    while missing:
        t = format(i, "x")
        s = crc_hqx(t.encode(), 0) % SLOTS
        if tags[s] is None:
            tags[s] = t
            missing -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


def slot_key(prefix: str, slot: int) -> str:
    """A key living in `slot`: the prefix and a hash tag that lands there."""
    return f"{prefix}{{{_slot_tags()[slot]}}}"


def marker_key(slot: int) -> str:
    """The marker key living in `slot`: which epoch and journal entry that slot has applied."""
    return slot_key(names.KEY_SLOT_MARK, slot)


def fence_slots(r: Any, epoch: str) -> None:
    """Give every slot a marker of this epoch (a blocking RedisCluster client), before the epoch itself is set."""
    with r.pipeline(transaction=False) as p:
        for s in range(SLOTS):
            p.set(marker_key(s), f"{epoch}|0")
        p.execute()


def slots_lost(r: Any, epoch: str) -> list[int]:
    """The slots whose marker is missing or of another epoch: their node lost (or never had) this state."""
    with r.pipeline(transaction=False) as p:
        for s in range(SLOTS):
            p.get(marker_key(s))
        found = p.execute()
    return [s for s, m in enumerate(found) if not m or str(m).split("|", 1)[0] != epoch]


def group_by_slot(commands: Iterable[list[str]]) -> dict[int, list[list[str]]]:
    """Commands by the slot of their key (every staged command names its key first)."""
    groups: dict[int, list[list[str]]] = {}
    for c in commands:
        groups.setdefault(key_slot(c[1]), []).append(c)
    return groups


class ClusterStore(RedisStore):
    """RedisStore for a Redis Cluster: client-side chain walk, journal plus per-slot apply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._journal = self.redis.register_script(_JOURNAL_LUA)
        self._recovered = False

    async def _fetch(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The same answer as the load script, read in pipelined rounds: one for the batch, one per chain level."""
        await self._recover()
        r = self.redis
        slots: set[int] = set()

        def read(p: Any, key: str, cmd: str, *args: Any) -> None:
            slots.add(key_slot(key))
            getattr(p, cmd)(key, *args)

        visitors, ips, orders, events = payload["visitors"], payload["ips"], payload["orders"], payload["events"]
        async with r.pipeline(transaction=False) as p:
            p.get(names.KEY_EPOCH)
            for v in visitors:
                read(p, names.KEY_CLICK + v, "hgetall")
            for w in ips:
                read(p, names.KEY_IP_CLICKS + w, "get")
            for oid in orders:
                read(p, names.KEY_ORDER + oid, "get")
            read(p, names.KEY_SETTLE, "zrangebyscore", "-inf", payload["settle_until"], 0, payload["settle_limit"])
            if events:
                read(p, names.KEY_DEAD, "smismember", events)
            res = list(await p.execute())
        epoch = res.pop(0)
        clicks: dict[str, Any] = {v: (res.pop(0) or False) for v in visitors}
        ip_counts: dict[str, Any] = {w: (res.pop(0) or False) for w in ips}
        found_orders: dict[str, Any] = {oid: (res.pop(0) or False) for oid in orders}
        due = list(res.pop(0))
        flags = res.pop(0) if events else []
        dead = [e for e, f in zip(events, flags, strict=True) if f]
        later = [oid for oid in due if oid not in found_orders]
        users: dict[str, Any] = {}
        todo = {u for u in payload["users"]} | {m["r"] for m in clicks.values() if m and "r" in m}
        rounds = 0
        while todo or later:
            rounds += 1
            if rounds > MAX_CHAIN:
                break
            batch = sorted(todo)
            async with r.pipeline(transaction=False) as p:
                for uid in batch:
                    read(p, names.KEY_USER + uid, "hgetall")
                for oid in later:
                    read(p, names.KEY_ORDER + oid, "get")
                got = await p.execute()
            for oid, s in zip(later, got[len(batch) :], strict=True):
                found_orders[oid] = s or False
            later = []
            todo = set()
            for uid, m in zip(batch, got[: len(batch)], strict=True):
                users[uid] = m or False
                up = m.get("i") if m else None
                if up and up not in users:
                    todo.add(up)
        await self._check_markers(slots)
        return {
            "users": users,
            "clicks": clicks,
            "orders": found_orders,
            "dead": dead,
            "due": due,
            "epoch": epoch,
            "ips": ip_counts,
        }

    async def _check_all_slots(self) -> None:
        """A full load reads every slot: each must still hold this epoch's marker."""
        await self._check_markers(set(range(SLOTS)))

    async def _check_markers(self, slots: set[int]) -> None:
        """Refuse a read from a slot that lost its state: its empty keys would look like new users."""
        ordered = sorted(slots)
        async with self.redis.pipeline(transaction=False) as p:
            for s in ordered:
                p.get(marker_key(s))
            found = await p.execute()
        for s, m in zip(ordered, found, strict=True):
            if not m or str(m).split("|", 1)[0] != self.epoch:
                raise StateLost(_state_lost_message(f"slot {s}: {m!r}"))

    async def _write(self, commands: StagedCommands) -> tuple[str, str]:
        """Journal the batch (checking lease and epoch), then apply it node by node (after _guarded's _recover)."""
        payload = commands.payload() if commands.commands else b""
        verdict, found = await self._journal(
            keys=[names.KEY_LEASE, names.KEY_EPOCH, names.KEY_JOURNAL],
            args=[self.owner, self.epoch, LEASE_TTL_MS, payload],
        )
        if verdict != "ok" or not commands.commands:
            return str(verdict), str(found)
        return await self._apply(int(found), commands.commands)

    async def _recover(self) -> None:
        """Redo the journal's last batch once, before this worker reads or writes anything (a no-op if it landed)."""
        if self._recovered:
            return
        self._recovered = True
        j = await self.redis.hgetall(names.KEY_JOURNAL)
        if j.get("seq") and j.get("commands"):
            verdict, found = await self._apply(int(j["seq"]), json.loads(j["commands"]))
            if verdict != "ok":
                raise StateLost(_state_lost_message(found))

    async def _apply(self, seq: int, commands: list[list[str]]) -> tuple[str, str]:
        """Run journal entry `seq` on every node; slots that already applied it skip it."""
        return await self.run_by_node(_APPLY_LUA, commands, lambda slot, cmds: [marker_key(slot), cmds], [seq])

    async def run_by_node(
        self,
        script: str,
        commands: list[list[str]],
        group: Callable[[int, list[list[str]]], list[Any]],
        args: list[Any],
    ) -> tuple[str, str]:
        """Run `script` once per node over that node's slots (group: a slot's marker keys and commands).

        The script gets ARGV = the epoch, then args, then the groups as JSON; its first key routes the call.
        Retries when the cluster reshards in between.
        """
        groups = group_by_slot(commands)
        r: AsyncRedisCluster = self.redis
        for attempt in range(APPLY_ATTEMPTS):
            await r.initialize()
            by_node: dict[str, tuple[Any, list[list[Any]]]] = {}
            for slot, cmds in groups.items():
                node = r.nodes_manager.get_node_from_slot(slot)
                by_node.setdefault(node.name, (node, []))[1].append(group(slot, cmds))
            try:
                results = await asyncio.gather(
                    *(self._run_on_node(node, script, args, gs) for node, gs in by_node.values())
                )
            except (MovedError, AskError, TryAgainError, ClusterDownError):
                if attempt == APPLY_ATTEMPTS - 1:
                    raise
                await r.nodes_manager.initialize()
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            for verdict, found in results:
                if verdict != "ok":
                    return "epoch", f"{verdict} at {found}"
            return "ok", ""
        raise AssertionError("unreachable")

    async def _run_on_node(self, node: Any, script: str, args: list[Any], groups: list[list[Any]]) -> tuple[str, str]:
        """One node's share, in one script call routed by its first group's first key."""
        verdict, found = await self.redis.execute_command(
            "EVAL",
            script,
            1,
            groups[0][0],
            self.epoch,
            *args,
            json.dumps(groups, ensure_ascii=False, separators=(",", ":")),
            target_nodes=node,
        )
        return str(verdict), str(found)
