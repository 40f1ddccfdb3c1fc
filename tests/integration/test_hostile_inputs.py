"""Hostile values through every API and report parameter are data, and tokens guard every path (issue #6).

One worker applies the basic example; every path, query and header parameter of docs/openapi.yaml and
every report parameter (the worker's /reports page and `fenxiao report`) then gets quotes, SQL, NUL,
CR/LF, RTL and emoji text, 10,000-character ids, path traversal, Redis glob patterns and bad numbers and
dates. Each answer must be a 4xx with a JSON error or a correct (usually empty) result: never a 5xx or a
traceback, no Redis key created or removed by a read, the worker still running, and (the last test,
which stops the worker and opens its chDB) every ClickHouse table still there with the same row count.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jsonschema
import pytest
import yaml

from streams import names
from streams.api import auth
from streams.cli import build_parser
from streams.sinks import reports
from streams.sinks.clickhouse import ChdbBackend
from tests.integration import scenario
from tests.integration.scenario import Env, WorkerProcess

EXAMPLE = "basic"
ME, OTHER, CAMPAIGN = "u1-1", "u1-0", "d11"
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())

HOSTILE = [
    "'",
    '"',
    "\\",
    "'; DROP TABLE ledger_entries; --",
    "'; DROP TABLE ledger; --",
    "x' OR '1'='1",
    '"; FLUSHALL; "',
    "{id:String}",
    "\0",
    "u1-0\0",
    "%00",
    "a\r\nX-Injected: 1",
    "1-1\n",
    "u1-0\n",
    "\u202egnp.exe",
    "🙂🔥分销",
    "a" * 10_000,
    "b" * 4_000,
    "../../../etc/passwd",
    "..",
    "*",
    "?",
    "[a-z]*",
    "fx:*",
    "u1-*",
    "-1",
    "0",
    "99999999999999999999999",
    "1e3",
    "²",
    "１２",
    "NaN",
    "0-0",
    "18446744073709551616-0",
    "99999999999999999999-99999999999999999999",
    "2026-13-45",
    "0000-01",
    "9999-12",
    "0000-01-01",
    " ",
]
PATH_HOSTILE = [v for v in HOSTILE if v.strip() not in ("", ".", "..")]
SHORT_HOSTILE = [v for v in PATH_HOSTILE if len(v) < 1000]
FRAMEWORK_REFUSALS = (400, 404, 414, 431)


# ---- a raw HTTP client: any bytes in the path and headers, as an attacker would send them -----------------


@dataclass
class Answer:
    """One HTTP response: status, content type, body (for an event stream only its first bytes)."""

    status: int
    ctype: str
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def request(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 20.0) -> Answer:
    """GET path over a plain socket (the path must already be percent-encoded; header values go as UTF-8 bytes)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        got = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        ctype = got.get("content-type", "")
        if ctype.startswith("text/event-stream"):
            deadline = time.monotonic() + timeout
            while b"retry:" not in body and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        else:
            while chunk := s.recv(65536):
                body += chunk
            if got.get("transfer-encoding") == "chunked":
                body = _unchunk(body)
    return Answer(int(status_line.split()[1]), ctype, body)


def _unchunk(data: bytes) -> bytes:
    """A chunked body's payload."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def token(subject: str | None, ttl: int = 600) -> str:
    """A test-key token: operator when subject is None, else that distributor's."""
    return auth.issue(scenario.TEST_TOKEN_KEY, auth.DISTRIBUTOR if subject else auth.OPERATOR, subject, ttl)


