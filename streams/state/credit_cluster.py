"""The credit stage's commit on a Redis Cluster: positions move once, and the batch lands on every node once.

On one server a credit batch's writes and its partitions' positions move in one script (credit_store). A
cluster runs a script over one node's keys only, and a batch's orders and balances span all nodes. So:
1. the journal script, on the {m} slot beside the epoch and the positions, checks the epoch and that every
   partition is still where the batch was read, moves them and stores the batch's commands in the journal
   under this process's lane L and its next sequence number N (a lane has one writer: one credit process);
2. one apply script per node runs that node's share; every slot the batch writes keeps, per lane, the last N
   it applied (fx:cm:{tag}, beside the slot's epoch marker), and runs a lane's entry only when that is below N;
3. the journal entry is removed, only if it is still N (a redo by another process must not drop N+1).
A process that dies between 1 and 3 leaves its entry behind. Whoever takes its partitions reads their
positions and then redoes every entry left in the journal before it loads anything (redo_journal), so it
never reads an order that a moved position says is already applied but that a node does not have yet.
Two processes redoing the same entry at once are harmless: each slot checks and applies atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streams import names
from streams.engine.ledger import State
from streams.state.credit_store import MOVE_POSITIONS_LUA, CreditStore, commands_arg, moves_arg, refuse
from streams.state.redis_cluster import APPLY_PREAMBLE_LUA, ClusterStore, marker_key, slot_key
from streams.state.referral_store import StateLost, _state_lost_message

# KEYS[3] the journal; ARGV[3] the lane, ARGV[4] the batch's commands as JSON ('' when it wrote nothing).
_JOURNAL_LUA = (
    """if redis.call('HEXISTS', KEYS[3], 'n:' .. ARGV[3]) == 1 then return {'pending', ''} end
"""
    + MOVE_POSITIONS_LUA
    + """if ARGV[4] == '' then return {'ok', '0'} end
local seq = redis.call('HINCRBY', KEYS[3], 's:' .. ARGV[3], 1)
redis.call('HSET', KEYS[3], 'n:' .. ARGV[3], seq, 'e:' .. ARGV[3], ARGV[4])
return {'ok', tostring(seq)}
"""
)

# KEYS[1] the journal; ARGV[1] the lane, ARGV[2] the sequence number that has landed everywhere.
_DONE_LUA = """
if redis.call('HGET', KEYS[1], 'n:' .. ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1], 'e:' .. ARGV[1])
  return 1
end
return 0
"""

# Groups [slot's epoch marker, slot's credit marks, commands]; KEYS[1] (the first marker) routes the call.
_APPLY_LUA = (
    APPLY_PREAMBLE_LUA
    + """local epoch, lane, seq = ARGV[1], ARGV[2], tonumber(ARGV[3])
local groups = cjson.decode(ARGV[4])
local todo = {}
for _, g in ipairs(groups) do
  local _, refused = fenced(g[1], epoch)
  if refused then return refused end
  if tonumber(redis.call('HGET', g[2], lane) or '0') < seq then todo[#todo + 1] = g end
end
for _, g in ipairs(todo) do
  for _, c in ipairs(g[3]) do redis.call(unpack(c)) end
  redis.call('HSET', g[2], lane, ARGV[3])
end
return {'ok', tostring(#todo)}
"""
)


def credit_mark_key(slot: int) -> str:
    """The key in `slot` holding, per credit lane, the last journal entry applied to that slot."""
    return slot_key(names.KEY_CREDIT_MARK, slot)


class ClusterCreditStore(CreditStore, ClusterStore):
    """CreditStore for a Redis Cluster: the cluster's reads, and a journal per credit process for the commit."""

    def __init__(self, url: str, attribution_window_ms: int, epoch: str = "") -> None:
        super().__init__(url, attribution_window_ms, epoch)
        self._credit_journal = self.redis.register_script(_JOURNAL_LUA)
        self._credit_done = self.redis.register_script(_DONE_LUA)
        self._lane = ""
        self._lane_epoch = ""

    async def _recover(self) -> None:
        """The attribution stage's journal is the lease holder's to redo; this stage redoes its own at each seek."""

    async def lane(self) -> str:
        """This process's lane in the journal, new for every process and every epoch (a rebuilt state restarts it)."""
        if not self._lane or self._lane_epoch != self.epoch:
            self._lane = str(await self.redis.hincrby(names.KEY_CREDIT_JOURNAL, "lanes", 1))
            self._lane_epoch = self.epoch
        return self._lane

    async def commit_credit(self, state: State, moves: Mapping[int, tuple[int, int]]) -> None:
        """Journal the batch while moving its positions (or nothing: PositionMoved), then land it on every node."""
        commands = self._state_commands(state, None)
        payload = commands_arg(commands) if commands else ""
        lane = await self.lane()
        keys = [names.KEY_EPOCH, names.KEY_CREDIT_POS, names.KEY_CREDIT_JOURNAL]
        args = [self.epoch, moves_arg(moves), lane, payload]
        verdict, found = await self._credit_journal(keys=keys, args=args)
        if verdict == "pending":  # this lane's previous entry did not land (its apply failed): finish it first
            await self.redo_journal()
            verdict, found = await self._credit_journal(keys=keys, args=args)
        refuse(str(verdict), str(found))
        if found != "0":
            await self._land(lane, int(found), commands)

    async def redo_journal(self) -> None:
        """Land every entry left in the journal (a process died before step 3, or is still in it)."""
        j: dict[str, Any] = await self.redis.hgetall(names.KEY_CREDIT_JOURNAL)
        for field, seq in sorted(j.items()):
            if field.startswith("n:") and "e:" + field[2:] in j:
                await self._land(field[2:], int(seq), json.loads(j["e:" + field[2:]]))

    async def _land(self, lane: str, seq: int, commands: list[list[str]]) -> None:
        """Steps 2 and 3 for one entry."""
        verdict, found = await self.run_by_node(
            _APPLY_LUA, commands, lambda slot, cmds: [marker_key(slot), credit_mark_key(slot), cmds], [lane, seq]
        )
        if verdict != "ok":
            raise StateLost(_state_lost_message(found))
        await self._credit_done(keys=[names.KEY_CREDIT_JOURNAL], args=[lane, str(seq)])
