"""The spec's semantics executed literally: sort every event by (ts, topic, event_id), apply one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Invalid, decode
from streams import names
from streams.engine.config import Program
from streams.engine.ledger import INVALID_EVENT, Ledger, State, seq_key


@dataclass
class ReferenceRun:
    """Output records of a reference run, in the order they were produced."""

    entries: list[dict[str, object]] = field(default_factory=list)
    bindings: list[dict[str, object]] = field(default_factory=list)
    dead_letters: list[dict[str, object]] = field(default_factory=list)
    limited_clicks: list[dict[str, object]] = field(default_factory=list)


def _raw(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def run(records: Iterable[Mapping[str, Any]], program: Program, now_ms: int) -> ReferenceRun:
    """Apply scenario records in spec order (v2 topic ranks, global settlement), then settle what `now_ms` passed."""
    out = ReferenceRun()
    decoded = []
    for i, rec in enumerate(records):
        topic = rec["topic"]
        ev = decode(topic, _raw(rec["value"]))
        if isinstance(ev, Invalid):
            out.dead_letters.append({"topic": topic, "offset": i, "event_id": ev.event_id, "reason": INVALID_EVENT})
            continue
        decoded.append((seq_key(names.TOPIC_RANK_V2[topic], ev), i, topic, ev))
    decoded.sort(key=lambda t: (t[0], t[1]))
    ledger = Ledger(program, State())
    for key, i, topic, ev in decoded:
        res = ledger.step(ev, key)
        out.entries.extend(e.as_record() for e in res.entries)
        out.bindings.extend(b.as_record() for b in res.bindings)
        if res.limited is not None:
            out.limited_clicks.append(res.limited.as_record())
        if res.rejection:
            out.dead_letters.append({"topic": topic, "offset": i, "event_id": ev.event_id, "reason": res.rejection})
    out.entries.extend(e.as_record() for e in ledger.settle_due(now_ms))
    return out
