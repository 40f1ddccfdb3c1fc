"""The API's withdrawal round trip through the engine: request -> worker -> held -> visible -> approved -> paid.

The API produces onto Kafka; the worker applies the events (contract v2) and commits the withdrawal state to
Redis (fx:w:, fx:wq, fx:wu:), which the API's reads serve. Amounts are hand-computed from the money-out
config: fee_bps = 60 and fee_min_cents = 10, so paying 6000 withholds (6000 x 60 + 5000) // 10000 = 36.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from streams import names
from streams.api import auth
from tests.integration import scenario
from tests.integration.test_api_writes import Client, _ensure_v2_topics, records, token, uid

EXAMPLE = "v2/money-out"
W = "/api/distributors/{id}/withdrawals"
ACT = "/api/operator/withdrawals/{withdrawal_id}/{action}"
Q = "/api/operator/withdrawals"


@pytest.fixture(scope="module")
def api(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A worker under the money-out config, with no events yet."""
    tmp = tmp_path_factory.mktemp("api-roundtrip")
    env = scenario.fresh_env(stack, tmp, "apirt")
    asyncio.run(_ensure_v2_topics(stack.bootstrap))
    (tmp / "v2").mkdir()  # Env.config writes <tmp>/<example>.toml
    w = env.worker(EXAMPLE)
    try:
        yield Client(env, w)
    finally:
        w.stop()
        shutil.rmtree(tmp / "var", ignore_errors=True)


def _now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def wait(what: str, check: Callable[[], Any], api: Client, timeout: float = 30.0) -> Any:
    """Poll until check() is truthy; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout}s:\n{api.worker.log_tail()}")


def test_request_approve_pay_through_the_engine(api: Client) -> None:
    who = uid("rt")
    signup = {"event_id": f"s-{who}", "ts": _now(), "user_id": who}
    api.env.produce([{"topic": names.SIGNUPS, "key": who, "value": signup}])
    alice = token(auth.OPERATOR, "alice")
    mine = token(auth.DISTRIBUTOR, who)
    time.sleep(0.01)
    adj = uid("adj")
    credit = {"distributor_id": who, "amount_cents": 10_000, "reason": "launch award"}
    api.post("/api/operator/adjustments", "/api/operator/adjustments", alice, credit, adj)
    wid = uid("wd")
    api.post(W, f"/api/distributors/{who}/withdrawals", mine, {"amount_cents": 6000, "channel": "alipay"}, wid)

    def state() -> dict[str, Any] | None:
        ws = api.get(W, f"/api/distributors/{who}/withdrawals", mine)["withdrawals"]
        return ws[0] if ws else None

    requested = wait("the held withdrawal in the list", state, api)
    assert (requested["withdrawal_id"], requested["status"], requested["amount_cents"]) == (wid, "requested", 6000)
    assert wid in [w["withdrawal_id"] for w in api.get(Q, Q, alice)["withdrawals"]]

    # More than what is left available (10000 - 6000 = 4000): the engine refuses it, it never appears.
    too_much = uid("wd")
    api.post(W, f"/api/distributors/{who}/withdrawals", mine, {"amount_cents": 4001}, too_much)

    api.post(ACT, f"/api/operator/withdrawals/{wid}/approve", alice, {}, uid("op"))
    wait("approved", lambda: (s := state()) and s["status"] == "approved", api)
    api.post(ACT, f"/api/operator/withdrawals/{wid}/paid", alice, {"reason": "alipay batch 7"}, uid("op"))
    paid = wait("paid", lambda: (s := state()) if (s := state()) and s["status"] == "paid" else None, api)
    assert (paid["fee_cents"], paid["payout_cents"]) == (36, 5964)
    assert wid not in [w["withdrawal_id"] for w in api.get(Q, Q, alice)["withdrawals"]]

    mine_entries = [v for _, v in records(api, names.COMMISSIONS, beneficiary_id=who)]
    moved = sorted((e["kind"], e["amount_cents"]) for e in mine_entries)
    assert moved == [("adjusted", 10_000), ("held", -6000), ("withdrawn", -6000)]
    dead = wait(
        "the refused request's dead letter",
        lambda: [d for _, d in records(api, names.DEAD_LETTERS) if too_much in d.get("raw", "")],
        api,
    )
    assert dead[0]["reason"] == "insufficient_balance"
    assert [w["withdrawal_id"] for w in api.get(W, f"/api/distributors/{who}/withdrawals", mine)["withdrawals"]] == [
        wid
    ]
    states = [v["status"] for _, v in records(api, names.WITHDRAWAL_STATES, withdrawal_id=wid)]
    assert states == ["requested", "approved", "paid"]
