"""The write API against a real worker, Redis and Kafka: what each POST puts on the topic, idempotency, refusals.

Every response (202 and errors) is validated against docs/openapi.yaml; the records are read back from the broker.
The withdrawal read endpoints are fed the Redis layout the worker's commit writes (the lead's shared interface).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis as redis_lib
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.events import parse_ts_ms
from streams import names
from streams.api import auth
from tests.integration import scenario
from tests.integration.scenario import Env, WorkerProcess

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
V2_TOPICS = (names.DISTRIBUTORS, names.ADJUSTMENTS, names.WITHDRAWALS)


def token(role: str, subject: str | None) -> str:
    """A token of the test key for this role and subject."""
    return auth.issue(scenario.TEST_TOKEN_KEY, role, subject, 600)


def validate(method: str, template: str, status: int, data: Any) -> None:
    """The body against the spec's schema for this operation and status."""
    resp = SPEC["paths"][template][method]["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = {"components": SPEC["components"], **resp["content"]["application/json"]["schema"]}
    jsonschema.Draft202012Validator(schema).validate(data)


class Client:
    """HTTP against the worker; every answer is checked against the spec."""

    def __init__(self, env: Env, worker: WorkerProcess) -> None:
        self.env, self.worker, self.port = env, worker, env.web_port
        self.redis = redis_lib.Redis.from_url(env.stack.redis_url, decode_responses=True)

    def call(
        self, method: str, path: str, tok: str | None, body: bytes | None = None, key: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        if key is not None:
            headers["Idempotency-Key"] = key
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(
        self, template: str, path: str, tok: str | None, body: Any, key: str | None, status: int = 202
    ) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        code, data = self.call("POST", path, tok, raw, key)
        assert code == status, f"POST {path}: {code} {data}\n{self.worker.log_tail(15)}"
        validate("post", template, status, data)
        return dict(data)

    def get(self, template: str, path: str, tok: str | None, status: int = 200) -> dict[str, Any]:
        code, data = self.call("GET", path, tok)
        assert code == status, f"GET {path}: {code} {data}"
        validate("get", template, status, data)
        return dict(data)


async def _ensure_v2_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        missing = [t for t in (*V2_TOPICS, names.WITHDRAWAL_STATES) if t not in set(await admin.list_topics())]
        if missing:
            await admin.create_topics([NewTopic(t, 4, 1) for t in missing])
    finally:
        await admin.close()


async def _read(bootstrap: str, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """Every (key, value) of a topic, from the beginning to its current end."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in sorted(md.partitions_for_topic(topic) or ())]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        pos = {tp: 0 for tp in tps}
        deadline = time.monotonic() + 10
        while any(pos[tp] < end[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, msgs in (await c.getmany(timeout_ms=200)).items():
                for m in msgs:
                    pos[tp] = m.offset + 1
                    out.append((m.key.decode(), json.loads(m.value)))
    finally:
        await c.stop()
    return out


def records(api: Client, topic: str, **match: Any) -> list[tuple[str, dict[str, Any]]]:
    """The topic's records whose value has every field of match."""
    got = asyncio.run(_read(api.env.stack.bootstrap, topic))
    return [(k, v) for k, v in got if all(v.get(f) == want for f, want in match.items())]


@pytest.fixture(scope="module")
def api(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One worker for the module; each test uses its own ids, so records of other tests never match."""
    tmp = tmp_path_factory.mktemp("api-writes")
    env = scenario.fresh_env(stack, tmp, "apiw")
    asyncio.run(_ensure_v2_topics(stack.bootstrap))
    w = env.worker("basic")
    try:
        yield Client(env, w)
    finally:
        w.stop()
        shutil.rmtree(tmp / "var", ignore_errors=True)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


OPERATOR = token(auth.OPERATOR, None)
ALICE = token(auth.OPERATOR, "alice")
W_TEMPLATE = "/api/distributors/{id}/withdrawals"


def test_a_withdrawal_request_is_produced_once_per_key(api: Client) -> None:
    who, key = uid("u"), uid("wd")
    mine = token(auth.DISTRIBUTOR, who)
    before = int(time.time() * 1000)
    first = api.post(
        W_TEMPLATE, f"/api/distributors/{who}/withdrawals", mine, {"amount_cents": 5000, "channel": "alipay"}, key
    )
    after = int(time.time() * 1000)
    assert (first["id"], first["topic"]) == (key, "fenxiao.withdrawals")
    # The same request again, laid out differently: the same answer, nothing new on the topic.
    again = api.post(
        W_TEMPLATE, f"/api/distributors/{who}/withdrawals", mine, b'{ "channel":"alipay", "amount_cents":5000 }', key
    )
    assert again == {**first, "replayed": True} and first["replayed"] is False
    conflict = api.post(
        W_TEMPLATE, f"/api/distributors/{who}/withdrawals", mine, {"amount_cents": 5001, "channel": "alipay"}, key, 409
    )
    assert "different request" in conflict["error"]
    got = records(api, names.WITHDRAWALS, withdrawal_id=key)
    assert len(got) == 1, got
    k, v = got[0]
    assert k == who
    assert before <= parse_ts_ms(v["ts"]) <= after
    assert {f: v[f] for f in ("event_id", "distributor_id", "type", "amount_cents", "channel")} == {
        "event_id": first["event_id"],
        "distributor_id": who,
        "type": "requested",
        "amount_cents": 5000,
        "channel": "alipay",
    }
    # A distributor's own request is not an operator write.
    assert not [
        e
        for e in api.get("/api/operator/audit", "/api/operator/audit?limit=500", OPERATOR)["entries"]
        if e["idempotency_key"] == key
    ]


def test_the_same_key_on_another_endpoint_is_a_conflict(api: Client) -> None:
    who, key = uid("u"), uid("k")
    api.post(W_TEMPLATE, f"/api/distributors/{who}/withdrawals", OPERATOR, {"amount_cents": 700}, key)
    body = {"distributor_id": who, "amount_cents": 700, "reason": "same key, other call"}
    api.post("/api/operator/adjustments", "/api/operator/adjustments", OPERATOR, body, key, 409)
    assert records(api, names.ADJUSTMENTS, adjustment_id=key) == []


def test_cross_distributor_and_role_refusals_produce_nothing(api: Client) -> None:
    a, b, key = uid("ua"), uid("ub"), uid("wd")
    ta = token(auth.DISTRIBUTOR, a)
    body = {"amount_cents": 5000}
    assert "own" in api.post(W_TEMPLATE, f"/api/distributors/{b}/withdrawals", ta, body, key, 403)["error"]
    api.post(W_TEMPLATE, f"/api/distributors/{b}/withdrawals", None, body, key, 401)
    api.post(
        W_TEMPLATE, f"/api/distributors/{b}/withdrawals", auth.issue("other-key", "operator", None, 60), body, key, 401
    )
    api.get(W_TEMPLATE, f"/api/distributors/{b}/withdrawals", ta, 403)
    for template, path, payload in [
        ("/api/operator/withdrawals/{withdrawal_id}/{action}", f"/api/operator/withdrawals/{key}/approve", {}),
        ("/api/operator/distributors/{id}/status", f"/api/operator/distributors/{a}/status", {"status": "active"}),
        (
            "/api/operator/adjustments",
            "/api/operator/adjustments",
            {"distributor_id": a, "amount_cents": 1, "reason": "x"},
        ),
    ]:
        assert api.post(template, path, ta, payload, uid("k"), 403)["error"] == "operators only"
    api.get("/api/operator/withdrawals", "/api/operator/withdrawals", ta, 403)
    api.get("/api/operator/audit", "/api/operator/audit", ta, 403)
    # The refused request did not claim its key: b itself may use it now, once.
    assert (
        api.post(W_TEMPLATE, f"/api/distributors/{b}/withdrawals", token(auth.DISTRIBUTOR, b), body, key)["id"] == key
    )
    assert [k for k, _ in records(api, names.WITHDRAWALS, withdrawal_id=key)] == [b]


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ({"amount_cents": 5000}, None, "missing Idempotency-Key"),
        ({"amount_cents": 5000}, "has space", "Idempotency-Key must be"),
        ({"amount_cents": 5000}, "k" * 129, "Idempotency-Key must be"),
        (b"{not json", "K", "not JSON"),
        (b"[5000]", "K", "JSON object"),
        ({"amount_cents": 0}, "K", "amount_cents"),
        ({"amount_cents": -100}, "K", "amount_cents"),
        ({"amount_cents": 10**12 + 1}, "K", "amount_cents"),
        ({"amount_cents": 10**40}, "K", "amount_cents"),
        ({"amount_cents": 12.5}, "K", "amount_cents"),
        ({"amount_cents": "5000"}, "K", "amount_cents"),
        ({}, "K", "amount_cents"),
        ({"amount_cents": 5000, "channel": "x" * 200}, "K", "channel"),
        ({"amount_cents": 5000, "to_account": "mine"}, "K", "unknown field 'to_account'"),
        (b'{"amount_cents": 1e400}', "K", "not JSON"),
        (b"x" * 20_000, "K", "at most"),
        (b"[" * 3_000_000, "K", "at most"),
    ],
)
def test_hostile_withdrawal_requests_are_400_and_claim_nothing(
    api: Client, body: Any, key: str | None, message: str
) -> None:
    who = uid("u")
    k = None if key is None else (key if key != "K" else uid("hostile"))
    err = api.post(W_TEMPLATE, f"/api/distributors/{who}/withdrawals", OPERATOR, body, k, 400)
    assert message in err["error"], err
    assert records(api, names.WITHDRAWALS, distributor_id=who) == []
    if k is not None and key == "K":
        api.post(W_TEMPLATE, f"/api/distributors/{who}/withdrawals", OPERATOR, {"amount_cents": 100}, k)


def test_long_ids_unknown_status_and_action(api: Client) -> None:
    long_id = "x" * 129
    err = api.post(
        W_TEMPLATE, f"/api/distributors/{long_id}/withdrawals", OPERATOR, {"amount_cents": 100}, uid("k"), 400
    )
    assert "1-128" in err["error"]
    st = "/api/operator/distributors/{id}/status"
    api.post(st, f"/api/operator/distributors/{long_id}/status", OPERATOR, {"status": "frozen"}, uid("k"), 400)
    assert (
        "status"
        in api.post(st, "/api/operator/distributors/u1/status", OPERATOR, {"status": "paused"}, uid("k"), 400)["error"]
    )
    act = "/api/operator/withdrawals/{withdrawal_id}/{action}"
    assert (
        "unknown action" in api.post(act, "/api/operator/withdrawals/w1/approved", OPERATOR, {}, uid("k"), 404)["error"]
    )
    assert (
        "unknown withdrawal"
        in api.post(act, f"/api/operator/withdrawals/{uid('nope')}/approve", OPERATOR, {}, uid("k"), 404)["error"]
    )
    adj = "/api/operator/adjustments"
    assert "reason" in api.post(adj, adj, OPERATOR, {"distributor_id": "u1", "amount_cents": 5}, uid("k"), 400)["error"]
    assert (
        "amount_cents"
        in api.post(adj, adj, OPERATOR, {"distributor_id": "u1", "amount_cents": 0, "reason": "r"}, uid("k"), 400)[
            "error"
        ]
    )


def _seed(api: Client, wid: str, who: str, status: str, requested_ts: int) -> dict[str, Any]:
    """A withdrawal state as the worker's commit stores it (common.md's layout)."""
    state = {
        "withdrawal_id": wid,
        "distributor_id": who,
        "amount_cents": 2500,
        "channel": "bank",
        "status": status,
        "requested_ts": requested_ts,
        "updated_ts": requested_ts + 10,
        "fee_cents": None,
        "payout_cents": None,
    }
    api.redis.hset(names.KEY_WITHDRAWAL + wid, "s", json.dumps(state))
    api.redis.zadd(names.KEY_DISTRIBUTOR_WITHDRAWALS + who, {wid: requested_ts})
    if status in ("requested", "approved"):
        api.redis.zadd(names.KEY_WITHDRAWAL_QUEUE, {wid: requested_ts})
    return state


def test_operator_transitions_read_the_distributor_from_the_stored_state(api: Client) -> None:
    who, wid = uid("u"), uid("wd")
    _seed(api, wid, who, "requested", 1_795_000_000_000)
    act = "/api/operator/withdrawals/{withdrawal_id}/{action}"
    key = uid("op")
    out = api.post(act, f"/api/operator/withdrawals/{wid}/approve", ALICE, {"reason": "KYC ok"}, key)
    assert out["id"] == f"{wid}:approved" and out["topic"] == "fenxiao.withdrawals"
    again = api.post(act, f"/api/operator/withdrawals/{wid}/approve", ALICE, {"reason": "KYC ok"}, key)
    assert out["replayed"] is False and again == {**out, "replayed": True}
    paid = api.post(act, f"/api/operator/withdrawals/{wid}/paid", OPERATOR, b"", uid("op"))
    got = records(api, names.WITHDRAWALS, withdrawal_id=wid)
    assert [(k, v["type"], v["distributor_id"], v["event_id"]) for k, v in got] == [
        (who, "approved", who, out["event_id"]),
        (who, "paid", who, paid["event_id"]),
    ]
    assert got[0][1]["reason"] == "KYC ok" and "amount_cents" not in got[0][1]
    audit = api.get("/api/operator/audit", "/api/operator/audit?limit=2", OPERATOR)["entries"]
    assert [(e["who"], e["path"], e["event_id"], e["result_id"]) for e in audit] == [
        ("operator", f"/api/operator/withdrawals/{wid}/paid", paid["event_id"], f"{wid}:paid"),
        ("alice", f"/api/operator/withdrawals/{wid}/approve", out["event_id"], f"{wid}:approved"),
    ]
    assert (
        audit[1]["body"] == {"reason": "KYC ok"} and audit[1]["method"] == "POST" and audit[1]["idempotency_key"] == key
    )


def test_status_and_adjustment_are_produced_and_audited(api: Client) -> None:
    who = uid("u")
    st = "/api/operator/distributors/{id}/status"
    s = api.post(
        st, f"/api/operator/distributors/{who}/status", ALICE, {"status": "frozen", "reason": "chargebacks"}, uid("st")
    )
    adj_key = uid("adj")
    body = {"distributor_id": who, "amount_cents": -300, "reason": "double-paid order o-9"}
    a = api.post("/api/operator/adjustments", "/api/operator/adjustments", ALICE, body, adj_key)
    assert a["id"] == adj_key and a["topic"] == "fenxiao.adjustments" and s["topic"] == "fenxiao.distributors"
    [(sk, sv)] = records(api, names.DISTRIBUTORS, user_id=who)
    assert sk == who and (sv["status"], sv["reason"], sv["event_id"]) == ("frozen", "chargebacks", s["event_id"])
    [(ak, av)] = records(api, names.ADJUSTMENTS, adjustment_id=adj_key)
    assert ak == who and (av["distributor_id"], av["amount_cents"], av["reason"]) == (who, -300, body["reason"])
    page1 = api.get("/api/operator/audit", "/api/operator/audit?limit=1", OPERATOR)
    assert page1["entries"][0]["result_id"] == adj_key and page1["entries"][0]["body"] == body
    assert page1["entries"][0]["who"] == "alice" and page1["next_cursor"]
    page2 = api.get("/api/operator/audit", f"/api/operator/audit?limit=1&cursor={page1['next_cursor']}", OPERATOR)
    assert page2["entries"][0]["event_id"] == s["event_id"]
    assert parse_ts_ms(page2["entries"][0]["at"]) <= parse_ts_ms(page1["entries"][0]["at"])


def test_withdrawal_lists_and_the_review_queue(api: Client) -> None:
    who, other = uid("u"), uid("u")
    base = 1_700_000_000_000  # older than anything else in the queue, so these three lead it
    w_old = _seed(api, uid("wo"), who, "approved", base)
    w_mid = _seed(api, uid("wm"), who, "paid", base + 1000)
    w_new = _seed(api, uid("wn"), who, "requested", base + 2000)
    w_other = _seed(api, uid("wx"), other, "requested", base + 1500)
    mine = api.get(W_TEMPLATE, f"/api/distributors/{who}/withdrawals", token(auth.DISTRIBUTOR, who))
    assert mine["total"] == 3
    assert [w["withdrawal_id"] for w in mine["withdrawals"]] == [
        w_new["withdrawal_id"],
        w_mid["withdrawal_id"],
        w_old["withdrawal_id"],
    ]
    assert mine["withdrawals"][2]["requested_at"] == "2023-11-14T22:13:20.000Z"
    assert (
        api.get(W_TEMPLATE, f"/api/distributors/{who}/withdrawals?limit=1", OPERATOR)["withdrawals"][0]["status"]
        == "requested"
    )
    q = api.get("/api/operator/withdrawals", "/api/operator/withdrawals?limit=3", OPERATOR)
    assert [w["withdrawal_id"] for w in q["withdrawals"]] == [
        w_old["withdrawal_id"],
        w_other["withdrawal_id"],
        w_new["withdrawal_id"],
    ]
    assert q["total"] >= 3
    api.get(W_TEMPLATE, f"/api/distributors/{who}/withdrawals?limit=0", OPERATOR, 400)
    nobody = uid("none")
    empty = {"distributor_id": nobody, "total": 0, "withdrawals": []}
    assert api.get(W_TEMPLATE, f"/api/distributors/{nobody}/withdrawals", OPERATOR) == empty
