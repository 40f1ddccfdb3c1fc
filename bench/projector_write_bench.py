"""Redis and client CPU of one read-model batch: the projector's Lua script vs MULTI/EXEC of the same commands.

Why: the projector's script is the largest Redis cost the sink causes, and Redis competes with the worker at
nice 0 while the sink runs niced; this shows whether moving the work out of Lua pays. A private redis-server
on a free port; each round alternates the two ways on a fresh database. Nothing here is asserted by tests.
Usage: .venv/bin/python bench/projector_write_bench.py [--entries 5000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from streams import names
from streams.engine.ledger import ACCRUED, Entry
from streams.state.projector import _WRITE_LUA, Plan, Tree, _encode, plan_batch

OWNER = "bench"
SALE_TS_MS = 1_762_819_200_000  # 2025-11-11T00:00:00Z


def free_port() -> int:
    """A port nothing listens on, for the private redis-server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def entries(rnd: random.Random, batch: int, n: int) -> list[Entry]:
    """n accrued entries, three levels per paid order, beneficiaries skewed as a real tree's uplines are."""
    out: list[Entry] = []
    for i in range(n // 3):
        src = f"paid-{batch}-{i}"
        for level in (1, 2, 3):
            out.append(
                Entry(
                    entry_id=f"{src}:{level}:{ACCRUED}",
                    source_event_id=src,
                    ts_ms=SALE_TS_MS + batch * 1000 + i,
                    order_id=f"o{batch}-{i}",
                    buyer_id=f"u{rnd.randrange(80_000)}",
                    beneficiary_id=f"u{int(rnd.paretovariate(1.2)) % 8000}",
                    level=level,
                    kind=ACCRUED,
                    amount_cents=rnd.randrange(1, 5000),
                    campaign_id="d11",
                )
            )
    return out


def by_lua(r: Any, plan: Plan) -> None:
    """The projector's own write: one EVAL with the seen ids and commands as JSON."""
    seen = _encode([[k, v] for k, v in plan.seen.items()]).decode()
    r.eval(
        _WRITE_LUA,
        2,
        names.KEY_PJ_LEASE,
        names.KEY_PJ_OFFSETS,
        OWNER,
        100_000,
        "[]",
        seen,
        100,
        _encode(plan.commands).decode(),
    )


def by_multi(r: Any, plan: Plan) -> None:
    """The same writes as native commands in MULTI/EXEC, fenced by WATCH on the lease."""
    with r.pipeline(transaction=True) as p:
        p.watch(names.KEY_PJ_LEASE)
        if p.get(names.KEY_PJ_LEASE) != OWNER:
            raise RuntimeError("lease lost")
        p.multi()
        p.pexpire(names.KEY_PJ_LEASE, 100_000)
        for key, members in plan.seen.items():
            p.execute_command("SADD", key, *members)
            p.execute_command("EXPIRE", key, 100)
        for c in plan.commands:
            p.execute_command(*c)
        p.execute()


def main() -> int:
    """Alternate the two ways per round and print each one's mean CPU per batch."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--entries", type=int, default=5000, help="ledger entries per batch (the projector takes 5,000 records)"
    )
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        r = redis.Redis(port=port, decode_responses=True)
        for _ in range(50):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)

        def redis_cpu() -> float:
            info = r.info("cpu")
            return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

        ways: dict[str, Callable[[Any, Plan], None]] = {"lua": by_lua, "multi": by_multi}
        cost = {w: [0.0, 0.0] for w in ways}
        rnd = random.Random(11)
        commands = 0
        for rnd_i in range(a.rounds):
            batch = entries(rnd, rnd_i, a.entries)
            plan = plan_batch(batch, [], Tree(), set(), {e.source_event_id: 10_000 for e in batch}, SALE_TS_MS)
            commands = len(plan.commands)
            for name, write in ways.items():
                r.flushall()
                r.set(names.KEY_PJ_LEASE, OWNER)
                c0, m0 = redis_cpu(), time.process_time()
                write(r, plan)
                cost[name][0] += redis_cpu() - c0
                cost[name][1] += time.process_time() - m0
        print(f"{a.rounds} rounds, {a.entries} entries and ~{commands} commands per batch; CPU ms per batch (mean)")
        print(f"{'way':6} {'redis':>8} {'client':>8} {'total':>8}")
        for name, (srv, cli) in cost.items():
            srv_ms, cli_ms = srv / a.rounds * 1000, cli / a.rounds * 1000
            print(f"{name:6} {srv_ms:8.1f} {cli_ms:8.1f} {srv_ms + cli_ms:8.1f}")
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
