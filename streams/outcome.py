"""The outcome of a run in the shape of the spec's expected.json, from output records; dedupes by entry_id."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

KINDS = ("accrued", "reversed", "settled", "clawed_back")


def summarize(
    entries: Iterable[Mapping[str, Any]],
    bindings: Iterable[Mapping[str, Any]],
    dead_letters: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """Balances, bindings, dead-letter counts, entry sums and totals.

    A replayed entry counts once (same entry_id); so does a replayed dead letter (same source topic,
    partition and offset).
    """
    seen: set[str] = set()
    sums: dict[str, int] = defaultdict(int)
    totals = dict.fromkeys(KINDS, 0)
    balances: dict[str, dict[str, int]] = {}
    for e in entries:
        if e["entry_id"] in seen:
            continue
        seen.add(e["entry_id"])
        kind, amount, who = e["kind"], int(e["amount_cents"]), e["beneficiary_id"]
        sums[f"{e['order_id']}|{e['level']}|{who}|{kind}"] += amount
        totals[kind] += amount
        bal = balances.setdefault(who, {"available_cents": 0, "pending_cents": 0})
        if kind in ("accrued", "reversed"):
            bal["pending_cents"] += amount
        elif kind == "settled":
            bal["pending_cents"] -= amount
            bal["available_cents"] += amount
        else:
            bal["available_cents"] += amount
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
