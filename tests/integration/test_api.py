"""The distributor API against a real worker after the basic example: values, paging, auth, the SSE feed.

Every JSON response is validated against docs/openapi.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streams.api import auth
from tests.integration import scenario
from tests.integration.scenario import Env, WorkerProcess

EXAMPLE = "basic"
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())


class Api:
    """One worker that has applied the example, and a client that checks every answer against the spec."""

    def __init__(self, env: Env, worker: WorkerProcess) -> None:
        self.env, self.worker, self.port = env, worker, env.web_port
        self.operator = env.operator_token

    def token(self, distributor: str | None, ttl: int = 600) -> str:
        role = auth.DISTRIBUTOR if distributor else auth.OPERATOR
        return auth.issue(scenario.TEST_TOKEN_KEY, role, distributor, ttl)

    def raw(self, path: str, token: str | None) -> tuple[int, str, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def get(self, template: str, path: str, token: str | None = "", status: int = 200) -> Any:
        """GET path, assert the status, validate the JSON body against the spec's response for template."""
        code, ctype, body = self.raw(path, self.operator if token == "" else token)
        assert code == status, f"{path}: {code} {body[:300]!r}"
        assert ctype.startswith("application/json"), ctype
        data = json.loads(body)
        validate(template, status, data)
        return data


def validate(template: str, status: int, data: Any) -> None:
    """The body against the spec's schema for this path and status."""
    op = SPEC["paths"][template]["get"]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = {"components": SPEC["components"], **resp["content"]["application/json"]["schema"]}
    jsonschema.Draft202012Validator(schema).validate(data)


@pytest.fixture(scope="module")
def api(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The basic example applied once; the tests below only read, except the feed tests at the end."""
    tmp = tmp_path_factory.mktemp("api")
    env = scenario.fresh_env(stack, tmp, "api")
    w = env.worker(EXAMPLE)
    try:
        env.produce(scenario.load_records(EXAMPLE))
        _, diff = env.outcome(scenario.load_expected(EXAMPLE))
        assert not diff, "\n".join(diff) + "\n" + w.log_tail()
        scenario.wait_read_models(env.web_port)
        yield Api(env, w)
    finally:
        w.stop()
        shutil.rmtree(tmp / "var", ignore_errors=True)


def expected_teams() -> dict[str, list[int]]:
    """Team sizes per level computed from expected.json's bindings, independently of the projection."""
    inviter: dict[str, str | None] = scenario.load_expected(EXAMPLE)["bindings"]
    sizes: dict[str, list[int]] = {}
    for user in inviter:
        up = inviter.get(user)
        for level in range(3):
            if up is None:
                break
            sizes.setdefault(up, [0, 0, 0])[level] += 1
            up = inviter.get(up)
    return sizes


def test_balances_and_team_sizes_equal_the_expected_outcome(api: Api) -> None:
    expected = scenario.load_expected(EXAMPLE)
    teams = expected_teams()
    for uid, bal in expected["balances"].items():
        d = api.get("/api/distributors/{id}", f"/api/distributors/{uid}")
        assert (d["pending_cents"], d["available_cents"]) == (bal["pending_cents"], bal["available_cents"]), uid
        assert d["inviter"] == expected["bindings"].get(uid)
        t = teams.get(uid, [0, 0, 0])
        assert [d["team"]["level1"], d["team"]["level2"], d["team"]["level3"]] == t, uid
    for uid, t in teams.items():
        d = api.get("/api/distributors/{id}", f"/api/distributors/{uid}")
        assert [d["team"][f"level{i}"] for i in (1, 2, 3)] == t, uid


def test_lifetime_and_tier(api: Api) -> None:
    expected = scenario.load_expected(EXAMPLE)
    earned: dict[str, int] = {}
    for key, amount in expected["entries"].items():
        _, _, who, kind = key.split("|")
        if kind != "settled":
            earned[who] = earned.get(who, 0) + amount
    for who, total in earned.items():
        assert api.get("/api/distributors/{id}", f"/api/distributors/{who}")["lifetime_earned_cents"] == total
    tiers = {
        r["value"]["user_id"]: r["value"]["tier"]
        for r in scenario.load_records(EXAMPLE)
        if r["topic"] == "fenxiao.tiers"
    }
    for uid, tier in tiers.items():
        if uid in expected["bindings"]:
            assert api.get("/api/distributors/{id}", f"/api/distributors/{uid}")["tier"] == tier


def test_unknown_distributor_is_404(api: Api) -> None:
    api.get("/api/distributors/{id}", "/api/distributors/nobody-here", status=404)


def test_ledger_pages_cover_every_entry_once_newest_first(api: Api) -> None:
    expected = scenario.load_expected(EXAMPLE)
    who = "u1-0"
    want = {k: v for k, v in expected["entries"].items() if k.split("|")[2] == who}
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        q = f"?limit=7{'&cursor=' + cursor if cursor else ''}"
        page = api.get("/api/distributors/{id}/ledger", f"/api/distributors/{who}/ledger{q}")
        seen.extend(page["entries"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["entries"]) == 7
    assert pages > 3
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)), "a page repeated an entry"
    assert ids == sorted(ids, key=lambda s: tuple(map(int, s.split("-"))), reverse=True), "not newest first"
    got: dict[str, int] = {}
    for e in seen:
        assert e["beneficiary_id"] == who
        k = f"{e['order_id']}|{e['level']}|{who}|{e['kind']}"
        got[k] = got.get(k, 0) + e["amount_cents"]
    assert got == want


