"""The commit script's command list: what redis-py would send, every argument a string."""

from __future__ import annotations

import json

import pytest

from streams.state.referral_store import MAX_COMMAND_ARGS, StagedCommands


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (lambda c: c.hincrby("fx:b:u1", "p", -(10**15) - 1), ["HINCRBY", "fx:b:u1", "p", "-1000000000000001"]),
        (
            lambda c: c.hset("fx:u:u1", mapping={"t": 1762819200000, "d": 1}),
            ["HSET", "fx:u:u1", "t", "1762819200000", "d", "1"],
        ),
        (lambda c: c.set("fx:o:o1", b'{"a":1}'), ["SET", "fx:o:o1", '{"a":1}']),
        (lambda c: c.set("fx:ci:1:ip", 3, px=300000), ["SET", "fx:ci:1:ip", "3", "PX", "300000"]),
        (lambda c: c.zadd("fx:settle", {"o1": 1762819260000}), ["ZADD", "fx:settle", "1762819260000", "o1"]),
        (lambda c: c.sadd("fx:dl", "e1", "e2"), ["SADD", "fx:dl", "e1", "e2"]),
        (
            lambda c: c.xadd("fx:f:u1", {"e": "分销"}, maxlen=1000, approximate=True),
            ["XADD", "fx:f:u1", "MAXLEN", "~", "1000", "*", "e", "分销"],
        ),
    ],
)
def test_commands_are_recorded_with_string_arguments(stage: object, expected: list[str]) -> None:
    """A Lua number would print a 16-digit cent amount as 1e+15: every argument must travel as a string."""
    c = StagedCommands()
    stage(c)  # type: ignore[operator]
    assert json.loads(c.payload()) == [expected]


def test_a_command_too_long_for_lua_unpack_is_refused_when_staged() -> None:
    """Lua's unpack() has a small limit; a longer command must fail before anything is sent, not half-way."""
    c = StagedCommands()
    c.sadd("fx:dl", *[f"e{i}" for i in range(MAX_COMMAND_ARGS - 2)])
    with pytest.raises(ValueError, match="too long"):
        c.sadd("fx:dl", *[f"e{i}" for i in range(MAX_COMMAND_ARGS)])
    assert len(c.commands) == 1
