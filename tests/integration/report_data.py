"""Test support for the report suites: a spec example's pipeline output (via the reference engine) as sink rows,
and the independent expectations the reports are checked against, computed from events.jsonl and expected.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from schemas.events import Invalid, decode
from streams import names
from streams.engine import config, reference
from streams.sinks import sink as S

NOW_MS = 1_796_169_600_000  # 2026-12-02T00:00Z: the clock test_examples checks expected.json at
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def records(example: str) -> list[dict[str, Any]]:
    """The example's input records."""
    with open(FIXTURES / example / "events.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def expected(example: str) -> dict[str, Any]:
    """The example's expected.json."""
    return json.loads((FIXTURES / example / "expected.json").read_text(encoding="utf-8"))


def _raw(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value, separators=(",", ":")).encode()


def sink_rows(example: str) -> dict[str, list[dict[str, Any]]]:
    """Rows per ClickHouse table as the worker's sink would write them for this example (reference engine output)."""
    recs = records(example)
    program = config.load(FIXTURES / example / "fenxiao.toml")
    run = reference.run(recs, program, NOW_MS)
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows[S.LEDGER] = [dict(e) for e in run.entries]
    rows[S.BINDINGS] = [dict(b) for b in run.bindings]
    rows[S.LIMITED_CLICKS] = [dict(c) for c in run.limited_clicks]
    for i, rec in enumerate(recs):
        ev = decode(rec["topic"], _raw(rec["value"]))
        if isinstance(ev, Invalid):
            continue
        table = {names.CLICKS: S.CLICKS, names.ORDERS: S.ORDERS, names.TIERS: S.TIER_EVENTS}.get(rec["topic"])
        if table is not None:
            rows[table].append(ev.as_dict())
        del i
    for d in run.dead_letters:
        rec = recs[int(str(d["offset"]))]
        value = rec["value"]
        rows[S.DEAD_LETTERS].append(
            {
                **d,
                "partition": 0,
                "raw": _raw(value).decode(),
                "ts": value.get("ts") if isinstance(value, dict) else None,
                "detail": "",
            }
        )
    return dict(rows)


def accepted_paid(example: str) -> list[dict[str, Any]]:
    """Paid events the engine accepted, found independently of the engine: in spec order per order, the first
    paid event is accepted unless a cancel came before it; later paid events are refused (order_already_paid)."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    seen: set[str] = set()
    for rec in records(example):
        v = rec["value"]
        if rec["topic"] != names.ORDERS or isinstance(decode(names.ORDERS, _raw(v)), Invalid):
            continue
        if v["event_id"] not in seen:
            seen.add(v["event_id"])
            events.append((v["ts"], v["event_id"], v))
    events.sort(key=lambda t: (t[0], t[1]))
    state: dict[str, str] = {}
    out = []
    for _, _, v in events:
        before = state.get(v["order_id"])
        if v["type"] == "paid":
            if before is None:
                out.append(v)
                state[v["order_id"]] = "paid"
        elif v["type"] == "cancelled" and before is None:
            state[v["order_id"]] = "cancelled"
    return out


def refused_paid(example: str) -> int:
    """How many paid events expected.json says were refused (order_cancelled + order_already_paid)."""
    dead = expected(example)["dead_letters"]
    return int(dead.get("order_cancelled", 0)) + int(dead.get("order_already_paid", 0))


def level_beneficiaries(example: str) -> dict[tuple[str, int], str]:
    """(order_id, level) -> the distributor who accrued on it, from expected.json's entries."""
    out = {}
    for key in expected(example)["entries"]:
        order, level, user, kind = key.split("|")
        if kind == "accrued":
            out[(order, int(level))] = user
    return out
