"""The public development token key never serves beyond this machine: the worker refuses to start, naming the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams import names
from streams.api import auth

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_with_the_dev_key_is_allowed(host: str) -> None:
    assert auth.exposure_problem(host, auth.DEV_TOKEN_KEY) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "fenxiao.example", "::ffff:8.8.8.8"])
def test_any_other_address_with_the_dev_key_is_refused(host: str) -> None:
    problem = auth.exposure_problem(host, auth.DEV_TOKEN_KEY)
    assert problem is not None and names.ENV_TOKEN_KEY in problem and "random secret" in problem


def test_a_real_key_may_serve_anywhere() -> None:
    assert auth.exposure_problem("0.0.0.0", "a-long-random-secret-from-the-operator") is None


def test_the_worker_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(names.ENV_PREFIX)}
    env.update({names.ENV_WEB_HOST: "0.0.0.0", names.ENV_VAR_DIR: str(tmp_path), "PYTHONPATH": str(REPO)})
    r = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", "--config", str(REPO / "tests/fixtures/basic/fenxiao.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode != 0
    assert names.ENV_TOKEN_KEY in out and "dev-only-change-me" in out and "FENXIAO_WEB_HOST=127.0.0.1" in out
    assert not (tmp_path / "faust").exists(), "it must refuse before it starts anything"


def test_compose_requires_a_token_key() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    assert "FENXIAO_TOKEN_KEY: ${FENXIAO_TOKEN_KEY:?" in compose
    assert "dev-only-change-me" not in compose
