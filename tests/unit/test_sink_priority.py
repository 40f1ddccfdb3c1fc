"""The sink process yields the CPU to the worker (FENXIAO_SINK_NICE): itself and every thread it starts afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams import names
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# In a child, so this test process keeps its own priority: the niceness of the main thread and of a thread started
# after yield_cpu (ClickHouse's and asyncio's threads start after it), each read from /proc as the kernel has it.
CHILD = """
import os, sys, threading
from streams.sinks.sink_process import yield_cpu

def nice_of(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])

got = []
yield_cpu(int(sys.argv[1]))
t = threading.Thread(target=lambda: got.append(nice_of(threading.get_native_id())))
t.start()
t.join()
print(nice_of(threading.get_native_id()), got[0])
"""


def _run(nice: int, start_at: int = 0) -> tuple[int, int]:
    def preexec() -> None:
        os.nice(start_at)

    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(nice)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        preexec_fn=preexec if start_at else None,
        timeout=60,
    )
    main, thread = out.stdout.split()
    return int(main), int(thread)


def test_the_sink_and_the_threads_it_starts_run_at_the_set_niceness() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    want = max(7, base)
    assert _run(7) == (want, want)


def test_a_sink_started_nicer_than_the_setting_stays_as_nice() -> None:
    """yield_cpu only ever lowers the priority: an operator's `nice -n 15 fenxiao sink` is kept."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _run(7, start_at=15) == (min(19, base + 15), min(19, base + 15))


def test_zero_leaves_the_priority_alone() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _run(0) == (base, base)


def test_the_default_is_ten_and_a_bad_value_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(names.ENV_SINK_NICE, raising=False)
    assert Settings().sink_nice == 10
    for bad in ("20", "-1", "low"):
        monkeypatch.setenv(names.ENV_SINK_NICE, bad)
        with pytest.raises(ValidationError) as e:
            Settings()
        assert names.ENV_SINK_NICE in str(e.value)
