"""Operator commands of `fenxiao` (withdrawals, distributor status, adjustments, awards) over the worker's HTTP API.

The API is one more producer onto the input topics, so these commands never write Kafka or Redis
themselves: each write is one POST with an Idempotency-Key. Keys are deterministic where repeating
the command must change nothing (a withdrawal step, an award rank, an adjustment), so a retried or
re-run command is harmless; the API answers a repeat with the same id and produces nothing.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from streams import names

MAX_CENTS = 10**12
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
WITHDRAWAL_ACTIONS = ("approve", "reject", "paid", "failed")
STATUSES = ("active", "frozen", "revoked")
OPEN_STATUSES = ("requested", "approved")
ALL_WITHDRAWAL_STATUSES = ("requested", "approved", "rejected", "paid", "failed")
METRIC_COLUMN = {"earnings": ("earnings", "earnings_cents"), "sales": ("gmv", "gmv_cents")}
REPLAYED_HEADER = "Idempotent-Replayed"
TOKEN_TTL_S = 600


class OpsError(Exception):
    """A one-line error that names the fix."""


class HttpError(OpsError):
    """The API answered with an error status; `code` lets a caller treat one status (a 409) on its own."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the HTTP client ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One API answer: status, decoded JSON body, and whether the API says it replayed an earlier request."""

    status: int
    body: Any
    replayed: bool


@dataclass(frozen=True)
class Api:
    """The worker's HTTP API at `base` with a bearer token."""

    base: str
    token: str
    timeout_s: float = 30.0

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, key: str | None = None) -> Reply:
        """One request; any answer but 2xx becomes an OpsError that says what to do."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        url = self.base.rstrip("/") + path
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                body = _json(raw)
                replayed = (response.headers.get(REPLAYED_HEADER) or "").lower() == "true" or (
                    isinstance(body, dict) and body.get("replayed") is True
                )
                return Reply(response.status, body, replayed)
        except urllib.error.HTTPError as e:
            raw = e.read()
            body = _json(raw)
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                raise _http_error(e.code, str(body["error"])[:300], method, path, key) from None
            if e.code == 404:  # not the API's JSON error: no such endpoint at all
                raise HttpError(
                    404,
                    f"the server at {self.base} has no {method} {path.split('?')[0]} (404): is it a fenxiao worker"
                    f" with the write API? check {names.ENV_API_URL}",
                ) from None
            text = raw[:200].decode("utf-8", "replace").strip()
            raise _http_error(e.code, text, method, path, key) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise OpsError(
                f"cannot reach the API at {self.base} ({reason}): is `fenxiao worker` running?"
                f" set {names.ENV_API_URL} (or --api) to its address; repeating a write that timed out is safe"
            ) from None


def _json(raw: bytes) -> Any:
    """A JSON body, or None when the body is empty or not JSON."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _http_error(code: int, message: str, method: str, path: str, key: str | None) -> HttpError:
    """An HTTP error as a sentence that names the fix."""
    return HttpError(code, _sentence(code, message, method, path, key))


def _sentence(code: int, message: str, method: str, path: str, key: str | None) -> str:
    """What went wrong and what to do, per status."""
    said = f": {message}" if message else ""
    if code == 401:
        return (
            f"the API refused the token (401{said}): set {names.ENV_TOKEN} to an operator token"
            f" (`fenxiao token --operator`), or {names.ENV_TOKEN_KEY} to the worker's key"
        )
    if code == 403:
        return (
            f"the token may not do this (403{said}): use an operator token in {names.ENV_TOKEN},"
            f" or unset it to mint one from {names.ENV_TOKEN_KEY}"
        )
    if code == 404:
        return f"not found (404{said}): check the id (`fenxiao withdrawals list` shows open withdrawals)"
    if code == 409:
        return (
            f"the Idempotency-Key {key} was already used for another request (409{said}): the same command was"
            " run before with different values; repeat it exactly as the first time (same --reason) or leave it"
        )
    if code == 400:
        return f"the API refused the request (400{said})"
    return f"the API failed {method} {path} ({code}{said}); see the worker's log"


