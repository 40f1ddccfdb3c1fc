"""The benchmark's pure helpers and cgroup paths (the benchmark's results themselves are never asserted)."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest

from bench.bench_stats import (
    amdahl_fit,
    amdahl_projection,
    amdahl_speedup,
    cpu_by_component,
    cpu_ms_per_1k,
    fanout_counts,
    karp_flatt,
    latency_summary,
    meets,
    percentile,
    pipeline_outputs,
    rate,
)
from bench.cgroups import CgroupError, Cgroups, hierarchies


def test_percentile_nearest_rank() -> None:
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 100) == 5.0
    assert percentile(xs, 0) == 1.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([7.0], 95) == 7.0


def test_percentile_empty_and_bad_p() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_rate() -> None:
    assert rate(1000, 2.0) == 500.0
    assert math.isnan(rate(10, 0.0))


def test_latency_summary_in_ms() -> None:
    s = latency_summary([0.010, 0.020, 0.030, 0.040])
    assert s["n"] == 4
    assert s["p50_ms"] == pytest.approx(20.0)
    assert s["p99_ms"] == pytest.approx(40.0)
    assert s["max_ms"] == pytest.approx(40.0)


def test_meets() -> None:
    assert meets(60.0, 50.0, higher_is_better=True) is True
    assert meets(300.0, 250.0, higher_is_better=False) is False
    assert meets(math.nan, 1.0, higher_is_better=True) is None


# ---------------------------------------------------------------- scaling: serial fraction, Amdahl projection


def test_karp_flatt_hand_computed() -> None:
    # e = (1/S - 1/n) / (1 - 1/n): S=1.6, n=2 -> (0.625 - 0.5) / 0.5; S=2.5, n=4 -> (0.4 - 0.25) / 0.75
    assert karp_flatt(1.6, 2) == pytest.approx(0.25)
    assert karp_flatt(2.5, 4) == pytest.approx(0.2)
    assert karp_flatt(4.0, 4) == pytest.approx(0.0)
    assert math.isnan(karp_flatt(math.nan, 4))
    with pytest.raises(ValueError):
        karp_flatt(1.0, 1)


def test_amdahl_fit_least_squares_by_hand() -> None:
    # x = 1 - 1/n, y = 1/S - 1/n: (0.5, 0.125) and (0.75, 0.15); f = (0.0625 + 0.1125) / (0.25 + 0.5625) = 14/65
    assert amdahl_fit({2: 1.6, 4: 2.5}) == pytest.approx(14 / 65)


def test_amdahl_fit_recovers_an_exact_amdahl_curve() -> None:
    # f = 0.1: S(2) = 1 / 0.55, S(4) = 1 / 0.325 (hand-computed from Amdahl's law)
    assert amdahl_fit({1: 1.0, 2: 1 / 0.55, 4: 1 / 0.325}) == pytest.approx(0.1)


def test_amdahl_fit_of_standbys_is_fully_serial_or_worse() -> None:
    # one owner + standbys: no speedup -> f = 1; slower with more processes -> f > 1 (not clamped)
    assert amdahl_fit({2: 1.0, 4: 1.0}) == pytest.approx(1.0)
    # S(2) = 0.8: y = 1.25 - 0.5 = 0.75, x = 0.5 -> f = 1.5
    assert amdahl_fit({2: 0.8}) == pytest.approx(1.5)
    assert math.isnan(amdahl_fit({1: 1.0}))
    assert math.isnan(amdahl_fit({2: math.nan}))


def test_amdahl_projection_hand_computed() -> None:
    # f = 0.1: 1/(0.1 + 0.9/8) = 1/0.2125, 1/(0.1 + 0.9/16) = 1/0.15625 = 6.4, 1/(0.1 + 0.9/32) = 1/0.128125
    p = amdahl_projection(0.1)
    assert p == {"8": pytest.approx(1 / 0.2125), "16": pytest.approx(6.4), "32": pytest.approx(1 / 0.128125)}
    assert amdahl_speedup(0.0, 16) == pytest.approx(16.0)
    assert amdahl_speedup(1.5, 32) == pytest.approx(1.0)  # clamped to fully serial
    assert amdahl_speedup(-0.2, 8) == pytest.approx(8.0)  # superlinear measurements clamp to linear
    assert math.isnan(amdahl_speedup(math.nan, 8))


# ---------------------------------------------------------------- fan-out-matched baseline


def test_fanout_counts_spread_evenly_and_sum_exactly() -> None:
    # floor((i+1)*10/4) - floor(i*10/4): 2-0, 5-2, 7-5, 10-7
    assert fanout_counts(4, 10) == [2, 3, 2, 3]
    assert fanout_counts(3, 1) == [0, 0, 1]
    assert fanout_counts(5, 5) == [1, 1, 1, 1, 1]
    assert fanout_counts(3, 0) == [0, 0, 0]
    assert fanout_counts(0, 0) == []
    assert sum(fanout_counts(15_692, 52_001)) == 52_001
    with pytest.raises(ValueError):
        fanout_counts(0, 3)
    with pytest.raises(ValueError):
        fanout_counts(3, -1)


def test_pipeline_outputs_counts_every_output_topic() -> None:
    assert pipeline_outputs(entries=30, bindings=4, dead_letters=1, limited_clicks=2) == 37
    assert pipeline_outputs(0, 0, 0, 0) == 0
    with pytest.raises(ValueError):
        pipeline_outputs(1, -1, 0, 0)


# ---------------------------------------------------------------- CPU accounting


def test_cpu_ms_per_1k() -> None:
    # 1.5e9 ns = 1,500 ms over 3,000 order records = 500 ms per 1,000
    assert cpu_ms_per_1k(1_500_000_000, 3000) == pytest.approx(500.0)
    assert math.isnan(cpu_ms_per_1k(1, 0))


def test_cpu_by_component_keeps_the_phase_and_the_infrastructure() -> None:
    before = {"broker": 1_000_000_000, "pipeline-worker-1": 0, "plain-baseline": 500_000_000}
    after = {
        "broker": 2_000_000_000,  # +1,000 ms / 2,000 records -> 500
        "redis": 500_000_000,  # born during the phase: +500 ms -> 250
        "pipeline-worker-1": 3_000_000_000,  # 1,500
        "pipeline-worker-2": 1_000_000_000,  # 500
        "plain-baseline": 900_000_000,  # another phase's group: left out
    }
    got = cpu_by_component(before, after, 2000, "pipeline")
    assert got == {"broker": 500.0, "redis": 250.0, "worker-1": 1500.0, "worker-2": 500.0, "workers_total": 2000.0}


# ---------------------------------------------------------------- cgroup paths (a temp dir stands in for cgroupfs)


def fake_cgroupfs_rmdir(path: Path) -> None:
    """rmdir as cgroupfs does it: refused while a process is in the group, control files go with the dir."""
    procs = path / "cgroup.procs"
    if procs.exists():
        root_procs = (path.parents[2] / "cgroup.procs").read_text().split()
        if any(pid not in root_procs for pid in procs.read_text().split()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
    for f in path.iterdir():
        if f.is_dir():
            raise OSError(errno.EBUSY, "child group", str(path))
        f.unlink()
    path.rmdir()


def split_root(tmp_path: Path) -> Path:
    for d in ("cpu", "cpuacct"):
        (tmp_path / d).mkdir()
    return tmp_path


def test_hierarchies_apart_together_or_missing(tmp_path: Path) -> None:
    with pytest.raises(CgroupError):
        hierarchies(tmp_path)
    split_root(tmp_path)
    assert hierarchies(tmp_path) == (tmp_path / "cpuacct", tmp_path / "cpu")
    (tmp_path / "cpu,cpuacct").mkdir()
    assert hierarchies(tmp_path) == (tmp_path / "cpu,cpuacct", tmp_path / "cpu,cpuacct")


def test_cgroups_paths_pids_usage_quota(tmp_path: Path) -> None:
    root = split_root(tmp_path)
    cg = Cgroups("run-1", root=root, rmdir=fake_cgroupfs_rmdir)
    cg.add("worker-1", 4242)
    acct = root / "cpuacct" / "fenxiao-bench" / "run-1" / "worker-1"
    cpu = root / "cpu" / "fenxiao-bench" / "run-1" / "worker-1"
    assert (acct / "cgroup.procs").read_text() == "4242\n"
    assert (cpu / "cgroup.procs").read_text() == "4242\n"
    assert cg.pids("worker-1") == [4242]
    (acct / "cpuacct.usage").write_text("1234567\n")
    assert cg.usage_ns("worker-1") == 1_234_567
    assert cg.usage_all() == {"worker-1": 1_234_567}
    cg.set_quota("worker-1", 25_000, 100_000)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "25000\n"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000\n"
    assert not (acct / "cpu.cfs_quota_us").exists()
    (cpu / "cpu.stat").write_text("nr_periods 18\nnr_throttled 5\nthrottled_time 123\n")
    assert cg.throttled("worker-1") == {"nr_periods": 18, "nr_throttled": 5, "throttled_time": 123}
    with pytest.raises(ValueError):
        cg.set_quota("worker-1", 0)


def test_cgroup_names_stay_one_segment(tmp_path: Path) -> None:
    root = split_root(tmp_path)
    for bad in ("../etc", "a/b", "", "Worker"):
        with pytest.raises(ValueError):
            Cgroups(bad, root=root)
    cg = Cgroups("run-2", root=root)
    for bad in ("..", "x/../../y", "-x"):
        with pytest.raises(ValueError):
            cg.add(bad, 1)


def test_cgroups_refuse_an_existing_run(tmp_path: Path) -> None:
    root = split_root(tmp_path)
    (root / "cpu" / "fenxiao-bench" / "run-3").mkdir(parents=True)
    with pytest.raises(CgroupError):
        Cgroups("run-3", root=root)


def test_close_moves_processes_back_and_removes_every_group(tmp_path: Path) -> None:
    root = split_root(tmp_path)
    cg = Cgroups("run-4", root=root, rmdir=fake_cgroupfs_rmdir)
    cg.add("broker", 100)
    cg.add("redis", 200)
    assert cg.close() == []
    for h in ("cpu", "cpuacct"):
        assert sorted((root / h / "cgroup.procs").read_text().split()) == ["100", "200"]
        assert not (root / h / "fenxiao-bench").exists()


def test_close_keeps_another_runs_groups(tmp_path: Path) -> None:
    root = split_root(tmp_path)
    other = Cgroups("run-5", root=root, rmdir=fake_cgroupfs_rmdir)
    other.create("worker-1")
    cg = Cgroups("run-6", root=root, rmdir=fake_cgroupfs_rmdir)
    cg.add("worker-1", 300)
    assert cg.close() == []
    for h in ("cpu", "cpuacct"):
        assert (root / h / "fenxiao-bench" / "run-5" / "worker-1").is_dir()
        assert not (root / h / "fenxiao-bench" / "run-6").exists()


def test_close_reports_a_group_it_cannot_remove(tmp_path: Path) -> None:
    root = split_root(tmp_path)

    def busy(path: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    cg = Cgroups("run-7", root=root, rmdir=busy)
    cg.create("sink")
    left = cg.close()
    assert any("sink" in x for x in left) and len(left) == 4  # sink and run dir, in both hierarchies
