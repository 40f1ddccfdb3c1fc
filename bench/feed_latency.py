"""Feed latency on the real stack: commit -> SSE arrival and produce -> SSE arrival, for orders produced one by one.

Starts a private Kafka + Redis (streams.ops.stack.isolated_stack) and a worker on the basic example, connects to
one distributor's feed, then produces N paid orders for one of their recruits, one at a time. Prints
median and p99 of both latencies; commit time is the stream id (Redis' clock at the commit's XADD).
Usage: PYTHONPATH=. .venv/bin/python bench/feed_latency.py [N]  (it reuses the integration test helpers)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from streams.api import auth
from streams.ops import stack as stack_mod
from tests.integration import scenario
from tests.integration.scenario import Env


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


async def measure(env: Env, who: str, buyer: str, n: int) -> tuple[list[float], list[float]]:
    token = auth.issue(scenario.TEST_TOKEN_KEY, auth.DISTRIBUTOR, who, 3600)
    from_commit: list[float] = []
    from_produce: list[float] = []
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{env.web_port}/api/distributors/{who}/feed", headers={"Authorization": f"Bearer {token}"}
        ) as r,
    ):
        lines = r.content.__aiter__()
        for i in range(n):
            order = f"bench-{i}-{uuid.uuid4().hex[:4]}"
            now = time.time()
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
            rec = {
                "topic": "fenxiao.orders",
                "key": buyer,
                "value": {
                    "event_id": f"e-{order}",
                    "ts": ts,
                    "order_id": order,
                    "type": "paid",
                    "buyer_id": buyer,
                    "amount_cents": 10_000,
                },
            }
            t0 = time.time()
            await scenario.produce(env.stack.bootstrap, [rec])
            sid = None
            while True:
                line = (await asyncio.wait_for(lines.__anext__(), 30)).decode().rstrip("\n")
                if line.startswith("id: "):
                    sid = line[4:]
                elif line.startswith("data: ") and json.loads(line[6:])["order_id"] == order:
                    at = time.time()
                    assert sid is not None
                    from_commit.append(at - int(sid.split("-")[0]) / 1000)
                    from_produce.append(at - t0)
                    break
            await asyncio.sleep(0.2)
    return from_commit, from_produce


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as d, stack_mod.isolated_stack(Path(d) / "stack", partitions=4) as st:
        (port,) = stack_mod.pick_free_ports(1)
        asyncio.run(scenario.reset_topics(st.bootstrap, 4))
        env = Env(
            st,
            {
                "FENXIAO_KAFKA": st.bootstrap,
                "FENXIAO_REDIS_URL": st.redis_url,
                "FENXIAO_APP_ID": f"fx-bench-{uuid.uuid4().hex[:6]}",
                "FENXIAO_WEB_PORT": str(port),
                "FENXIAO_VAR_DIR": str(Path(d) / "var"),
                "FENXIAO_PARTITIONS": "4",
            },
            Path(d),
            port,
        )
        w = env.worker("basic")
        try:
            env.produce(scenario.load_records("basic"))
            env.outcome(scenario.load_expected("basic"))
            bindings = scenario.load_expected("basic")["bindings"]
            buyer = sorted(u for u, i in bindings.items() if i == "u1-0")[0]
            commit, produce = asyncio.run(measure(env, "u1-0", buyer, n))
        finally:
            w.stop()
    print(f"orders: {n} (one at a time, idle grace 1 s as in the tests)")
    print(f"commit  -> SSE: median {statistics.median(commit) * 1000:7.1f} ms   p99 {pct(commit, 99) * 1000:7.1f} ms")
    print(f"produce -> SSE: median {statistics.median(produce) * 1000:7.1f} ms   p99 {pct(produce, 99) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