def idempotency_key(*parts: str) -> str:
    """`a:b:c` when it fits the API's key rule, else a hash of it: the same parts always give the same key."""
    text = ":".join(parts)
    if KEY_PATTERN.fullmatch(text):
        return text
    return "h:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def api_from_args(args: argparse.Namespace) -> Api:
    """The API base URL and token from --api, FENXIAO_API_URL, FENXIAO_TOKEN or FENXIAO_TOKEN_KEY."""
    from streams.settings import get_settings

    base = args.api or os.environ.get(names.ENV_API_URL)
    settings = None
    if not base:
        settings = get_settings()
        base = f"http://127.0.0.1:{settings.web_port}"
    if not re.match(r"https?://[^/\s]+", base):
        raise OpsError(f"{names.ENV_API_URL} / --api must be an http(s) URL like http://127.0.0.1:6066, got {base!r}")
    token = os.environ.get(names.ENV_TOKEN, "").strip()
    if not token:
        from streams.api import auth

        settings = settings or get_settings()
        token = auth.issue(settings.token_key.get_secret_value(), auth.OPERATOR, _operator_name(), TOKEN_TTL_S)
    return Api(base, token)


def _operator_name() -> str:
    """Who the minted token names in the operator audit: the login name running the CLI."""
    try:
        return getpass.getuser()[:64] or "cli"
    except (OSError, KeyError):
        return "cli"


# --- withdrawals, status, adjustments -------------------------------------------------------------------------------


def _yuan(cents: object) -> str:
    """¥1,234.56 from integer cents; '-' when absent."""
    if not isinstance(cents, int) or isinstance(cents, bool):
        return "-"
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}¥{whole:,}.{frac:02d}"


