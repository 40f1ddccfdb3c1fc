"""Redis for the staged topology's credit stage: per-batch order loads and a commit fenced by partition positions.

Every credit worker writes orders, settlements, balances (HINCRBY: increments from several workers add up) and
dead ids of its own order-steps partitions. The commit point of a partition is its position in fx:cr:pos,
moved in the same script as the batch's writes and only from the position the batch was read at: a batch
applied twice (a crash before the offsets moved, or a worker that lost the partition mid-batch) finds the
position moved and writes nothing. Layout: docs/redis.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from streams import names
from streams.engine.ledger import State
from streams.state.referral_store import BatchRequest, RedisStore, StateLost

# KEYS[1] epoch, KEYS[2] positions; ARGV[1] epoch, ARGV[2] JSON [[partition, expected, next], ...]. Shared with
# the cluster's journal script (streams/state/credit_cluster.py), which goes on after the positions moved.
MOVE_POSITIONS_LUA = """
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then return {'epoch', epoch or ''} end
local moves = cjson.decode(ARGV[2])
for _, m in ipairs(moves) do
  local cur = redis.call('HGET', KEYS[2], m[1]) or ''
  if cur ~= m[2] then return {'moved', m[1]} end
end
for _, m in ipairs(moves) do redis.call('HSET', KEYS[2], m[1], m[3]) end
"""
# ARGV[3] commands.
_CREDIT_COMMIT_LUA = (
    MOVE_POSITIONS_LUA
    + """local commands = cjson.decode(ARGV[3])
for i = 1, #commands do redis.call(unpack(commands[i])) end
return {'ok', tostring(#commands)}
"""
)
# Most due orders one batch load returns; the rest settle with a later batch (their entries are the same).
SETTLE_LOAD_LIMIT = 50_000


def moves_arg(moves: Mapping[int, tuple[int, int]]) -> str:
    """The position moves as the scripts' JSON argument: [[partition, expected, next], ...] as strings."""
    return msgspec.json.encode([[str(p), str(a), str(b)] for p, (a, b) in sorted(moves.items())]).decode()


def commands_arg(commands: list[list[str]]) -> str:
    """A batch's commands as the scripts' JSON argument (msgspec, as the engine's own commit encodes them)."""
    return msgspec.json.encode(commands).decode()


class PositionMoved(RuntimeError):
    """Another credit worker applied this partition past where the batch was read: drop the batch, re-seek."""


class CreditStore(RedisStore):
    """The commit script's state writes without the lease: partitions, not the whole Redis, are owned."""

    def __init__(self, url: str, attribution_window_ms: int, epoch: str = "") -> None:
        super().__init__(url, attribution_window_ms, owner="", epoch=epoch)
        self._credit_commit = self.redis.register_script(_CREDIT_COMMIT_LUA)

    async def current_epoch(self) -> str | None:
        """The state's epoch (None until the attribution stage has made the state complete)."""
        got = await self.redis.get(names.KEY_EPOCH)
        return None if got is None else str(got)

    async def positions(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """Where each partition's next batch starts (None: not set up for this epoch yet)."""
        parts = sorted(partitions)
        if not parts:
            return {}
        got = await self.redis.hmget(names.KEY_CREDIT_POS, [str(p) for p in parts])
        return {p: None if v is None else int(v) for p, v in zip(parts, got, strict=True)}

    async def load_orders(self, order_ids: Iterable[str], event_ids: list[str], settle_until_ms: int) -> State:
        """The batch's orders, the orders due by settle_until_ms and which event ids are dead, as one State."""
        req = BatchRequest(orders=set(order_ids), events=event_ids)
        return await self.load(req, settle_until_ms, SETTLE_LOAD_LIMIT)

    async def commit_credit(self, state: State, moves: Mapping[int, tuple[int, int]]) -> None:
        """Write the batch's state changes and move its partitions' positions, or nothing (PositionMoved)."""
        commands = self._state_commands(state, None)
        verdict, found = await self._credit_commit(
            keys=[names.KEY_EPOCH, names.KEY_CREDIT_POS],
            args=[
                self.epoch,
                moves_arg(moves),
                commands_arg(commands),
            ],
        )
        refuse(str(verdict), str(found))

    async def redo_journal(self) -> None:
        """Nothing to redo on one server: a batch's commit is one atomic script (the cluster store has a journal)."""


def refuse(verdict: str, found: str) -> None:
    """Raise for a commit script's refusal: the epoch changed (StateLost) or a position moved (PositionMoved)."""
    if verdict == "epoch":
        raise StateLost(f"the state's epoch changed under the credit stage (now {found or 'none'})")
    if verdict == "moved":
        raise PositionMoved(f"order-steps partition {found} was applied past this batch by another worker")
