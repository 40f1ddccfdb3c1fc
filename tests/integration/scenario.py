"""Test support: produce scenario records, read back every output topic, wait for the expected outcome."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams import names
from streams.engine import outcome
from streams.state.stores import open_store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load_records(name: str) -> list[dict[str, Any]]:
    """A spec example's input records."""
    with open(FIXTURES / name / "events.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_expected(name: str) -> dict[str, Any]:
    """A spec example's expected outcome."""
    return json.loads((FIXTURES / name / "expected.json").read_text(encoding="utf-8"))


def _bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")  # lone \udc80-\udcff stand for raw (invalid UTF-8) bytes
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def produce(bootstrap: str, records: Iterable[Mapping[str, Any]]) -> int:
    """Produce records in the given order, keyed as the spec says, and wait for every ack."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    n = 0
    try:
        futs = []
        for r in records:
            key = r.get("key")
            futs.append(await p.send(r["topic"], key=None if key is None else _bytes(key), value=_bytes(r["value"])))
            n += 1
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return n


@dataclass
class Outputs:
    """Everything read from the output topics so far."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    bindings: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    limited_clicks: list[dict[str, Any]] = field(default_factory=list)
    withdrawal_states: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """In expected.json's shape (entries deduplicated by entry_id, latest binding per user)."""
        return outcome.summarize(self.entries, self.bindings, self.dead_letters)


async def read_outputs(bootstrap: str, timeout: float = 5.0) -> Outputs:
    """Read every output topic from the beginning to its current end."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out = Outputs()
    try:
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in names.OUTPUT_TOPICS for p in (md.partitions_for_topic(t) or set())]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        deadline = time.monotonic() + timeout
        pos = {tp: 0 for tp in tps}
        while any(pos[tp] < end[tp] for tp in tps) and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    pos[tp] = m.offset + 1
                    v = json.loads(m.value)
                    {
                        names.COMMISSIONS: out.entries,
                        names.BINDINGS: out.bindings,
                        names.DEAD_LETTERS: out.dead_letters,
                        names.CLICKS_LIMITED: out.limited_clicks,
                        names.WITHDRAWAL_STATES: out.withdrawal_states,
                    }[tp.topic].append(v)
        # Bindings are compacted state: the latest per user wins; order them by ts within a user.
        out.bindings.sort(key=lambda b: b["ts"])
    finally:
        await c.stop()
    return out


async def wait_for_outcome(bootstrap: str, expected: Mapping[str, Any], timeout: float) -> tuple[Outputs, list[str]]:
    """Poll the outputs until they equal `expected` or time runs out; returns the last read and its diff."""
    deadline = time.monotonic() + timeout
    while True:
        out = await read_outputs(bootstrap)
        d = outcome.diff(out.summary(), expected)
        if not d or time.monotonic() > deadline:
            return out, d
        await asyncio.sleep(1.0)


class WorkerProcess:
    """`fenxiao worker` as a real subprocess, so it can be killed like production kills it."""

    def __init__(
        self, config: Path, env: Mapping[str, str], log: Path, loglevel: str = "warning", args: Sequence[str] = ()
    ) -> None:
        self.config, self.env, self.log, self.loglevel, self.args = config, dict(env), log, loglevel, list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the worker; its output goes to the log file."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.log, "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--config", str(self.config), "--loglevel", self.loglevel]
        self.proc = subprocess.Popen(
            [*cmd, *self.args],
            env={**os.environ, **self.env},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def run_to_exit(self, timeout: float = 120) -> int:
        """Start a worker that is meant to end by itself (a fault injection, a refusal) and return its exit code."""
        self.start()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait for a clean exit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def log_tail(self, n: int = 40) -> str:
        """The last lines the worker printed, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


async def reset_topics(bootstrap: str, partitions: int) -> None:
    """Delete and recreate every contract topic, so each test starts from empty topics."""
    from streams.ops import stack

    await stack.recreate_topics(bootstrap, partitions)


TEST_TOKEN_KEY = "fenxiao-integration-test-key"


def operator_token(ttl_s: int = 3600) -> str:
    """An operator token for workers started with TEST_TOKEN_KEY (every Env sets it)."""
    from streams.api import auth

    return auth.issue(TEST_TOKEN_KEY, auth.OPERATOR, None, ttl_s)


def http_json(port: int, path: str, timeout: float = 2.0, token: str | None = None) -> Any:
    """GET a worker page and decode its JSON; token None = the test operator token, "" = no Authorization."""
    import urllib.request

    tok = operator_token() if token is None else token
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_http(port: int, path: str, timeout: float, proc: WorkerProcess, token: str | None = None) -> None:
    """Wait until the worker serves `path`; fail with its log if it died or never answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.proc.returncode}:\n{proc.log_tail()}")
        try:
            http_json(port, path, token=token)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"worker did not answer {path} within {timeout}s:\n{proc.log_tail()}")


def wait_sink_quiet(port: int, quiet_s: float, timeout: float) -> None:
    """Wait until the worker's sink has read everything there is and written nothing new for quiet_s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        status = http_json(port, "/status")
        now_written = status["sink_rows_written"], status["sink_lag"]
        if now_written != last or status["sink_lag"] != 0:
            last, since = now_written, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    raise AssertionError(f"the ClickHouse sink kept writing for {timeout}s")


def wait_read_models(port: int, timeout: float = 60.0, quiet_s: float = 1.5) -> None:
    """Wait until the worker's sink child has projected everything (sink_lag 0) and projects nothing new for quiet_s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        status = http_json(port, "/status")
        pj = (status.get("sink") or {}).get("projector") or {}
        now = pj.get("entries"), pj.get("bindings"), status["sink_lag"]
        if now != last or status["sink_lag"] != 0:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.25)
    raise AssertionError(f"the read models did not catch up within {timeout}s: {http_json(port, '/status')}")


def clickhouse_outcome(env: Mapping[str, str]) -> dict[str, Any]:
    """`fenxiao report totals --format json` in its own process (chDB: one owner per data directory)."""
    r = subprocess.run(
        [sys.executable, "-m", "streams.cli", "report", "totals", "--format", "json"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"report failed: {r.stderr.decode(errors='replace')}"
    return json.loads(r.stdout)  # type: ignore[no-any-return]


OUTCOME_TIMEOUT = 90.0


@dataclass
class Env:
    """One test's private pipeline: fresh topics and Redis, its own consumer group, port and data dir."""

    stack: Any
    env: dict[str, str]
    tmp: Path
    web_port: int

    def __post_init__(self) -> None:
        """Every worker of the test, however started, signs and checks tokens with the test key."""
        self.env.setdefault(names.ENV_TOKEN_KEY, TEST_TOKEN_KEY)

    @property
    def operator_token(self) -> str:
        """A bearer token that reads everything on this test's workers."""
        return operator_token()

    def config(self, example: str) -> Path:
        """The example's fenxiao.toml with a short idle grace, so a finished scenario settles quickly."""
        text = (FIXTURES / example / "fenxiao.toml").read_text()
        path = self.tmp / f"{example.replace('/', '-')}.toml"
        path.write_text(text + "\n[pipeline]\nordering_grace_seconds = 1\n")
        return path

    def worker(self, example: str, **extra_env: str) -> WorkerProcess:
        """A worker subprocess for this test, started and answering."""
        w = WorkerProcess(self.config(example), {**self.env, **extra_env}, self.tmp / "worker.log").start()
        wait_http(self.web_port, "/health", 90, w)
        return w

    def produce(self, records: list[dict[str, Any]]) -> None:
        """Produce records and wait for the broker's acks."""
        asyncio.run(produce(self.stack.bootstrap, records))

    def outcome(self, expected: dict[str, Any], timeout: float = OUTCOME_TIMEOUT) -> tuple[Outputs, list[str]]:
        """Wait for the output topics to reach `expected`."""
        return asyncio.run(wait_for_outcome(self.stack.bootstrap, expected, timeout))

    def redis_balances(self, v2: bool = False) -> dict[str, dict[str, int]]:
        """Every beneficiary's balances as Redis holds them (with v2 also reserved and withdrawn)."""

        async def read() -> dict[str, dict[str, int]]:
            s = open_store(self.stack.redis_url, 0)
            try:
                return await s.balances(v2)
            finally:
                await s.close()

        return asyncio.run(read())


def fresh_env(stack: Any, tmp: Path, label: str) -> Env:
    """Empty topics and Redis db, a new consumer group, HTTP port and data dir: one test's private pipeline."""
    from streams.ops import stack as stack_mod
    from streams.state import redis_conn

    asyncio.run(reset_topics(stack.bootstrap, 4))
    redis_conn.flush(stack.redis_url)
    port, sink_port = stack_mod.pick_free_ports(2)
    env = {
        "FENXIAO_KAFKA": stack.bootstrap,
        "FENXIAO_REDIS_URL": stack.redis_url,
        "FENXIAO_APP_ID": f"fx-{label}-{uuid.uuid4().hex[:8]}",
        "FENXIAO_WEB_PORT": str(port),
        "FENXIAO_SINK_PORT": str(sink_port),
        "FENXIAO_VAR_DIR": str(tmp / "var"),
        "FENXIAO_PARTITIONS": "4",
    }
    return Env(stack, env, tmp, port)