def _when(ms: object) -> str:
    """Epoch ms as 2026-11-11 00:05:33Z; '-' when absent."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _statuses(text: str | None) -> tuple[str, ...]:
    """--status requested,approved -> the statuses, each checked."""
    if not text:
        return ()
    wanted = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in wanted if s not in ALL_WITHDRAWAL_STATUSES]
    if bad or not wanted:
        raise OpsError(f"--status takes a comma list of {', '.join(ALL_WITHDRAWAL_STATUSES)}; got {text!r}")
    return wanted


def _rows(body: Any) -> list[dict[str, Any]]:
    """The withdrawal states of a list answer (a JSON list, or an object holding one under `withdrawals`)."""
    items = body.get("withdrawals") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise OpsError(
            "the API answered the withdrawal list with something that is not a list; is it a fenxiao worker?"
        )
    return [w for w in items if isinstance(w, dict)]


def list_withdrawals(api: Api, status: str | None, distributor: str | None, console: Console) -> int:
    """The review queue (requested and approved, oldest first), or one distributor's withdrawals, as a table."""
    wanted = _statuses(status)
    if distributor:
        path = f"/api/distributors/{urllib.parse.quote(distributor, safe='')}/withdrawals"
    else:
        closed = [s for s in wanted if s not in OPEN_STATUSES]
        if closed:
            raise OpsError(
                f"the review queue holds only requested and approved withdrawals; to see {', '.join(closed)}"
                " ones add --distributor U"
            )
        path = "/api/operator/withdrawals"
    rows = _rows(api.call("GET", path).body)
    if wanted:
        rows = [w for w in rows if w.get("status") in wanted]
    title = f"withdrawals of {distributor}" if distributor else "review queue (requested and approved, oldest first)"
    table = Table(title=title)
    for label, justify in (
        ("withdrawal", "left"),
        ("distributor", "left"),
        ("amount", "right"),
        ("channel", "left"),
        ("status", "left"),
        ("fee", "right"),
        ("payout", "right"),
        ("requested", "left"),
        ("updated", "left"),
    ):
        table.add_column(label, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for w in rows:
        table.add_row(
            str(w.get("withdrawal_id", "")),
            str(w.get("distributor_id", "")),
            _yuan(w.get("amount_cents")),
            str(w.get("channel") or "-"),
            str(w.get("status", "")),
            _yuan(w.get("fee_cents")),
            _yuan(w.get("payout_cents")),
            _when(w.get("requested_ts")),
            _when(w.get("updated_ts")),
        )
    console.print(table)
    console.print(f"{len(rows)} withdrawal(s)", highlight=False)
    return 0


def withdrawal_step(api: Api, action: str, withdrawal_id: str, reason: str | None, console: Console) -> int:
    """approve / reject / paid / failed one withdrawal; the key `<withdrawal_id>:<action>` makes a repeat harmless."""
    body: dict[str, Any] = {"reason": reason} if reason else {}
    key = idempotency_key(withdrawal_id, action)
    path = f"/api/operator/withdrawals/{urllib.parse.quote(withdrawal_id, safe='')}/{action}"
    reply = api.call("POST", path, body, key)
    said = "already sent earlier, nothing new" if reply.replayed else "sent"
    console.print(f"{action} {withdrawal_id}: {said} (id {_id(reply, key)}, key {key})", highlight=False)
    return 0


def set_status(api: Api, user: str, status: str, reason: str | None, console: Console) -> int:
    """Freeze, revoke or (re)activate a distributor; each call is a new event (a status set twice is harmless)."""
    body: dict[str, Any] = {"status": status}
    if reason:
        body["reason"] = reason
    key = idempotency_key("status", user, status, uuid.uuid4().hex[:16])
    reply = api.call("POST", f"/api/operator/distributors/{urllib.parse.quote(user, safe='')}/status", body, key)
    console.print(f"{user} -> {status}: sent (id {_id(reply, key)})", highlight=False)
    return 0


def parse_cents(text: str, *, signed: bool, what: str) -> int:
    """Whole cents from the command line: digits (a leading - when signed), never a float; non-zero, |x| <= 10^12."""
    if not re.fullmatch(r"-?[0-9]{1,13}" if signed else r"[0-9]{1,13}", text.strip()):
        kind = "signed whole cents like -300 or 5000" if signed else "whole cents like 20000"
        raise OpsError(f"{what} must be {kind} (¥50.00 = 5000), got {text!r}")
    value = int(text)
    if value == 0 or abs(value) > MAX_CENTS:
        raise OpsError(f"{what} must be non-zero and at most 10^12 cents, got {text!r}")
    return value


def adjust(api: Api, user: str, cents: int, reason: str, key: str | None, console: Console) -> int:
    """A manual credit or debit; by default the key is derived from (user, cents, reason), so a re-run posts it once."""
    if not reason.strip():
        raise OpsError("--reason must say why (it is on the ledger entry)")
    key = key or idempotency_key("adj", hashlib.sha256(f"{user}\x00{cents}\x00{reason}".encode()).hexdigest()[:32])
    if not KEY_PATTERN.fullmatch(key):
        raise OpsError(f"--key must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {key[:40]!r}")
    body = {"distributor_id": user, "amount_cents": cents, "reason": reason}
    reply = api.call("POST", "/api/operator/adjustments", body, key)
    said = "already posted earlier, nothing new" if reply.replayed else "posted"
    console.print(
        f"adjustment {_yuan(cents)} for {user}: {said} (adjustment_id {_id(reply, key)}); the same command again"
        " changes nothing, pass --key for a second identical adjustment",
        highlight=False,
    )
    return 0


def _id(reply: Reply, key: str) -> str:
    """The id the API answered with (the key itself when it did not say)."""
    if isinstance(reply.body, dict) and isinstance(reply.body.get("id"), str):
        return str(reply.body["id"])
    return key


# --- awards ---------------------------------------------------------------------------------------------------------

_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_QUARTER = re.compile(r"([0-9]{4})-?[Qq]([1-4])")


@dataclass(frozen=True)
class AwardPeriod:
    """A month (2026-11) or quarter (2026Q4): the leaderboard's period/at parameters and the label in award ids."""

    kind: str  # month | quarter
    at: str  # the leaderboard's `at`: 2026-11 or 2026-Q4
    label: str  # in the award id: 2026-11 or 2026Q4


def parse_award_period(text: str) -> AwardPeriod:
    """--period 2026-11 (a month) or 2026Q4 / 2026-Q4 (a quarter)."""
    t = text.strip()
    if _MONTH.fullmatch(t):
        return AwardPeriod("month", t, t)
    if q := _QUARTER.fullmatch(t):
        return AwardPeriod("quarter", f"{q.group(1)}-Q{q.group(2)}", f"{q.group(1)}Q{q.group(2)}")
    raise OpsError(f"--period must be a month like 2026-11 or a quarter like 2026Q4, got {text!r}")


def parse_amounts(text: str) -> list[int]:
    """--amounts 20000,10000,5000: the award of rank 1, 2, 3... in whole cents."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p for p in parts):
        raise OpsError(f"--amounts must be a comma list of whole cents like 20000,10000,5000, got {text!r}")
    if len(parts) > 1000:
        raise OpsError("--amounts names at most 1000 ranks")
    return [parse_cents(p, signed=False, what="each --amounts value") for p in parts]


@dataclass(frozen=True)
class Award:
    """One rank's award: who, how much, for what score, and the adjustment id that makes it once-only."""

    rank: int
    distributor_id: str
    amount_cents: int
    score: int
    adjustment_id: str

    def body(self, period: AwardPeriod, metric: str) -> dict[str, Any]:
        """The adjustment request; the same award always sends the same bytes, so a re-run is a replay."""
        return {
            "distributor_id": self.distributor_id,
            "amount_cents": self.amount_cents,
            "reason": f"award: #{self.rank} of {period.label} by {metric}",
        }


def plan_awards(
    rows: Sequence[Mapping[str, Any]], period: AwardPeriod, metric: str, amounts: Sequence[int]
) -> list[Award]:
    """Rank k of the leaderboard (in the report's own order, ties as it breaks them) gets amounts[k-1].

    Only a positive score wins: a distributor with nothing (or a net loss) in the period gets no award,
    so fewer distributors than amounts leaves the lower ranks unpaid.
    """
    column = METRIC_COLUMN[metric][1]
    awards = []
    for position, row in enumerate(rows[: len(amounts)], 1):
        score = row.get(column)
        who = row.get("distributor")
        if not isinstance(score, int) or isinstance(score, bool) or score <= 0 or not isinstance(who, str) or not who:
            break
        key = idempotency_key("award", period.label, metric, str(position))
        awards.append(Award(position, who, amounts[position - 1], score, key))
    return awards


def leaderboard(api: Api, period: AwardPeriod, metric: str, limit: int) -> list[dict[str, Any]]:
    """The `leaderboard` report's rows for the period, through the worker's GET /reports/leaderboard."""
    query = urllib.parse.urlencode(
        {"period": period.kind, "at": period.at, "metric": METRIC_COLUMN[metric][0], "limit": str(limit)}
    )
    body = api.call("GET", f"/reports/leaderboard?{query}").body
    rows = body.get("rows") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise OpsError("the leaderboard answer has no rows; is the worker's sink process (reports) running?")
    return [r for r in rows if isinstance(r, dict)]


def issue_awards(
    api: Api, period: AwardPeriod, metric: str, amounts: list[int], dry_run: bool, console: Console
) -> int:
    """Pay the period's best as adjustments `award:<period>:<metric>:<rank>`; a re-run pays nothing twice."""
    awards = plan_awards(leaderboard(api, period, metric, len(amounts)), period, metric, amounts)
    results: list[str] = []
    conflicts = 0
    for award in awards:
        if dry_run:
            results.append("would issue")
            continue
        try:
            reply = api.call("POST", "/api/operator/adjustments", award.body(period, metric), award.adjustment_id)
        except HttpError as e:
            if e.code != 409:
                raise
            conflicts += 1
            results.append("CONFLICT: issued earlier with other values")
            continue
        results.append("already issued" if reply.replayed else "new")
    table = Table(title=f"awards {period.label} by {metric}" + (" (dry run: nothing paid)" if dry_run else ""))
    for label, justify in (
        ("rank", "right"),
        ("distributor", "left"),
        (metric, "right"),
        ("award", "right"),
        ("adjustment_id", "left"),
        ("result", "left"),
    ):
        table.add_column(label, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for award, result in zip(awards, results, strict=True):
        score = _yuan(award.score)
        table.add_row(
            str(award.rank), award.distributor_id, score, _yuan(award.amount_cents), award.adjustment_id, result
        )
    for rank in range(len(awards) + 1, len(amounts) + 1):
        table.add_row(
            str(rank), "-", "-", _yuan(amounts[rank - 1]), "-", "nobody: no distributor with a positive score"
        )
    console.print(table)
    if conflicts:
        raise OpsError(
            f"{conflicts} award(s) were issued earlier to another distributor or amount (the leaderboard changed"
            " since, or --amounts differ): nothing was paid for them; check `fenxiao report leaderboard` and the"
            " operator audit"
        )
    return 0


# --- argparse -------------------------------------------------------------------------------------------------------


def _api_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api", help=f"the worker's API base URL (default ${names.ENV_API_URL} or http://127.0.0.1:<web port>)"
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`withdrawals`, `distributors`, `adjust` and `awards`: the operator's writes through the worker's API."""
    w = sub.add_parser("withdrawals", help="list the review queue, approve / reject / mark paid or failed (提现审核)")
    wsub = w.add_subparsers(dest="action", required=True)
    wl = wsub.add_parser("list", help="the review queue (requested and approved), or one distributor's withdrawals")
    wl.add_argument("--status", help="comma list: requested,approved,rejected,paid,failed")
    wl.add_argument("--distributor", metavar="U", help="this distributor's withdrawals, closed ones too")
    _api_flag(wl)
    wl.set_defaults(ops=lambda a, api, c: list_withdrawals(api, a.status, a.distributor, c))
    for action in WITHDRAWAL_ACTIONS:
        wa = wsub.add_parser(action, help=f"{action} one withdrawal (repeating it is harmless)")
        wa.add_argument("withdrawal_id")
        wa.add_argument("--reason", help="why (recorded with the event and in the operator audit)")
        _api_flag(wa)
        wa.set_defaults(ops=lambda a, api, c, action=action: withdrawal_step(api, action, a.withdrawal_id, a.reason, c))

    d = sub.add_parser("distributors", help="approve, freeze or revoke a distributor")
    dsub = d.add_subparsers(dest="action", required=True)
    ds = dsub.add_parser("set-status", help="active (approve or restore), frozen (no withdrawals), revoked")
    ds.add_argument("user")
    ds.add_argument("status", choices=STATUSES)
    ds.add_argument("--reason")
    _api_flag(ds)
    ds.set_defaults(ops=lambda a, api, c: set_status(api, a.user, a.status, a.reason, c))

    a = sub.add_parser("adjust", help="credit (+) or debit (-) a distributor's available balance")
    a.add_argument("user")
    a.add_argument("cents", help="signed whole cents, e.g. -300 or 5000")
    a.add_argument("--reason", required=True, help="why (on the ledger entry)")
    a.add_argument("--key", help="the adjustment_id (default: derived from user, cents and reason)")
    _api_flag(a)
    a.set_defaults(
        ops=lambda ar, api, c: adjust(
            api, ar.user, parse_cents(ar.cents, signed=True, what="cents"), ar.reason, ar.key, c
        )
    )

    aw = sub.add_parser("awards", help="pay a month's or quarter's best distributors (leaderboard) as adjustments")
    awsub = aw.add_subparsers(dest="action", required=True)
    ai = awsub.add_parser("issue", help="issue the awards; a re-run pays nothing twice")
    ai.add_argument("--period", required=True, help="2026-11 (a month) or 2026Q4 (a quarter)")
    ai.add_argument("--metric", choices=sorted(METRIC_COLUMN), default="earnings", help="rank by (default earnings)")
    ai.add_argument("--amounts", required=True, help="cents for rank 1, 2, ...: 20000,10000,5000")
    ai.add_argument("--dry-run", action="store_true", help="show who would get what, pay nothing")
    _api_flag(ai)
    ai.set_defaults(
        ops=lambda ar, api, c: issue_awards(
            api, parse_award_period(ar.period), ar.metric, parse_amounts(ar.amounts), ar.dry_run, c
        )
    )


def run(args: argparse.Namespace) -> int:
    """Dispatch one operator command (flags checked before any request is sent)."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a pipe or a log: ids must not be cut at rich's default 80 columns
    rc: int = args.ops(args, api_from_args(args), console)
    return rc
