"""The operator CLI against a real HTTP server on 127.0.0.1 that speaks the write API of the brief and records requests.

The stub keeps its own idempotency table (same key + same body -> 202 with the same id and the
Idempotent-Replayed header, same key + other body -> 409), checks the bearer token with the real
streams.api.auth, and answers the leaderboard report with a hand-made table.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from streams import cli, names
from streams.api import auth
from streams.ops import operator_cli as ops_cli
from streams.settings import get_settings

KEY = "test-ops-key-0123456789"


def withdrawal(
    wid: str, user: str, cents: int, channel: str | None, status: str, at: int, **more: int
) -> dict[str, Any]:
    """A withdrawal state as common.md lays it out in fx:w:<id>."""
    state = {"withdrawal_id": wid, "distributor_id": user, "amount_cents": cents, "channel": channel, "status": status}
    return state | {
        "requested_ts": at,
        "updated_ts": at + 1000,
        "fee_cents": more.get("fee"),
        "payout_cents": more.get("payout"),
    }


OPEN = [
    withdrawal("wd-1", "u1", 5000, "alipay", "requested", 1_796_169_600_000),
    withdrawal("wd-2", "u2", 12345, None, "approved", 1_796_169_660_000),
]
CLOSED = withdrawal("wd-0", "u1", 300, "bank", "paid", 1_796_160_000_000, fee=10, payout=290)


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Stub:
    """The write API of the brief, in memory."""

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    board: list[dict[str, Any]] = field(default_factory=list)
    writes: list[tuple[str, Any]] = field(default_factory=list)  # what the API would have produced
    old_worker: bool = False  # a worker without the write API: aiohttp's plain-text 404 for every write path

    def posts(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST"]

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(
            Seen(request.method, request.path, request.raw_path, dict(request.query), dict(request.headers), body)
        )
        try:
            principal = auth.verify(KEY, request.headers.get("Authorization", "").removeprefix("Bearer "))
        except auth.AuthError as e:
            return web.json_response({"error": str(e)}, status=401)
        if principal.role != auth.OPERATOR:
            return web.json_response({"error": "operators only"}, status=403)
        if request.path == "/api/operator/distributors/u-bad/status":
            return web.json_response({"error": "status must be one of [active, frozen] [/x]"}, status=400)
        if self.old_worker and request.path.startswith("/api/operator/"):
            return web.Response(text="404: Not Found", status=404)
        parts = request.path.strip("/").split("/")
        if request.method == "GET":
            if request.path == "/api/operator/withdrawals":
                return web.json_response({"withdrawals": OPEN})
            if parts[:2] == ["api", "distributors"] and parts[3:] == ["withdrawals"]:
                return web.json_response([w for w in [CLOSED, *OPEN] if w["distributor_id"] == parts[2]])
            if request.path == "/reports/leaderboard":
                limit = int(request.query["limit"])
                return web.json_response({"report": "leaderboard", "rows": self.board[:limit]})
            return web.json_response({"error": "no such page"}, status=404)
        if parts[:3] == ["api", "operator", "withdrawals"] and parts[3] not in {w["withdrawal_id"] for w in OPEN}:
            return web.json_response({"error": f"unknown withdrawal {parts[3]}"}, status=404)
        key = request.headers.get("Idempotency-Key")
        if not key or not ops_cli.KEY_PATTERN.fullmatch(key):
            return web.json_response({"error": "Idempotency-Key header required"}, status=400)
        digest = hashlib.sha256(request.method.encode() + request.path.encode() + raw).hexdigest()
        if key in self.keys:
            if self.keys[key][0] != digest:
                return web.json_response({"error": "key used with another body"}, status=409)
            return web.json_response(
                {"id": self.keys[key][1], "topic": "t", "event_id": "e"}, status=202,
                headers={ops_cli.REPLAYED_HEADER: "true"},
            )  # fmt: skip
        self.keys[key] = (digest, key)
        self.writes.append((request.path, body))
        return web.json_response({"id": key, "topic": "t", "event_id": f"api-{key}"}, status=202)


@pytest.fixture()
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stub]:
    """The stub on a free port in its own thread (the CLI under test is synchronous)."""
    s = Stub()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", s.handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    s.url = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(names.ENV_API_URL, s.url)
    monkeypatch.setenv(names.ENV_TOKEN_KEY, KEY)
    monkeypatch.delenv(names.ENV_TOKEN, raising=False)
    monkeypatch.setenv("COLUMNS", "220")
    get_settings.cache_clear()
    yield s
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()
    get_settings.cache_clear()


def run(*argv: str) -> int:
    return cli.main(list(argv))


def test_approve_sends_a_deterministic_key_the_operator_token_and_the_reason(stub: Stub) -> None:
    assert run("withdrawals", "approve", "wd-1", "--reason", "checked the account") == 0
    (req,) = stub.posts()
    assert req.path == "/api/operator/withdrawals/wd-1/approve"
    assert req.headers["Idempotency-Key"] == "wd-1:approve"
    assert req.headers["Content-Type"] == "application/json"
    principal = auth.verify(KEY, req.headers["Authorization"].removeprefix("Bearer "))
    assert principal.role == auth.OPERATOR and principal.subject
    assert req.body == {"reason": "checked the account"}


@pytest.mark.parametrize("action", ["approve", "reject", "paid", "failed"])
def test_each_step_posts_its_own_path_and_a_repeat_produces_nothing(
    stub: Stub, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("withdrawals", action, "wd-2") == 0
    assert run("withdrawals", action, "wd-2") == 0
    assert [(r.path, r.headers["Idempotency-Key"], r.body) for r in stub.posts()] == [
        (f"/api/operator/withdrawals/wd-2/{action}", f"wd-2:{action}", {})
    ] * 2
    assert stub.writes == [(f"/api/operator/withdrawals/wd-2/{action}", {})]
    assert "already sent earlier" in capsys.readouterr().out


def test_a_repeat_with_another_reason_is_a_409_that_says_so(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("withdrawals", "reject", "wd-1", "--reason", "name mismatch") == 0
    assert run("withdrawals", "reject", "wd-1", "--reason", "other") == 2
    err = capsys.readouterr().err
    assert "wd-1:reject" in err and "already used for another request" in err and "same --reason" in err
    assert len(stub.writes) == 1


def test_an_unknown_withdrawal_is_a_404_that_points_at_the_list(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("withdrawals", "paid", "wd-nope") == 2
    err = capsys.readouterr().err
    assert "unknown withdrawal wd-nope" in err and "fenxiao withdrawals list" in err
    assert stub.writes == []


def test_an_id_outside_the_key_alphabet_gets_a_stable_hashed_key(stub: Stub) -> None:
    assert run("withdrawals", "approve", "wd 1/零") == 2  # the stub does not know it: 404, but the request went out
    assert run("withdrawals", "approve", "wd 1/零") == 2
    first, second = stub.posts()
    assert first.raw_path == "/api/operator/withdrawals/wd%201%2F%E9%9B%B6/approve"
    want = "h:" + hashlib.sha256("wd 1/零:approve".encode()).hexdigest()
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == want


def test_list_shows_the_queue_and_filters_by_status(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("withdrawals", "list") == 0
    out = capsys.readouterr().out
    assert stub.requests[-1].path == "/api/operator/withdrawals"
    assert "wd-1" in out and "wd-2" in out and "¥50.00" in out and "¥123.45" in out and "2 withdrawal(s)" in out
    assert "2026-12-02 00:00:00Z" in out  # requested_ts 1796169600000 ms
    assert run("withdrawals", "list", "--status", "approved") == 0
    out = capsys.readouterr().out
    assert "wd-2" in out and "wd-1" not in out and "1 withdrawal(s)" in out


def test_list_of_one_distributor_shows_closed_ones_with_fee_and_payout(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("withdrawals", "list", "--distributor", "u1", "--status", "paid") == 0
    out = capsys.readouterr().out
    assert stub.requests[-1].path == "/api/distributors/u1/withdrawals"
    assert "wd-0" in out and "¥0.10" in out and "¥2.90" in out and "wd-1" not in out


def test_closed_statuses_without_a_distributor_are_refused_before_any_request(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("withdrawals", "list", "--status", "paid") == 2
    assert "--distributor" in capsys.readouterr().err
    assert run("withdrawals", "list", "--status", "pending") == 2
    assert "requested, approved, rejected, paid, failed" in capsys.readouterr().err
    assert stub.requests == []


def test_set_status_posts_the_status_and_reason_with_a_fresh_key_each_time(stub: Stub) -> None:
    assert run("distributors", "set-status", "u7", "frozen", "--reason", "chargebacks") == 0
    assert run("distributors", "set-status", "u7", "active") == 0
    assert run("distributors", "set-status", "u7", "frozen", "--reason", "chargebacks") == 0
    posts = stub.posts()
    assert [(r.path, r.body) for r in posts] == [
        ("/api/operator/distributors/u7/status", {"status": "frozen", "reason": "chargebacks"}),
        ("/api/operator/distributors/u7/status", {"status": "active"}),
        ("/api/operator/distributors/u7/status", {"status": "frozen", "reason": "chargebacks"}),
    ]
    keys = [r.headers["Idempotency-Key"] for r in posts]
    assert len(set(keys)) == 3  # freeze, restore, freeze again: the second freeze is not swallowed as a replay
    assert len(stub.writes) == 3


def test_adjust_posts_signed_cents_and_a_rerun_posts_nothing_new(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("adjust", "u1", "-300", "--reason", "duplicate bonus") == 0
    assert run("adjust", "u1", "-300", "--reason", "duplicate bonus") == 0
    first, second = stub.posts()
    assert first.path == "/api/operator/adjustments"
    assert first.body == {"distributor_id": "u1", "amount_cents": -300, "reason": "duplicate bonus"}
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert len(stub.writes) == 1
    out = capsys.readouterr().out
    assert "-¥3.00" in out and "already posted earlier" in out
    assert run("adjust", "u1", "-300", "--reason", "duplicate bonus", "--key", "adj-2") == 0
    assert stub.posts()[-1].headers["Idempotency-Key"] == "adj-2" and len(stub.writes) == 2


@pytest.mark.parametrize("cents", ["3.5", "0", "1e3", "10000000000001", "¥5", "-0", "+5"])
def test_adjust_refuses_cents_that_are_not_whole_non_zero_and_bounded(
    stub: Stub, cents: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("adjust", "u1", cents, "--reason", "x") == 2
    assert "cents" in capsys.readouterr().err
    assert stub.requests == []


BOARD = [
    {"rank": 1, "distributor": "u9", "earnings_cents": 80000, "gmv_cents": 900000},
    {"rank": 2, "distributor": "u10", "earnings_cents": 80000, "gmv_cents": 700000},  # tied with u9: report's order
    {"rank": 3, "distributor": "u3", "earnings_cents": 1500, "gmv_cents": 10000},
    {"rank": 4, "distributor": "u4", "earnings_cents": 0, "gmv_cents": 0},
]


def test_awards_pay_the_leaderboard_in_its_own_order_with_rank_ids(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.board = BOARD
    assert run("awards", "issue", "--period", "2026-11", "--metric", "earnings", "--amounts", "20000,10000,5000") == 0
    get = stub.requests[0]
    assert (get.method, get.path) == ("GET", "/reports/leaderboard")
    assert get.query == {"period": "month", "at": "2026-11", "metric": "earnings", "limit": "3"}
    assert [(r.headers["Idempotency-Key"], r.body) for r in stub.posts()] == [
        (f"award:2026-11:earnings:{rank}", {"distributor_id": who, "amount_cents": cents, "reason": reason})
        for rank, who, cents, reason in [
            (1, "u9", 20000, "award: #1 of 2026-11 by earnings"),
            (2, "u10", 10000, "award: #2 of 2026-11 by earnings"),
            (3, "u3", 5000, "award: #3 of 2026-11 by earnings"),
        ]
    ]
    out = capsys.readouterr().out
    assert out.count(" new ") == 3 and "already issued" not in out

    assert run("awards", "issue", "--period", "2026-11", "--metric", "earnings", "--amounts", "20000,10000,5000") == 0
    out = capsys.readouterr().out
    assert out.count("already issued") == 3 and " new " not in out
    assert len(stub.writes) == 3


def test_awards_by_sales_in_a_quarter_use_the_gmv_leaderboard(stub: Stub) -> None:
    stub.board = [BOARD[0], BOARD[2], BOARD[1]]  # as a gmv leaderboard would order them
    assert run("awards", "issue", "--period", "2026Q4", "--metric", "sales", "--amounts", "300,200") == 0
    assert stub.requests[0].query == {"period": "quarter", "at": "2026-Q4", "metric": "gmv", "limit": "2"}
    assert [(r.headers["Idempotency-Key"], r.body["distributor_id"], r.body["amount_cents"]) for r in stub.posts()] == [
        ("award:2026Q4:sales:1", "u9", 300),
        ("award:2026Q4:sales:2", "u3", 200),
    ]


def test_fewer_distributors_with_a_score_than_amounts_leaves_ranks_unpaid(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.board = [BOARD[2], BOARD[3]]  # one positive, one with nothing earned
    assert run("awards", "issue", "--period", "2026-11", "--amounts", "20000,10000,5000") == 0
    assert [r.body["distributor_id"] for r in stub.posts()] == ["u3"]
    out = capsys.readouterr().out
    assert out.count("nobody") == 2


def test_dry_run_reads_the_board_and_pays_nothing(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.board = BOARD
    assert run("awards", "issue", "--period", "2026-11", "--amounts", "20000", "--dry-run") == 0
    assert stub.posts() == []
    out = capsys.readouterr().out
    assert "would issue" in out and "u9" in out and "¥200.00" in out


def test_a_changed_leaderboard_cannot_pay_a_rank_twice(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.board = BOARD
    assert run("awards", "issue", "--period", "2026-11", "--amounts", "20000") == 0
    stub.board = [BOARD[2]]  # late events moved u3 to the top
    assert run("awards", "issue", "--period", "2026-11", "--amounts", "20000") == 2
    captured = capsys.readouterr()
    assert "CONFLICT" in captured.out and "nothing was paid" in captured.err
    assert stub.writes == [("/api/operator/adjustments", BOARD_FIRST)]


BOARD_FIRST = {"distributor_id": "u9", "amount_cents": 20000, "reason": "award: #1 of 2026-11 by earnings"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--period", "2026-13", "--amounts", "1"], "--period must be"),
        (["--period", "2026Q5", "--amounts", "1"], "--period must be"),
        (["--period", "2026-11", "--amounts", "100,,50"], "--amounts must be"),
        (["--period", "2026-11", "--amounts", "99.5"], "whole cents"),
    ],
)
def test_award_flags_are_checked_before_any_request(
    stub: Stub, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("awards", "issue", *args) == 2
    assert needle in capsys.readouterr().err
    assert stub.requests == []


def test_a_wrong_token_names_the_token_env(
    stub: Stub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(names.ENV_TOKEN, auth.issue("another-key", auth.OPERATOR, None, 60))
    assert run("withdrawals", "list") == 2
    err = capsys.readouterr().err
    assert "401" in err and names.ENV_TOKEN in err and names.ENV_TOKEN_KEY in err


def test_a_given_token_is_sent_as_is(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    token = auth.issue(KEY, auth.OPERATOR, "alice", 60)
    monkeypatch.setenv(names.ENV_TOKEN, token)
    assert run("withdrawals", "approve", "wd-1") == 0
    assert stub.posts()[0].headers["Authorization"] == f"Bearer {token}"


def test_a_distributor_token_is_refused_with_the_fix(
    stub: Stub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(names.ENV_TOKEN, auth.issue(KEY, auth.DISTRIBUTOR, "u1", 60))
    assert run("withdrawals", "approve", "wd-1") == 2
    assert "403" in (err := capsys.readouterr().err) and "operator token" in err


def test_no_api_names_the_worker_and_the_url_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.ops.stack import pick_free_ports

    (port,) = pick_free_ports(1)
    monkeypatch.setenv(names.ENV_API_URL, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("COLUMNS", "220")
    assert run("withdrawals", "list") == 2
    err = capsys.readouterr().err
    assert "is `fenxiao worker` running?" in err and names.ENV_API_URL in err


def test_the_default_api_is_the_local_web_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.delenv(names.ENV_API_URL, raising=False)
    monkeypatch.setenv(names.ENV_WEB_PORT, "7123")
    get_settings.cache_clear()
    try:
        assert ops_cli.api_from_args(argparse.Namespace(api=None)).base == "http://127.0.0.1:7123"
        assert ops_cli.api_from_args(argparse.Namespace(api="http://10.0.0.5:80")).base == "http://10.0.0.5:80"
    finally:
        get_settings.cache_clear()


def test_a_worker_without_the_write_api_is_not_mistaken_for_an_unknown_id(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.old_worker = True
    assert run("withdrawals", "approve", "wd-1") == 2
    err = capsys.readouterr().err
    assert "has no POST /api/operator/withdrawals/wd-1/approve (404)" in err and names.ENV_API_URL in err
    assert "check the id" not in err


def test_the_api_error_text_is_shown_as_is_even_with_brackets(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("distributors", "set-status", "u-bad", "frozen") == 2
    assert "400: status must be one of [active, frozen] [/x]" in capsys.readouterr().err