def test_team_pages_list_each_member_once(api: Api) -> None:
    inviter: dict[str, str | None] = scenario.load_expected(EXAMPLE)["bindings"]
    who = "u1-0"
    for level in (1, 2, 3):
        want = set()
        for u in inviter:
            up: str | None = u
            for _ in range(level):
                up = inviter.get(up) if up is not None else None
            if up == who:
                want.add(u)
        got: list[str] = []
        cursor = None
        while True:
            q = f"?level={level}&limit=2{'&cursor=' + urllib.request.quote(cursor) if cursor else ''}"
            page = api.get("/api/distributors/{id}/team", f"/api/distributors/{who}/team{q}")
            assert page["size"] == len(want)
            got.extend(m["user_id"] for m in page["members"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(got) == sorted(want) and len(got) == len(set(got)), level


def test_leaderboards(api: Api) -> None:
    expected = scenario.load_expected(EXAMPLE)
    net: dict[str, int] = {}
    for key, amount in expected["entries"].items():
        _, _, who, kind = key.split("|")
        if kind != "settled":
            net[who] = net.get(who, 0) + amount
    board = api.get("/api/leaderboard", "/api/leaderboard?period=all&metric=earnings&limit=100")
    assert {e["distributor_id"]: e["value"] for e in board["entries"]} == {w: v for w, v in net.items() if v}
    values = [e["value"] for e in board["entries"]]
    assert values == sorted(values, reverse=True)
    day = api.get("/api/leaderboard", "/api/leaderboard?period=quarter&at=2026-11-11&metric=earnings&limit=100")
    assert day["bucket"] == "2026-Q4" and day["entries"] == board["entries"]
    inviter: dict[str, str | None] = expected["bindings"]
    recruits = api.get("/api/leaderboard", "/api/leaderboard?period=month&at=2026-11-30&metric=recruits&limit=100")
    want = {w: n[0] for w, n in expected_teams().items()}
    assert {e["distributor_id"]: e["value"] for e in recruits["entries"]} == want
    assert sum(want.values()) == sum(1 for v in inviter.values() if v)
    gmv = api.get("/api/leaderboard", "/api/leaderboard?period=day&at=2026-11-11&metric=gmv&campaign=d11")
    assert gmv["entries"] and gmv["campaign"] == "d11"
    empty = api.get("/api/leaderboard", "/api/leaderboard?period=day&at=2020-01-01&metric=gmv")
    assert empty["entries"] == []
    api.get("/api/leaderboard", "/api/leaderboard?period=week", status=400)
    api.get("/api/leaderboard", "/api/leaderboard?metric=recruits&campaign=d11", status=400)


def test_share_link_and_qr(api: Api) -> None:
    s = api.get("/api/distributors/{id}/share", "/api/distributors/u1-3/share?campaign=d11&product=p%201")
    assert s["url"] == "https://shop.example/s?ref=u1-3&campaign=d11&product=p+1"
    code, ctype, body = api.raw(s["qr_png"], api.token("u1-3"))
    assert code == 200 and ctype == "image/png" and body.startswith(b"\x89PNG\r\n\x1a\n")
    api.get("/api/distributors/{id}/share", "/api/distributors/nobody/share", status=404)


def test_live_numbers(api: Api) -> None:
    live = api.get("/api/live", "/api/live?window=600")
    expected = scenario.load_expected(EXAMPLE)
    assert live["commission_cents"] == sum(v for k, v in expected["entries"].items() if not k.endswith("|settled"))
    assert live["orders"] > 0 and live["gmv_cents"] > 0 and len(live["series"]) == 600
    c = api.get("/api/campaigns/{id}/live", "/api/campaigns/d11/live?window=600")
    assert 0 < c["orders"] < live["orders"] and c["top_earners"]


def test_me(api: Api) -> None:
    assert api.get("/api/me", "/api/me", token=api.token("u1-2"))["distributor_id"] == "u1-2"
    assert api.get("/api/me", "/api/me")["role"] == "operator"


def test_auth_refusals(api: Api) -> None:
    me = api.token("u1-1")
    for path, template in [
        ("/api/distributors/u1-1", "/api/distributors/{id}"),
        ("/api/distributors/u1-1/ledger", "/api/distributors/{id}/ledger"),
        ("/api/leaderboard?period=all", "/api/leaderboard"),
        ("/api/me", "/api/me"),
    ]:
        assert api.get(template, path, token=None, status=401)["error"]
        assert "expired" in api.get(template, path, token=api.token("u1-1", ttl=-5), status=401)["error"]
        forged = auth.issue("another-key", auth.OPERATOR, None, 600)
        api.get(template, path, token=forged, status=401)
        api.get(template, path, token="garbage", status=401)
    api.get("/api/distributors/{id}", "/api/distributors/u1-1", token=me)
    api.get("/api/distributors/{id}/ledger", "/api/distributors/u1-1/ledger", token=me)
    api.get("/api/leaderboard", "/api/leaderboard?period=all", token=me)
    api.get("/api/distributors/{id}", "/api/distributors/u1-0", token=me, status=403)
    api.get("/api/distributors/{id}/ledger", "/api/distributors/u1-0/ledger", token=me, status=403)
    api.get("/api/distributors/{id}/team", "/api/distributors/u1-0/team", token=me, status=403)
    api.get("/api/distributors/{id}/share", "/api/distributors/u1-0/share", token=me, status=403)
    api.get("/api/live", "/api/live", token=me, status=403)
    api.get("/api/campaigns/{id}/live", "/api/campaigns/d11/live", token=me, status=403)
    api.get("/status", "/status", token=me, status=403)
    api.get("/status", "/status", token=None, status=401)
    assert api.raw("/api/distributors/u1-0/feed", me)[0] == 403
    assert api.raw("/api/feed", me)[0] == 403
    assert api.raw(f"/api/distributors/u1-1/feed?token={auth.issue('x', auth.OPERATOR, None, 60)}", None)[0] == 401
    assert api.raw("/dashboard", None)[0] == 401
    assert api.raw("/health", None)[0] == 200


# ---- the feed ------------------------------------------------------------------------------------


def _paid(order_id: str, buyer: str, amount: int) -> dict[str, Any]:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{datetime.now(UTC).microsecond // 1000:03d}Z"
    value = {"event_id": f"ev-{order_id}", "ts": ts, "order_id": order_id, "type": "paid", "buyer_id": buyer}
    return {"topic": "fenxiao.orders", "key": buyer, "value": {**value, "amount_cents": amount}}


class Sse:
    """A raw SSE client: (id, data, arrival wall time) per event (stream ids carry Redis' commit ms)."""

    def __init__(self, port: int, path: str, token: str, last_id: str | None = None) -> None:
        self.port, self.path, self.token, self.last_id = port, path, token, last_id
        self.events: list[tuple[str, dict[str, Any], float]] = []

    async def run(self, until: Any, timeout: float) -> None:
        """Read events until until(events) is true or timeout."""
        import aiohttp

        headers = {"Authorization": f"Bearer {self.token}"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.port}{self.path}", headers=headers) as r,
        ):
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            self.connected.set()
            sid, data = None, None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    async for raw in r.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("id: "):
                            sid = line[4:]
                        elif line.startswith("data: "):
                            data = json.loads(line[6:])
                        elif line == "" and sid and data is not None:
                            self.events.append((sid, data, time.time()))
                            sid, data = None, None
                            if until(self.events):
                                return

    connected: asyncio.Event


async def _listen_and_produce(
    api: Api, who: str, records: list[dict[str, Any]], until: Any, last_id: str | None = None
) -> tuple[Sse, float]:
    sse = Sse(api.port, f"/api/distributors/{who}/feed", api.token(who), last_id)
    sse.connected = asyncio.Event()
    task = asyncio.create_task(sse.run(until, timeout=30))
    await asyncio.wait_for(sse.connected.wait(), 10)
    await asyncio.sleep(0.3)
    t0 = time.time()
    if records:
        await scenario.produce(api.env.stack.bootstrap, records)
    await task
    return sse, t0


def _recruit_of(who: str) -> str:
    inviter: dict[str, str | None] = scenario.load_expected(EXAMPLE)["bindings"]
    return sorted(u for u, i in inviter.items() if i == who)[0]


def test_feed_delivers_new_entries_in_order_within_a_second(api: Api) -> None:
    who = "u1-0"
    buyer = _recruit_of(who)
    order = f"feed-{uuid.uuid4().hex[:6]}"

    def done(evs: list[Any]) -> bool:
        return any(e[1]["order_id"] == order for e in evs)

    sse, t0 = asyncio.run(_listen_and_produce(api, who, [_paid(order, buyer, 10_000)], done))
    mine = [e for e in sse.events if e[1]["order_id"] == order]
    assert mine, f"no feed event for {order}:\n{api.worker.log_tail()}"
    sid, data, at = mine[0]
    assert data["beneficiary_id"] == who and data["kind"] == "accrued" and data["level"] == 1
    # The stream id is Redis' clock at the commit's XADD (same machine): commit -> browser must be < 1 s.
    from_commit = at - int(sid.split("-")[0]) / 1000
    assert from_commit < 1.0, f"commit -> SSE took {from_commit:.3f}s"
    # End to end it also waits for event-time alignment (the test config's 1 s idle grace, docs/decisions.md).
    from_produce = at - t0
    assert from_produce < 1.0 + 1.0, f"produce -> SSE took {from_produce:.3f}s"
    page = api.get("/api/distributors/{id}/ledger", f"/api/distributors/{who}/ledger?limit=1")
    assert page["entries"][0]["id"] == sid


def test_feed_resumes_from_last_event_id_without_gaps_or_repeats(api: Api) -> None:
    who = "u1-0"
    buyer = _recruit_of(who)
    before = api.get("/api/distributors/{id}/ledger", f"/api/distributors/{who}/ledger?limit=1")["entries"][0]["id"]
    first = [_paid(f"rs-a{i}-{uuid.uuid4().hex[:4]}", buyer, 1000 + i) for i in range(3)]
    sse1, _ = asyncio.run(_listen_and_produce(api, who, first, lambda evs: len(evs) >= 3))
    assert len(sse1.events) == 3
    ids1 = [e[0] for e in sse1.events]
    assert [e[1]["order_id"] for e in sse1.events] == [r["value"]["order_id"] for r in first], "out of order"
    # Disconnected now: more entries land, and the resumed stream must start right after the last id seen.
    missed = [_paid(f"rs-b{i}-{uuid.uuid4().hex[:4]}", buyer, 2000 + i) for i in range(4)]
    api.env.produce(missed)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        top = api.get("/api/distributors/{id}/ledger", f"/api/distributors/{who}/ledger?limit=1")["entries"][0]
        if top["order_id"] == missed[-1]["value"]["order_id"]:
            break
        time.sleep(0.2)
    sse2, _ = asyncio.run(_listen_and_produce(api, who, [], lambda evs: len(evs) >= 4, last_id=ids1[-1]))
    assert [e[1]["order_id"] for e in sse2.events] == [r["value"]["order_id"] for r in missed]
    ids = [before, *ids1, *(e[0] for e in sse2.events)]
    assert len(set(ids)) == len(ids)
    key = [tuple(map(int, s.split("-"))) for s in ids]
    assert key == sorted(key), "ids must increase"
    # The ledger agrees: exactly these 7 entries came after `before`.
    page = api.get("/api/distributors/{id}/ledger", f"/api/distributors/{who}/ledger?limit=7")
    assert [e["id"] for e in reversed(page["entries"])] == ids[1:]
