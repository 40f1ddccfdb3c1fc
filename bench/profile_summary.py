"""Summarise a py-spy `--format raw` profile (collapsed stacks): where a batch's time goes, by category."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# (label, substrings: a sample counts for the category if any frame of its stack contains one of them).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode + validate input (schemas/)", ("(schemas/",)),
    ("alignment (streams/engine/alignment.py)", ("(streams/engine/alignment.py",)),
    ("the sequencer's loop and all it calls (streams/pipeline/sequencer.py)", ("(streams/pipeline/sequencer.py",)),
    ("ledger rules (streams/engine/)", ("(streams/engine/ledger.py", "(streams/engine/commission.py")),
    ("order steps: encode/decode (streams/pipeline/steps.py)", ("(streams/pipeline/steps.py",)),
    ("Redis (streams/state/, redis-py)", ("(streams/state/", "redis/")),
    ("produce outputs (streams/pipeline/outputs.py)", ("(streams/pipeline/outputs.py",)),
    ("input fetch (streams/pipeline/consume.py)", ("(streams/pipeline/consume.py",)),
    ("aiokafka client (fetch, produce requests, protocol)", ("aiokafka/",)),
    ("  of which: producer socket writes (Sender._send_produce_req)", ("_send_produce_req (",)),
    ("ClickHouse sink (streams/sinks/, chdb)", ("(streams/sinks/", "chdb")),
    ("JSON encode/decode (json module)", ("json/", "(json", "orjson")),
    ("pydantic", ("pydantic",)),
    ("asyncio event loop itself (select, callbacks)", ("select (selectors.py", "_run_once (asyncio")),
    ("gc", ("gc_collect", "(gc)")),
    ("logging", ("logging/__init__",)),
)
# faust and asyncio frames are under every sample (the worker runs inside them), so they are not a category.


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def summarize(raw: str, top: int = 15) -> dict[str, object]:
    """Total samples, inclusive share per category, and the functions with the most self (leaf) samples."""
    total = 0
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = _frames(stack)
        leaf[frames[-1]] += n
        joined = ";".join(frames)
        for label, needles in CATEGORIES:
            if any(s in joined for s in needles):
                inclusive[label] += n
    return {
        "samples": total,
        "inclusive_pct": {k: round(100 * inclusive[k] / total, 1) if total else 0.0 for k, _ in CATEGORIES},
        "top_self": [(f, round(100 * n / total, 1)) for f, n in leaf.most_common(top)] if total else [],
    }


def summarize_file(path: Path, top: int = 15) -> dict[str, object]:
    """summarize() of a file; an empty summary if py-spy wrote nothing."""
    if not path.exists():
        return {"samples": 0, "inclusive_pct": {}, "top_self": []}
    return summarize(path.read_text(errors="replace"), top)
