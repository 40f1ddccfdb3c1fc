"""What production does to the pipeline: malformed input, a broker restart, bad config, absent services."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest

from streams import names
from streams.ops import stack as stack_mod
from tests.integration import scenario
from tests.integration.scenario import Env
from tests.integration.test_pipeline import assert_outcome, crash_and_recover

INPUTS = list(names.INPUT_TOPICS)


def _malformed(rng: random.Random, valid: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n records that are not valid events, of every class of bad input, each with a unique marker."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        marker = f"fuzz-{i}"
        base = dict(rng.choice(valid))
        topic = base["topic"]
        v = dict(base["value"])
        v["event_id"] = marker
        kind = i % 14
        if kind == 0:
            value: Any = "{not json " + marker
        elif kind == 1:
            value = "\udcff\udcfe" + marker + "\udc80"  # invalid UTF-8 bytes once encoded by the producer
        elif kind == 2:
            value = json.dumps([marker, 1, 2])
        elif kind == 3:
            required = {
                "fenxiao.clicks": "ref",
                "fenxiao.signups": "user_id",
                "fenxiao.orders": "order_id",
                "fenxiao.tiers": "tier",
            }[topic]
            v.pop(required, None)
            value = v
        elif kind == 4:
            v["ts"] = rng.choice(["yesterday", "2026-13-45T00:00:00.000Z", "2026-11-11T00:00:00", 1794355200000])
            value = v
        elif kind == 5:
            topic = names.ORDERS
            value = {
                "event_id": marker,
                "ts": "2026-11-11T00:00:00.000Z",
                "order_id": marker,
                "buyer_id": "b",
                "type": "paid",
                "amount_cents": rng.choice(["100", 1.5, True, None, -1, 10**12 + 1, 10**30]),
            }
        elif kind == 6:
            topic = names.ORDERS
            value = {
                "event_id": marker,
                "ts": "2026-11-11T00:00:00.000Z",
                "order_id": marker,
                "buyer_id": "b",
                "type": rng.choice(["shipped", "PAID", "", 3]),
                "amount_cents": 100,
            }
        elif kind == 7:
            v["event_id"] = marker + "x" * 129
            value = v
        elif kind == 8:
            value = v | {"event_id": rng.choice([5, None, "", ["a"]])}
            value["ts"] = marker  # keeps the record recognisable; an invalid ts too
        elif kind == 9:
            value = "null"
        elif kind == 10:
            value = json.dumps(marker)
        elif kind == 11:
            topic = names.SIGNUPS
            value = {"event_id": marker, "ts": "2026-11-11T00:00:00.000Z", "user_id": "x" * 10_000}
        elif kind == 12:
            topic = names.SIGNUPS
            value = {"event_id": marker, "ts": "2026-11-11T00:00:00.000Z", "user_id": marker, "distributor": "yes"}
        else:
            value = "".join(chr(rng.randrange(0xDC80, 0xDD00)) for _ in range(40)) + marker
        out.append({"topic": topic, "key": rng.choice([marker, base["key"]]), "value": value})
    return out


def test_fuzzed_input_is_dead_lettered_and_the_rest_is_exact(pipe: Env) -> None:
    """Malformed records of every class mixed into a valid scenario: each one dead-lettered, nothing else moves."""
    example = "messy"
    rng = random.Random(20261111)
    valid = scenario.load_records(example)
    bad = _malformed(rng, valid, 2000)
    mixed = list(valid)
    for rec in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), rec)
    expected = scenario.load_expected(example)
    expected = {**expected, "dead_letters": dict(Counter(expected["dead_letters"]) + Counter(invalid_event=len(bad)))}
    w = pipe.worker(example)
    try:
        pipe.produce(mixed)
        out, diff = pipe.outcome(expected, timeout=180)
        invalid = [d for d in out.dead_letters if d["reason"] == "invalid_event"]
        for d in invalid:
            assert d["detail"], f"a dead letter without a readable detail: {d}"
            assert d["topic"] in INPUTS and isinstance(d["offset"], int)
        markable = [f"fuzz-{i}" for i in range(len(bad)) if i % 14 != 9]  # a bare JSON null carries no marker
        raws = "\n".join(d["raw"] for d in invalid)
        missing = [m for m in markable if not re.search(rf"{m}(?!\d)", raws)][:10]
        assert not missing, f"malformed records not dead-lettered: {missing}"
        assert w.proc is not None and w.proc.poll() is None, "the worker stopped"
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()


def test_broker_restart_mid_scenario(pipe: Env) -> None:
    """The broker goes away and comes back while the worker runs; the worker reconnects, the outcome is exact."""
    example = "messy"
    records = scenario.load_records(example)
    half = len(records) // 2
    w = pipe.worker(example)
    cfg = pipe.stack.cfg
    try:
        pipe.produce(records[:half])
        deadline = time.monotonic() + 60
        while scenario.http_json(pipe.web_port, "/status")["applied"] == 0:
            assert time.monotonic() < deadline, "nothing applied before the restart"
            time.sleep(0.2)
        stack_mod.stop(cfg, services=(stack_mod.KAFKA,))
        time.sleep(3)
        stack_mod.start_kafka(cfg)
        stack_mod.wait_ready(cfg, 120)
        pipe.produce(records[half:])
        out, diff = pipe.outcome(scenario.load_expected(example), timeout=180)
        assert w.proc is not None and w.proc.poll() is None, f"the worker died:\n{w.log_tail()}"
        assert_outcome(pipe, example, out, diff, w)
    finally:
        w.stop()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bad_config_is_refused_at_start_naming_the_key(pipe: Env) -> None:
    """A config over three levels, a negative rate, too few rates or an unknown campaign key: refused, key named."""
    cases = {
        "[program]\nlevels = 4\n[tiers.standard]\nrates_bps = [1, 2, 3, 4]\n": "program.levels",
        "[tiers.standard]\nrates_bps = [1000, -5, 200]\n": "tiers.standard.rates_bps",
        "[tiers.standard]\nrates_bps = [1000, 500]\n": "tiers.standard.rates_bps",
        "[tiers.standard]\nrates_bps = [1, 2, 3]\n[campaigns.d11]\nmax_totl_bps = 5\n": "campaigns.d11.max_totl_bps",
    }
    for i, (text, key) in enumerate(cases.items()):
        path = pipe.tmp / f"bad{i}.toml"
        path.write_text(text)
        r = _cli(pipe.env, "worker", "--config", str(path))
        assert r.returncode == 2, f"{key}: exit {r.returncode}\n{r.stderr}"
        assert key in r.stderr, f"the error does not name {key}: {r.stderr}"
        assert len(r.stderr.strip().splitlines()) <= 3, f"not a short error: {r.stderr}"


def test_unreachable_services_say_what_to_do(pipe: Env) -> None:
    """A worker pointed at nothing fails fast with the variable to fix and the command to run."""
    (free,) = stack_mod.pick_free_ports(1)
    cfg = pipe.config("basic")
    r = _cli({**pipe.env, "FENXIAO_KAFKA": f"127.0.0.1:{free}"}, "worker", "--config", str(cfg))
    assert r.returncode == 2 and "FENXIAO_KAFKA" in r.stderr and "fenxiao stack up" in r.stderr, r.stderr
    r = _cli({**pipe.env, "FENXIAO_REDIS_URL": f"redis://127.0.0.1:{free}/0"}, "worker", "--config", str(cfg))
    assert r.returncode == 2 and "FENXIAO_REDIS_URL" in r.stderr, r.stderr


def _flushall(pipe: Env) -> None:
    import redis

    redis.Redis.from_url(pipe.stack.redis_url).flushall()


def test_redis_loses_everything_while_stopped(pipe: Env) -> None:
    """FLUSHALL between two runs: the next worker rebuilds Redis from the input topics, exactly."""
    example = "messy"
    expected = scenario.load_expected(example)
    w = pipe.worker(example)
    try:
        pipe.produce(scenario.load_records(example))
        out, diff = pipe.outcome(expected)
        assert not diff, diff
    finally:
        w.stop()
    _flushall(pipe)
    w2 = pipe.worker(example)
    deadline = time.monotonic() + 120
    while pipe.redis_balances() != expected["balances"]:
        assert time.monotonic() < deadline, f"Redis was not rebuilt:\n{w2.log_tail()}"
        time.sleep(1)
    out, diff = pipe.outcome(expected)
    assert_outcome(pipe, example, out, diff, w2)


def test_redis_loses_everything_while_running(pipe: Env) -> None:
    """FLUSHALL under a running worker: it stops before deciding anything on empty state; a restart is exact."""
    example = "messy"
    records = scenario.load_records(example)
    half = len(records) // 2
    w = pipe.worker(example)
    try:
        pipe.produce(records[:half])
        deadline = time.monotonic() + 60
        while scenario.http_json(pipe.web_port, "/status")["applied"] == 0:
            assert time.monotonic() < deadline, "nothing applied before the flush"
            time.sleep(0.2)
        _flushall(pipe)
        pipe.produce(records[half:])
        assert w.proc is not None
        rc = w.proc.wait(60)
        assert rc != 0, "the worker kept running on empty state"
        assert "no longer holds this worker's state" in w.log.read_text(errors="replace")
    finally:
        w.kill()
    w2 = pipe.worker(example)
    out, diff = pipe.outcome(scenario.load_expected(example), timeout=180)
    assert_outcome(pipe, example, out, diff, w2)


@pytest.mark.parametrize("seed", [1111, 618, 1212])
def test_seeded_random_crash_point(pipe: Env, seed: int) -> None:
    """SIGKILL at a seeded random point and batch of a backlog replay, then a restart: the outcome is exact."""
    rng = random.Random(seed)
    point = rng.choice(["before_produce", "after_produce", "after_commit"])
    crash_and_recover(pipe, "messy", point, batch=rng.randint(2, 12), batch_size=30)


def test_secrets_and_tokens_never_reach_the_log(pipe: Env) -> None:
    """The token key, and tokens sent in headers or ?token=, appear nowhere in an info-level worker log."""
    import urllib.error
    import urllib.request

    from streams.api import auth

    secret = "s3cr3t-token-key-" + "q" * 24
    env = {**pipe.env, "FENXIAO_TOKEN_KEY": secret}
    w = scenario.WorkerProcess(pipe.config("basic"), env, pipe.tmp / "worker.log", loglevel="info").start()
    try:
        good = auth.issue(secret, auth.OPERATOR, None, 600)
        forged = auth.issue("not-the-key", auth.OPERATOR, None, 600)
        scenario.wait_http(pipe.web_port, "/health", 90, w, token="")
        pipe.produce(scenario.load_records("basic"))
        base = f"http://127.0.0.1:{pipe.web_port}"
        for path, tok in [("/status", good), ("/status", forged), ("/api/distributors/u1-0", good)]:
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {tok}"})
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(req, timeout=5).read()
        for path in (f"/dashboard?token={good}", f"/api/distributors/u1-0/feed?token={forged}"):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + path, timeout=2).read(100)
        time.sleep(2)
    finally:
        w.stop()
    log = w.log.read_text(errors="replace")
    assert "Ready" in log or "ready" in log, "the info-level log is empty, so this test would prove nothing"
    for s in (secret, good, forged, good.split(".")[1], good.split(".")[2]):
        assert s not in log, f"a secret or token reached the worker log: {s[:12]}…"
