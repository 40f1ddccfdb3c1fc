"""cgroup v1 cpu/cpuacct groups for the benchmark: per-component CPU accounting and fixed CPU quotas.

Each component (broker, redis, worker-1, sink, baseline, ...) gets <hierarchy>/fenxiao-bench/<run>/<component>
in the cpuacct hierarchy (usage) and the cpu hierarchy (quota), whether they are mounted together
(`cpu,cpuacct`) or apart (`cpu` and `cpuacct`). Children forked later inherit their parent's group.
`close()` moves every process left back to the hierarchy's root and removes the groups, also after an error.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path

BASE = "fenxiao-bench"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_PERIOD_US = 100_000
# An eighth of a core per scaling worker: with a quarter each, four workers and the unthrottled broker, Redis,
# sink and harness (about a core at that rate) needed more than this box's 2 cores, so the box, not the quota,
# bounded the 4-worker run (docs/performance.md, 2026-12-06). --quota-us 25000 runs the quarter-core variant.
DEFAULT_QUOTA_US = 12_500


class CgroupError(Exception):
    """cgroup accounting cannot be used here; the message says why (the benchmark then records nulls)."""


def hierarchies(root: Path) -> tuple[Path, Path]:
    """(cpuacct dir, cpu dir) under a cgroup v1 root; the same directory when the two are mounted together."""
    for combined in ("cpu,cpuacct", "cpuacct,cpu"):
        d = root / combined
        if d.is_dir():
            return d, d
    acct, cpu = root / "cpuacct", root / "cpu"
    if not acct.is_dir() or not cpu.is_dir():
        raise CgroupError(f"no cgroup v1 cpu and cpuacct hierarchies under {root} (is this cgroup v2 only?)")
    return acct, cpu


def _check(name: str, what: str) -> str:
    """A component or run name that is one plain path segment, so a group can never land outside the run's dir."""
    if not NAME.match(name):
        raise ValueError(f"cgroup {what} name {name!r} must match {NAME.pattern}")
    return name


class Cgroups:
    """The benchmark run's groups: create, move pids in, read CPU usage, set quotas, clean up."""

    def __init__(self, run: str, root: Path = Path("/sys/fs/cgroup"), rmdir: Callable[[Path], None] = os.rmdir):
        self.acct_root, self.cpu_root = hierarchies(root)
        self.run = _check(run, "run")
        self._rmdir = rmdir
        self.components: list[str] = []
        self.dirs = sorted({self.acct_root, self.cpu_root})
        for d in self.dirs:
            try:
                (d / BASE / self.run).mkdir(parents=True, exist_ok=False)
            except OSError as e:
                raise CgroupError(f"cannot create {d / BASE / self.run}: {e} (cgroup v1 needs root)") from e

    def path(self, hierarchy: Path, component: str) -> Path:
        """The group directory of `component` in one hierarchy."""
        return hierarchy / BASE / self.run / _check(component, "component")

    def create(self, component: str) -> None:
        """Make the component's group in both hierarchies (idempotent)."""
        for d in self.dirs:
            self.path(d, component).mkdir(exist_ok=True)
        if component not in self.components:
            self.components.append(component)

    def add(self, component: str, pid: int) -> None:
        """Move process `pid` (all its threads) into the component's group, creating it if needed."""
        self.create(component)
        for d in self.dirs:
            _write(self.path(d, component) / "cgroup.procs", str(pid))

    def pids(self, component: str) -> list[int]:
        """Processes now in the component's cpuacct group."""
        f = self.path(self.acct_root, component) / "cgroup.procs"
        try:
            return [int(x) for x in f.read_text().split()]
        except FileNotFoundError:
            return []

    def usage_ns(self, component: str) -> int:
        """CPU time in ns used by the group so far (cpuacct.usage, counts processes that already exited)."""
        return int((self.path(self.acct_root, component) / "cpuacct.usage").read_text().strip() or 0)

    def usage_all(self) -> dict[str, int]:
        """usage_ns of every component created so far."""
        return {c: self.usage_ns(c) for c in self.components}

    def set_quota(self, component: str, quota_us: int, period_us: int = DEFAULT_PERIOD_US) -> None:
        """A fixed CPU quota: quota_us of CPU time per period_us (25,000 of 100,000 = a quarter core)."""
        if quota_us <= 0 or period_us <= 0:
            raise ValueError("quota and period must be > 0 microseconds")
        self.create(component)
        d = self.path(self.cpu_root, component)
        _write(d / "cpu.cfs_period_us", str(period_us))
        _write(d / "cpu.cfs_quota_us", str(quota_us))

    def throttled(self, component: str) -> dict[str, int]:
        """cpu.stat of the group (nr_periods, nr_throttled, throttled_time ns)."""
        out: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in (self.path(self.cpu_root, component) / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                if v.strip().isdigit():
                    out[k] = int(v)
        return out

    def close(self) -> list[str]:
        """Move the processes left to each hierarchy's root, remove the groups; returns what could not be removed."""
        left: list[str] = []
        for d in self.dirs:
            for c in self.components:
                g = self.path(d, c)
                with contextlib.suppress(FileNotFoundError):
                    for pid in (g / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):  # it exited meanwhile
                            _write(d / "cgroup.procs", pid)
                left += self._remove(g)
            left += self._remove(d / BASE / self.run)
            with contextlib.suppress(OSError):  # another run's groups may still be there
                if not any(p.is_dir() for p in (d / BASE).iterdir()):
                    self._rmdir(d / BASE)
        self.components = []
        return left

    def _remove(self, g: Path) -> list[str]:
        """rmdir one group; its name when it cannot be removed (a process still in it)."""
        if not g.exists():
            return []
        try:
            self._rmdir(g)
        except OSError as e:
            return [f"{g}: {e}"]
        return []


def _write(path: Path, value: str) -> None:
    """One write(2) of a control value, as cgroupfs expects."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, value.encode() + b"\n")
    finally:
        os.close(fd)
