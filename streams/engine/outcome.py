"""The outcome of a run in the shape of the spec's expected.json, from output records; dedupes by entry_id."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

KINDS = ("accrued", "reversed", "settled", "clawed_back")
KINDS_V2 = ("held", "released", "withdrawn", "adjusted")

# Which balances each kind moves, and with which sign (the spec's balance formulas).
_MOVES: dict[str, tuple[tuple[str, int], ...]] = {
    "accrued": (("pending_cents", 1),),
    "reversed": (("pending_cents", 1),),
    "settled": (("pending_cents", -1), ("available_cents", 1)),
    "clawed_back": (("available_cents", 1),),
    "adjusted": (("available_cents", 1),),
    "held": (("available_cents", 1), ("reserved_cents", -1)),
    "released": (("available_cents", 1), ("reserved_cents", -1)),
    "withdrawn": (("reserved_cents", 1), ("withdrawn_cents", -1)),
}


def _group(e: Mapping[str, Any]) -> str:
    """What an entry is summed under: its order, else w:<withdrawal_id> or a:<adjustment_id>."""
    if e.get("order_id") is not None:
        return str(e["order_id"])
    if e.get("withdrawal_id") is not None:
        return f"w:{e['withdrawal_id']}"
    return f"a:{e.get('adjustment_id')}"


def summarize(
    entries: Iterable[Mapping[str, Any]],
    bindings: Iterable[Mapping[str, Any]],
    dead_letters: Iterable[Mapping[str, Any]],
    v2: bool | None = None,
) -> dict[str, Any]:
    """Balances, bindings, dead-letter counts, entry sums and totals.

    A replayed entry counts once (same entry_id); so does a replayed dead letter (same source topic,
    partition and offset). With v2 (default: whenever an entry of a v2 kind is present) balances carry all
    four and totals all eight kinds, as money-out's expected.json; otherwise the v1 shape, unchanged.
    """
    seen: set[str] = set()
    sums: dict[str, int] = defaultdict(int)
    totals = dict.fromkeys(KINDS + KINDS_V2, 0)
    balances: dict[str, dict[str, int]] = {}
    has_v2 = False
    for e in entries:
        if e["entry_id"] in seen:
            continue
        seen.add(e["entry_id"])
        kind, amount, who = e["kind"], int(e["amount_cents"]), e["beneficiary_id"]
        sums[f"{_group(e)}|{e['level']}|{who}|{kind}"] += amount
        totals[kind] += amount
        has_v2 = has_v2 or kind in KINDS_V2
        bal = balances.setdefault(
            who, {"available_cents": 0, "pending_cents": 0, "reserved_cents": 0, "withdrawn_cents": 0}
        )
        for balance, sign in _MOVES[kind]:
            bal[balance] += sign * amount
    if not (has_v2 if v2 is None else v2):
        totals = {k: totals[k] for k in KINDS}
        balances = {who: {k: b[k] for k in ("available_cents", "pending_cents")} for who, b in balances.items()}
    latest: dict[str, str | None] = {}
    for b in bindings:
        latest[b["user_id"]] = b["inviter_id"]
    by_source = {(d["topic"], d.get("partition"), d["offset"]): d["reason"] for d in dead_letters}
    dead = Counter(by_source.values())
    return {
        "balances": dict(sorted(balances.items())),
        "bindings": dict(sorted(latest.items())),
        "dead_letters": dict(sorted(dead.items())),
        "entries": dict(sorted(sums.items())),
        "totals": totals,
    }


def diff(actual: Mapping[str, Any], expected: Mapping[str, Any], limit: int = 20) -> list[str]:
    """Human-readable differences between two outcomes, for test failure messages."""
    out = []
    for section in ("balances", "bindings", "dead_letters", "entries", "totals"):
        a, e = actual.get(section, {}), expected.get(section, {})
        for k in sorted(set(a) | set(e)):
            if a.get(k, "<missing>") != e.get(k, "<missing>"):
                out.append(f"{section}[{k}]: got {a.get(k, '<missing>')!r}, expected {e.get(k, '<missing>')!r}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
