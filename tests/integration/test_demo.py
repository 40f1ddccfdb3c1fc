"""`fenxiao demo` as a newcomer runs it: its own stack, a small sale, the dashboard still up after the replay.

The demo starts its own Kafka and Redis (in a temporary var dir, on free ports), so this test does not use
the session stack; it stops that stack at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streams import names
from streams.ops.stack import pick_free_ports

ROOT = Path(__file__).resolve().parents[2]
READY = "demo ready: serving until Ctrl-C"


def _env(tmp_path: Path) -> dict[str, str]:
    kafka, _controller, redis, web = pick_free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(names.ENV_PREFIX)}
    return env | {
        names.ENV_VAR_DIR: str(tmp_path / "var"),
        names.ENV_KAFKA: f"127.0.0.1:{kafka}",
        names.ENV_REDIS_URL: f"redis://127.0.0.1:{redis}/0",
        names.ENV_WEB_PORT: str(web),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "60",  # narrow: a URL must still come out on one line
    }


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_the_demo_stays_up_after_the_replay_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "streams.cli", "demo", "--users", "60", "--orders", "150", "--duration", "4"]
    demo = subprocess.Popen(  # SIGINT ignored, as for `make run &` in a script: Ctrl-C must still stop it
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_sigint
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if READY in line:
                break
        out = "\n".join(lines)
        assert READY in out, out[-3000:]
        urls = re.findall(r"^Live dashboard: (http://127\.0\.0\.1:\d+/dashboard\?token=\S+)$", out, re.MULTILINE)
        assert len(urls) == 2 and urls[0] == urls[1], out[-3000:]  # whole, on one line, before and after the replay
        assert "withdrawal demo-wd-1:" in out and "award award:" in out
        with urllib.request.urlopen(urls[-1], timeout=10) as page:  # the replay is over, the dashboard answers
            assert page.status == 200
        time.sleep(2)
        with urllib.request.urlopen(urls[-1], timeout=10) as page:
            assert page.status == 200
        assert demo.poll() is None

        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, rest
        assert "stopping the worker" in rest and "The worker has stopped" in rest
        try:
            urllib.request.urlopen(urls[-1], timeout=5)
            raise AssertionError("the dashboard still answers after Ctrl-C")
        except OSError:
            pass
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        subprocess.run(
            [sys.executable, "-m", "streams.cli", "stack", "down"], env=env, cwd=ROOT, timeout=120, check=False
        )