def bearer(tok: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {tok}"}


# ---- what the spec says ------------------------------------------------------------------------------------


def _resolve(param: dict[str, Any]) -> dict[str, Any]:
    """A parameter object with its $ref followed."""
    if "$ref" in param:
        resolved: dict[str, Any] = SPEC["components"]["parameters"][param["$ref"].rsplit("/", 1)[1]]
        return resolved
    return param


def spec_parameters() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(path template, in, name) -> schema for every parameter of every GET in docs/openapi.yaml.

    The POSTs' parameters and bodies get their hostile values in test_api_writes.py; /reports/{name}'s in
    the report tests below (READS).
    """
    out = {}
    for template, item in SPEC["paths"].items():
        if template == "/reports/{name}":
            continue
        for method, op in item.items():
            if method != "get":
                continue
            for param in op.get("parameters", []):
                p = _resolve(param)
                out[(template, p["in"], p["name"])] = p.get("schema", {})
    return out


def check_schema(template: str, answer: Answer) -> None:
    """A JSON body against the spec's schema for its path and status."""
    resp = SPEC["paths"][template]["get"]["responses"][str(answer.status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = {"components": SPEC["components"], **resp["content"]["application/json"]["schema"]}
    jsonschema.Draft202012Validator(schema).validate(answer.json())


def assert_data(
    what: str, answer: Answer, want: int | tuple[int, ...] | None = None, framework_ok: bool = False
) -> None:
    """No 5xx, no traceback; an error is JSON {"error": text}; and the status is `want` when given.

    framework_ok: the request may be refused before any handler (an oversized line or header, a path no
    route matches), with aiohttp's own short plain-text 4xx.
    """
    shown = f"{what[:160]!r}: {answer.status} {answer.ctype} {answer.body[:300]!r}"
    assert answer.status < 500, shown
    assert b"Traceback" not in answer.body and b'File "' not in answer.body, shown
    if framework_ok and answer.status in FRAMEWORK_REFUSALS and not answer.ctype.startswith("application/json"):
        assert answer.ctype.startswith("text/plain") and len(answer.body) < 1000, shown
        return
    if answer.status >= 400:
        assert answer.ctype.startswith("application/json"), shown
        body = answer.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], shown
    if want is not None:
        assert answer.status in ((want,) if isinstance(want, int) else want), shown


# ---- expectations per parameter: derived from the value, so a wrong 200 fails as surely as a 500 ----------------


def _int_ok(lo: int, hi: int) -> Callable[[str], bool]:
    def ok(v: str) -> bool:
        if v == "":
            return True
        try:
            return lo <= int(v) <= hi
        except ValueError:
            return False

    return ok


def _stream_id_ok(v: str) -> bool:
    if v == "":
        return True
    parts = v.split("-")
    return len(parts) == 2 and all(p.isascii() and p.isdigit() and len(p) <= 20 and int(p) < 2**64 for p in parts)


def _date_ok(v: str) -> bool:
    from datetime import date

    if v == "":
        return True
    try:
        return len(v) == 10 and v.isascii() and date.fromisoformat(v).year >= 1
    except ValueError:
        return False


def _always(_: str) -> bool:
    return True


def _never(_: str) -> bool:
    return False


def _one_of(*allowed: str) -> Callable[[str], bool]:
    return lambda v: v in ("", *allowed)


@dataclass(frozen=True)
class Target:
    """How to send one spec parameter: the request path around it, and which values must be accepted."""

    path: str  # with {id} for the distributor or campaign, {q} for the query string
    accepted: Callable[[str], bool]
    refused_status: int = 400
    accepted_status: int = 200


D = "/api/distributors/{id}"
TARGETS: dict[tuple[str, str, str], Target] = {
    ("/api/distributors/{id}", "path", "id"): Target(D, _never, 404),
    ("/api/distributors/{id}/ledger", "path", "id"): Target(D + "/ledger", _always),
    ("/api/distributors/{id}/ledger", "query", "cursor"): Target(D + "/ledger?{q}", _stream_id_ok),
    ("/api/distributors/{id}/ledger", "query", "limit"): Target(D + "/ledger?{q}", _int_ok(1, 200)),
    ("/api/distributors/{id}/team", "path", "id"): Target(D + "/team", _always),
    ("/api/distributors/{id}/team", "query", "cursor"): Target(D + "/team?{q}", _always),
    ("/api/distributors/{id}/team", "query", "level"): Target(D + "/team?{q}", _int_ok(1, 3)),
    ("/api/distributors/{id}/team", "query", "limit"): Target(D + "/team?{q}", _int_ok(1, 500)),
    ("/api/distributors/{id}/feed", "path", "id"): Target(D + "/feed", _always),
    ("/api/distributors/{id}/feed", "header", "Last-Event-ID"): Target(D + "/feed", _stream_id_ok),
    ("/api/distributors/{id}/feed", "query", "backlog"): Target(D + "/feed?{q}", _int_ok(0, 200)),
    ("/api/distributors/{id}/feed", "query", "token"): Target(D + "/feed?{q}", _never, 401),
    ("/api/leaderboard", "query", "period"): Target("/api/leaderboard?{q}", _one_of("day", "month", "quarter", "all")),
    ("/api/leaderboard", "query", "metric"): Target("/api/leaderboard?{q}", _one_of("earnings", "gmv", "recruits")),
    ("/api/leaderboard", "query", "campaign"): Target("/api/leaderboard?{q}", _always),
    ("/api/leaderboard", "query", "at"): Target("/api/leaderboard?{q}", _date_ok),
    ("/api/leaderboard", "query", "limit"): Target("/api/leaderboard?{q}", _int_ok(1, 100)),
    ("/api/distributors/{id}/share", "path", "id"): Target(D + "/share", _never, 404),
    ("/api/distributors/{id}/share", "query", "campaign"): Target(D + "/share?{q}", _always),
    ("/api/distributors/{id}/share", "query", "product"): Target(D + "/share?{q}", _always),
    ("/api/distributors/{id}/share.png", "path", "id"): Target(D + "/share.png", _never, 404),
    ("/api/distributors/{id}/share.png", "query", "campaign"): Target(D + "/share.png?{q}", lambda v: len(v) < 1000),
    ("/api/distributors/{id}/share.png", "query", "product"): Target(D + "/share.png?{q}", lambda v: len(v) < 1000),
    ("/api/live", "query", "window"): Target("/api/live?{q}", _int_ok(10, 3600)),
    ("/api/campaigns/{id}/live", "path", "id"): Target("/api/campaigns/{id}/live", _always),
    ("/api/campaigns/{id}/live", "query", "window"): Target("/api/campaigns/{id}/live?{q}", _int_ok(10, 3600)),
    ("/dashboard", "query", "token"): Target("/dashboard?{q}", _never, 401),
    ("/api/distributors/{id}/withdrawals", "path", "id"): Target(D + "/withdrawals", _always),
    ("/api/distributors/{id}/withdrawals", "query", "limit"): Target(D + "/withdrawals?{q}", _int_ok(1, 500)),
    ("/api/operator/withdrawals", "query", "limit"): Target("/api/operator/withdrawals?{q}", _int_ok(1, 500)),
    ("/api/operator/audit", "query", "cursor"): Target("/api/operator/audit?{q}", _stream_id_ok),
    ("/api/operator/audit", "query", "limit"): Target("/api/operator/audit?{q}", _int_ok(1, 500)),
}


def test_every_openapi_parameter_has_a_hostile_target() -> None:
    """A parameter added to docs/openapi.yaml without a row in TARGETS fails here (and a stale row too)."""
    assert set(spec_parameters()) == set(TARGETS)


# ---- the worker ----------------------------------------------------------------------------------------------------


class Hostile:
    """The worker that applied the example, its Redis and its chDB's row counts before any hostile request."""

    def __init__(self, env: Env, worker: WorkerProcess, counts: dict[str, int]) -> None:
        import redis

        self.env, self.worker, self.port, self.counts = env, worker, env.web_port, counts
        self.redis = redis.Redis.from_url(env.stack.redis_url)
        self.keys = self.key_snapshot()

    def key_snapshot(self) -> set[bytes]:
        """Every Redis key but the per-second live counters and the leases, which expire and return on their own."""
        leases = {names.KEY_LEASE.encode(), names.KEY_PJ_LEASE.encode()}
        return {
            k for k in self.redis.scan_iter(count=5000) if not k.startswith(names.KEY_LIVE.encode()) and k not in leases
        }

    def get(self, path: str, tok: str | None = "", headers: dict[str, str] | None = None) -> Answer:
        """GET with the operator token (tok ""), no token (None) or tok."""
        auth_header = {} if tok is None else bearer(tok or token(None, 60))
        return request(self.port, path, {**auth_header, **(headers or {})})

    def assert_untouched(self) -> None:
        """The worker runs and answers, and no read created or removed a Redis key."""
        assert self.worker.proc is not None and self.worker.proc.poll() is None, self.worker.log_tail()
        assert request(self.port, "/health").status == 200
        after = self.key_snapshot()
        assert after == self.keys, f"created {sorted(after - self.keys)[:5]}, removed {sorted(self.keys - after)[:5]}"
        assert not [k for k in after if b"DROP" in k or b"\0" in k or b"Injected" in k]


def _table_counts(data_dir: Path) -> dict[str, int]:
    """Row count of every table in the fenxiao database of an embedded chDB."""
    with ChdbBackend(data_dir) as ch:
        tables = [str(r[0]) for r in ch.query("SELECT name FROM system.tables WHERE database = 'fenxiao'")]
        return {t: int(ch.query(f"SELECT count() FROM `{t}`")[0][0]) for t in tables}


def chdb_dir(env: Env) -> Path:
    """The worker's embedded ClickHouse data directory (FENXIAO_VAR_DIR/clickhouse)."""
    return Path(env.env["FENXIAO_VAR_DIR"]) / "clickhouse"


@pytest.fixture(scope="module")
def hostile(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """Apply the example, stop to count chDB rows, restart the worker; the tests below only read."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = scenario.fresh_env(stack, tmp, "hostile")
    port = env.web_port
    w = env.worker(EXAMPLE)
    try:
        env.produce(scenario.load_records(EXAMPLE))
        _, diff = env.outcome(scenario.load_expected(EXAMPLE))
        assert not diff, "\n".join(diff) + "\n" + w.log_tail()
        scenario.wait_sink_quiet(port, quiet_s=2.0, timeout=60)
    finally:
        assert w.stop() == 0, w.log_tail()
    counts = _table_counts(chdb_dir(env))
    assert counts.get("ledger_entries", 0) > 0, counts
    w = env.worker(EXAMPLE)
    try:
        yield Hostile(env, w, counts)
    finally:
        w.stop()
        shutil.rmtree(tmp / "var", ignore_errors=True)


def _fill(target: Target, location: str, name: str, value: str) -> tuple[str, dict[str, str]]:
    """The request path and extra headers that carry value in parameter name."""
    subject = CAMPAIGN if target.path.startswith("/api/campaigns") else OTHER
    if location == "path":
        return target.path.format(id=quote(value, safe=""), q=""), {}
    path = target.path.format(id=subject, q="")
    if location == "header":
        return path, {name: value}
    return target.path.format(id=subject, q=f"{name}={quote(value, safe='')}"), {}


def _sse_token() -> str:
    """Feeds run until the token expires: a short one ends the streams these tests leave open."""
    return token(None, 5)


@pytest.mark.parametrize("key", sorted(TARGETS), ids=lambda k: f"{k[0]}:{k[2]}")
def test_hostile_api_parameter_is_data(hostile: Hostile, key: tuple[str, str, str]) -> None:
    """Every hostile value in this parameter is refused with a JSON 4xx, or answered correctly."""
    template, location, name = key
    target = TARGETS[key]
    values = PATH_HOSTILE if location == "path" else HOSTILE
    if location == "header":
        values = [v for v in values if v == v.strip() and "\r" not in v and "\n" not in v and "\0" not in v]
    for value in values:
        path, headers = _fill(target, location, name, value)
        tok = None if name == "token" else (_sse_token() if "feed" in template else "")
        answer = hostile.get(path, tok, headers)
        want = target.accepted_status if target.accepted(value) else target.refused_status
        assert_data(f"{path} {headers}", answer, want, framework_ok=location == "path" or len(value) > 8000)
        if answer.ctype.startswith("application/json"):
            check_schema(template, answer)
        _check_accepted(template, location, name, value, answer)
    hostile.assert_untouched()


def _check_accepted(template: str, location: str, name: str, value: str, answer: Answer) -> None:
    """A hostile value that was accepted is only data: it matched nothing, or came back verbatim."""
    if answer.status != 200:
        return
    if answer.ctype.startswith("text/event-stream"):
        assert b"retry: 1000\n\n" in answer.body[:40], answer.body[:200]
        return
    if answer.ctype == "image/png":
        assert answer.body.startswith(b"\x89PNG\r\n\x1a\n")
        return
    data = answer.json()
    if location == "path" and template.startswith("/api/distributors"):
        assert data["distributor_id"] == value
        assert data.get("entries", []) == [] and data.get("members", []) == [] and data.get("size", 0) == 0
        assert data.get("withdrawals", []) == []
    if location == "path" and template.startswith("/api/campaigns"):
        assert data["campaign"] == value and data["orders"] == 0 and data["top_earners"] == []
    if template == "/api/leaderboard" and name == "campaign" and value:
        assert data["campaign"] == value and data["entries"] == []
    if template.endswith("/share"):
        query = parse_qs(urlsplit(data["url"]).query, keep_blank_values=True)
        assert query["ref"] == [OTHER]
        if value:
            assert query[name] == [value]
        qr = urlsplit(data["qr_png"])
        assert qr.path == f"/api/distributors/{OTHER}/share.png"
        if value:
            assert parse_qs(qr.query)[name] == [value]


def test_hostile_ids_in_the_distributors_own_token_read_nothing_else(hostile: Hostile) -> None:
    """A distributor whose own id is hostile (glob, quote, NUL) reads only that id: empty, never someone else's."""
    for value in SHORT_HOSTILE:
        tok = token(value)
        enc = quote(value, safe="")
        assert_data(value, hostile.get(f"/api/distributors/{enc}", tok), 404, framework_ok=True)
        page = hostile.get(f"/api/distributors/{enc}/ledger", tok)
        assert_data(value, page, 200, framework_ok="{" in value)
        assert page.status == 404 or page.json()["entries"] == []
        assert_data(value, hostile.get(f"/api/distributors/{OTHER}/ledger", tok), 403)
    hostile.assert_untouched()


def test_unmatched_paths_and_traversal_reach_no_handler(hostile: Hostile) -> None:
    """Traversal and encoded slashes in the id never reach another distributor's data or another route."""
    tok = token(ME)
    for path in [
        f"/api/distributors/{ME}/../{OTHER}/ledger",
        f"/api/distributors/{ME}%2F..%2F{OTHER}/ledger",
        f"/api/distributors/..%2F{OTHER}",
        f"/api/distributors/{ME}/ledger/../../{OTHER}/ledger",
        "/api/distributors//ledger",
        "/api/distributors/%2e%2e/ledger",
    ]:
        answer = hostile.get(path, tok)
        assert answer.status < 500 and b"Traceback" not in answer.body, (path, answer)
        if answer.status == 200:
            assert answer.json()["distributor_id"] == ME, (path, answer.body[:200])
            assert all(e["beneficiary_id"] == ME for e in answer.json().get("entries", []))
    hostile.assert_untouched()


def test_a_real_cursor_edge_and_the_first_possible_id(hostile: Hostile) -> None:
    """cursor=0-0 is an empty last page; the largest stream id is a full first page; one past it is a 400."""
    base = f"/api/distributors/{OTHER}/ledger"
    empty = hostile.get(f"{base}?cursor=0-0")
    assert_data("0-0", empty, 200)
    assert empty.json()["entries"] == [] and empty.json()["next_cursor"] is None
    top = f"{2**64 - 1}-{2**64 - 1}"
    full = hostile.get(f"{base}?cursor={top}&limit=5")
    assert_data(top, full, 200)
    assert full.json()["entries"] == hostile.get(f"{base}?limit=5").json()["entries"] != []
    assert_data("past", hostile.get(f"{base}?cursor={2**64}-0"), 400)
    feed = base.replace("ledger", "feed")
    assert_data("resume", hostile.get(f"{feed}?last_event_id=0-0", _sse_token()), 200)
    for bad in ("1-1%0A", "1-1%0D%0Aevent:%20x", f"{2**64}-0", "%EF%BC%91-1"):
        assert_data(bad, hostile.get(f"{feed}?last_event_id={bad}", _sse_token()), 400)


def test_a_share_link_of_an_id_with_url_characters_points_back_at_it(hostile: Hostile) -> None:
    """A user id with ?, #, & and spaces (ids are any text) gets a QR link to its own share.png, not a cut-off one."""
    odd = "a?b#c&d e%"
    key = names.KEY_USER + odd
    hostile.redis.hset(key, mapping={"d": "1", "t": "1"})
    try:
        share = hostile.get(f"/api/distributors/{quote(odd, safe='')}/share?campaign=x%26y")
        assert_data(odd, share, 200)
        data = share.json()
        assert parse_qs(urlsplit(data["url"]).query) == {"ref": [odd], "campaign": ["x&y"]}
        png = hostile.get(data["qr_png"])
        assert png.status == 200 and png.body.startswith(b"\x89PNG"), (data["qr_png"], png)
    finally:
        hostile.redis.delete(key)
    hostile.assert_untouched()


# ---- reports: the worker's /reports/{name} page and `fenxiao report` -------------------------------------------------

READS: dict[str, tuple[str, ...]] = {
    "period": ("leaderboard", "performance", "payouts"),
    "metric": ("leaderboard",),
    "at": ("leaderboard", "performance", "payouts"),
    "campaign": ("funnel",),
    "id": ("campaign",),
    "distributor": ("team", "payouts"),
    "limit": ("leaderboard", "funnel", "refunds"),
}
BASE: dict[str, dict[str, str]] = {"performance": {"at": "2026-11"}, "campaign": {"id": CAMPAIGN}, "team": {}}


def test_every_report_parameter_has_a_hostile_target() -> None:
    """A report parameter (reports.PARAMS, `fenxiao report` options) without a row in READS fails here."""
    assert set(READS) == set(reports.PARAMS)
    assert {r for rs in READS.values() for r in rs} | {"levels"} == set(reports.REPORTS)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["report"]  # type: ignore[union-attr]
    options = {o.lstrip("-") for a in sub._actions for o in a.option_strings} - {"h", "help", "format", "chart"}
    assert options == set(READS)


def _snapshot(hostile: Hostile) -> dict[str, Any]:
    """Every report over all the data, as the worker answers it (drops or writes would change one of them)."""
    out = {}
    for name, params in [
        ("levels", ""),
        ("refunds", "limit=100000"),
        ("funnel", "limit=100000"),
        ("campaign", f"id={CAMPAIGN}"),
        ("team", f"distributor={OTHER}"),
        ("performance", "at=2026-11"),
        ("payouts", ""),
        *((f"leaderboard-{m}", f"at=2026-11&metric={m}&limit=100000") for m in ("earnings", "gmv", "recruits")),
    ]:
        answer = hostile.get(f"/reports/{name.split('-')[0]}?{params}")
        assert answer.status == 200, (name, answer.body[:300], hostile.worker.log_tail())
        out[name] = answer.json()
    return out


def test_hostile_report_parameters_are_data(hostile: Hostile) -> None:
    """Each report parameter of each report that reads it, and the report name: a JSON 400 or a correct answer."""
    before = _snapshot(hostile)
    assert before["levels"]["rows"] and before["refunds"]["rows"]
    for value in HOSTILE:
        enc = quote(value, safe="")
        for param, names_ in READS.items():
            for name in names_:
                base = {**BASE.get(name, {})}
                base[param] = value
                query = "&".join(f"{k}={quote(v, safe='')}" for k, v in base.items())
                answer = hostile.get(f"/reports/{name}?{query}")
                assert_data(f"{name} {param}={value}", answer, (200, 400), framework_ok=len(value) > 8000)
                if answer.status == 200 and param in ("campaign", "id", "distributor") and value.strip():
                    rows = answer.json()["rows"]
                    assert rows == [] or all(r.get("clicks") == 0 and r.get("first_orders") == 0 for r in rows)
                    assert answer.json()["params"][param] == value
        name_path = f"/reports/{enc}" if value.strip(". ") else "/reports/x"
        assert_data(value, hostile.get(name_path), 400, framework_ok=True)
        assert_data(value, hostile.get(f"/reports/levels?{enc or 'x'}=1"), 400, framework_ok=len(value) > 8000)
    assert _snapshot(hostile) == before
    hostile.assert_untouched()


def test_reports_need_the_operator_token(hostile: Hostile) -> None:
    """A distributor, an expired, a forged or no token cannot run a report."""
    for tok, status in [
        (token(ME), 403),
        (token(None, -5), 401),
        (auth.issue("not-the-key", auth.OPERATOR, None, 600), 401),
        (None, 401),
        ("fx1.é.é", 401),
    ]:
        assert_data(str(tok), hostile.get("/reports/levels", tok), status)


def _cli_report(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """`fenxiao report ...` in its own process: through the worker's /reports while it holds chDB, else locally."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "report", *args, "--format", "json"],
        env={**os.environ, **env.env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cli_report_options_take_hostile_values_as_data(hostile: Hostile) -> None:
    """Every `fenxiao report` option with a hostile value: a JSON answer or a one-line error, never a traceback."""
    runs: list[tuple[str, ...]] = [
        ("team", "--distributor", "'; DROP TABLE bindings; --"),
        ("campaign", "--id", "x' OR '1'='1\\"),
        ("funnel", "--campaign", "🙂\u202e" * 2000),
        ("leaderboard", "--at", "0000-01"),
        ("performance", "--at", "9999-12", "--period", "quarter"),
        ("refunds", "--limit", "²"),
        ("leaderboard", "--metric", "'; DROP"),
        ("leaderboard", "--period", "*"),
    ]
    assert {a for run in runs for a in run if a.startswith("--")} == {f"--{p}" for p in READS}
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda run: _cli_report(hostile.env, *run), runs))
    for run, r in zip(runs, done, strict=True):
        assert "Traceback" not in r.stderr and r.returncode in (0, 2), (run, r.returncode, r.stderr[-2000:])
        if r.returncode == 0:
            assert json.loads(r.stdout)["rows"] == [], run
        else:
            assert "error" in r.stderr, (run, r.stderr)
    hostile.assert_untouched()


# ---- who may read what ---------------------------------------------------------------------------------------------

PER_DISTRIBUTOR = ["", "/ledger", "/team", "/feed", "/share", "/share.png", "/withdrawals"]
OPERATOR_ONLY = [
    "/status",
    "/api/live",
    f"/api/campaigns/{CAMPAIGN}/live",
    "/api/feed",
    "/reports/levels",
    "/api/operator/withdrawals",
    "/api/operator/audit",
]
# Writes: who may POST them, hostile bodies and idempotency keys are tested in test_api_writes.py.
OPERATOR_WRITES = [
    "/api/operator/withdrawals/{withdrawal_id}/{action}",
    "/api/operator/distributors/{id}/status",
    "/api/operator/adjustments",
]
ANY_TOKEN = ["/api/me", "/api/leaderboard"]


def test_the_lists_cover_every_path_of_the_spec() -> None:
    """Every authenticated path of docs/openapi.yaml is in one of the access lists below."""
    covered = {f"/api/distributors/{{id}}{s}" for s in PER_DISTRIBUTOR} | set(ANY_TOKEN) | {"/dashboard"}
    covered |= {p.replace(CAMPAIGN, "{id}") for p in OPERATOR_ONLY if not p.startswith("/reports")}
    covered |= {"/reports/{name}", *OPERATOR_WRITES}
    assert covered == set(SPEC["paths"]) - {"/health"}


def test_a_distributor_reads_only_their_own_data(hostile: Hostile) -> None:
    """Another distributor's token is 403 on every per-distributor path, by header and by ?token=; its own is 200."""
    mine = token(ME, 5)
    for suffix in PER_DISTRIBUTOR:
        assert_data(suffix, hostile.get(f"/api/distributors/{OTHER}{suffix}", mine), 403)
        assert_data(suffix, hostile.get(f"/api/distributors/{ME}{suffix}", mine), 200)
        for near in (OTHER.upper(), f"{OTHER}%20", f"{OTHER}%00", f"{OTHER}%0A", "u1-%2A", "%2A", "u1-%3F"):
            assert_data(near, hostile.get(f"/api/distributors/{near}{suffix}", mine), 403)
    assert_data("feed ?token=", hostile.get(f"/api/distributors/{OTHER}/feed?token={mine}", None), 403)
    for suffix in PER_DISTRIBUTOR:
        for glob in ("*", "u1-*", "u1-?", "[a-z]*"):
            assert_data(glob, hostile.get(f"/api/distributors/{OTHER}{suffix}", token(glob)), 403)
    hostile.assert_untouched()


def test_query_tokens_only_where_a_browser_cannot_send_headers(hostile: Hostile) -> None:
    """?token= works for the feeds and the dashboard only; everywhere else it is a 401."""
    op = token(None, 5)
    for suffix in ["", "/ledger", "/team", "/share", "/share.png", "/withdrawals"]:
        assert_data(suffix, hostile.get(f"/api/distributors/{ME}{suffix}?token={op}", None), 401)
    for path in [*OPERATOR_ONLY, *ANY_TOKEN]:
        if not path.endswith("/feed"):
            assert_data(path, hostile.get(f"{path}?token={op}", None), 401)
    assert hostile.get(f"/api/feed?token={op}", None).status == 200
    assert hostile.get(f"/dashboard?token={op}", None).status == 200


def test_operator_only_paths_refuse_a_distributor(hostile: Hostile) -> None:
    """Live numbers, the operator feed, the sequencer status and reports need the operator token."""
    mine = token(ME, 5)
    for path in OPERATOR_ONLY:
        assert_data(path, hostile.get(path, mine), 403)
        assert_data(path, hostile.get(path, token(None, 5)), 200)
    assert_data("/api/feed ?token=", hostile.get(f"/api/feed?token={mine}", None), 403)


def _tampered() -> dict[str, str]:
    """Tokens that must all be 401: expired, forged, re-signed claims, stripped, non-ASCII and oversized."""
    good = token(ME)
    prefix, body, sig = good.split(".")
    op_body = auth.issue("attacker", auth.OPERATOR, None, 600).split(".")[1]
    return {
        "expired": token(ME, -1),
        "expired operator": token(None, -1),
        "another key": auth.issue("not-the-key", auth.OPERATOR, None, 600),
        "operator claims, distributor signature": f"{prefix}.{op_body}.{sig}",
        "signature flipped": f"{prefix}.{body}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",
        "no signature": f"{prefix}.{body}.",
        "no body": f"{prefix}..{sig}",
        "version 2": f"fx2.{body}.{sig}",
        "four parts": f"{good}.x",
        "non-ascii signature": f"{prefix}.{body}.{sig[:-1]}é",
        "non-ascii body": f"{prefix}.é{body}.{sig}",
        "nul": f"{good}\0",
        "huge": "fx1." + "A" * 10_000 + "." + sig,
        "sql": "'; DROP TABLE ledger; --",
    }


def test_bad_tokens_are_401_on_every_path(hostile: Hostile) -> None:
    """Missing, expired, forged and tampered tokens: 401 with a JSON error and WWW-Authenticate on every path."""
    paths = [f"/api/distributors/{ME}{s}" for s in PER_DISTRIBUTOR] + OPERATOR_ONLY + ANY_TOKEN
    for path in paths:
        assert_data(f"{path} none", hostile.get(path, None), 401)
        for why, bad in _tampered().items():
            answer = hostile.get(path, bad)
            assert_data(f"{path} {why}", answer, 401, framework_ok=why in ("nul", "huge"))
            assert bad not in answer.body.decode("utf-8", "replace") or len(bad) < 8
    for why, bad in _tampered().items():
        if "\0" not in bad:
            enc = quote(bad, safe="")
            ok = why == "huge"
            assert_data(why, hostile.get(f"/api/distributors/{ME}/feed?token={enc}", None), 401, framework_ok=ok)
            assert_data(why, hostile.get(f"/dashboard?token={enc}", None), 401, framework_ok=ok)
    hostile.assert_untouched()


def test_a_feed_ends_when_its_token_expires(hostile: Hostile) -> None:
    """An open feed sends `expired` and closes once its token expires, so a leaked token stops reading."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=20) as s:
        tok = token(ME, 2)
        s.sendall(
            f"GET /api/distributors/{ME}/feed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {tok}\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert b" 200 " in data.split(b"\r\n", 1)[0] and b"event: expired" in data, data[:500]
    assert time.monotonic() - started < 10


# ---- ClickHouse after all of it: last, because it stops the worker ---------------------------------------------------


def test_zz_clickhouse_tables_and_row_counts_unchanged(hostile: Hostile) -> None:
    """After every hostile request: the worker is alive, then stops cleanly, and chDB has the same tables and rows."""
    hostile.assert_untouched()
    assert hostile.worker.stop() == 0, hostile.worker.log_tail()
    assert _table_counts(chdb_dir(hostile.env)) == hostile.counts
    for run in [("leaderboard", "--at", "0000-01"), ("refunds", "--limit", "²")]:
        r = _cli_report(hostile.env, *run)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "error" in r.stderr, (run, r.stderr[-2000:])
    assert _table_counts(chdb_dir(hostile.env)) == hostile.counts
