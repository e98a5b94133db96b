"""Threads from the cores a process may use (workers.threads), checked in real child processes where it matters.

torch sizes its pool when it is imported and does not follow a later affinity change, so the children below
import torch first, then restrict themselves, then load what the project loads: without ``apply_torch_threads``
they would keep the larger pool. The cgroup and topology readers run on real files laid out as the kernel does.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE, ROOT
from schemas.settings import SettingsError
from workers.threads import cgroup_cpu_limit, checker_processes, physical_cores, thread_budget, usable_cores

needs_two_cpus = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                    reason="needs CPU affinity and at least two CPUs to restrict a child to one")


def _child(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (this repo importable, offline) and return its stdout."""
    base = {k: v for k, v in os.environ.items() if k not in ("SAMPLEFLEET_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], env={**base, **OFFLINE, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


RESTRICT = "import os, torch; before = torch.get_num_threads(); os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"


# ------------------------------------------------------------------------------------------- real processes
@needs_two_cpus
@pytest.mark.model
def test_engine_in_a_restricted_child_runs_one_thread(model_path):
    out = _child(RESTRICT + "from workers.engines.hf import TransformersEngine\n"
                 f"e = TransformersEngine({model_path!r}, torch_dtype='float32')\n"
                 "print(before, torch.get_num_threads(), e.describe()['threads'])")
    before, after, described = out.split()
    assert int(before) >= 2 and (after, described) == ("1", "1")


@needs_two_cpus
@pytest.mark.model
def test_prm_in_a_restricted_child_runs_one_thread(model_path):
    out = _child(RESTRICT + "from workers.scoring.prm_models import JudgePRM\n"
                 f"JudgePRM({model_path!r}, torch_dtype='float32')\n"
                 "print(torch.get_num_threads())")
    assert out == "1"


@needs_two_cpus
def test_override_wins_over_the_cores():
    out = _child("import torch; from workers.threads import apply_torch_threads\n"
                 "print(apply_torch_threads(), torch.get_num_threads())", SAMPLEFLEET_THREADS="1")
    assert out == "1 1"


@needs_two_cpus
def test_omp_num_threads_given_by_hand_is_left_alone():
    code = ("import torch; from workers.threads import apply_torch_threads\n"
            "print(apply_torch_threads(), torch.get_num_threads())")
    assert _child(code, OMP_NUM_THREADS="1") == "1 1"  # the budget here is 2, but the user asked for 1
    assert _child(code, OMP_NUM_THREADS="1", SAMPLEFLEET_THREADS="2") == "2 2"  # ours, when set, wins


@needs_two_cpus
def test_checker_count_follows_the_affinity():
    code = "from workers.scoring.orm_kinds import MathORM; print(MathORM().workers)"
    assert _child(code) == str(min(2, usable_cores()))
    assert _child("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n" + code) == "1"
    assert _child(code, SAMPLEFLEET_THREADS="1") == "1"


def test_checker_processes_are_single_threaded():
    from workers.scoring.base import InferRequest
    from workers.scoring.orm_kinds import MathORM

    orm = MathORM(workers=2)
    try:
        reqs = [InferRequest(messages=[{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": f"\\boxed{{{a}}}"}]) for a in ("1/2", "0.5")]
        assert orm(reqs, ["0.5", "\\frac{1}{2}"]) == [1.0, 1.0]  # both go to the checkers (not the same string)
        pids = [c.process.pid for c in orm._pool._checkers]
        threads = [next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("Threads:")) for pid in pids]
    finally:
        orm.close()
    assert threads == ["Threads:\t1"] * 2


# ------------------------------------------------------------------------------------------- budget and settings
def test_budget_is_the_override_or_the_cores(monkeypatch):
    monkeypatch.delenv("SAMPLEFLEET_THREADS", raising=False)
    assert thread_budget() == usable_cores() >= 1
    monkeypatch.setenv("SAMPLEFLEET_THREADS", "3")
    assert thread_budget() == 3 and checker_processes() == 2  # never more checkers than MAX_CHECKERS
    monkeypatch.setenv("SAMPLEFLEET_THREADS", "0")
    with pytest.raises(SettingsError, match="SAMPLEFLEET_THREADS"):
        thread_budget()


# ------------------------------------------------------------------------------------------- topology and cgroups
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_hyperthread_siblings_count_once(tmp_path):
    for cpu, siblings in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")):
        _write(tmp_path / f"cpu{cpu}" / "topology" / "core_cpus_list", siblings)
    assert physical_cores([0, 1, 2, 3], tmp_path) == 2
    assert physical_cores([0, 2], tmp_path) == 1
    assert physical_cores([0, 7], tmp_path) == 2  # no topology for cpu7: it counts alone


def _cgroup(tmp_path: Path, lines: str) -> Path:
    _write(tmp_path / "self_cgroup", lines)
    return tmp_path / "self_cgroup"


def test_cgroup_v2_quota_tightest_of_the_chain(tmp_path):
    root = tmp_path / "fs"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "kubepods" / "cpu.max", "400000 100000")
    _write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000")
    _write(root / "kubepods" / "pod1" / "c1" / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(root, _cgroup(tmp_path, "0::/kubepods/pod1/c1")) == 1.5
    assert cgroup_cpu_limit(root, _cgroup(tmp_path, "0::/other")) is None


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "fs"
    _write(root / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us", "200000")
    _write(root / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us", "100000")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    lines = "4:memory:/docker\n3:cpu,cpuacct:/docker\n0::/"
    assert cgroup_cpu_limit(root, _cgroup(tmp_path, lines)) == 2.0
    assert cgroup_cpu_limit(root, _cgroup(tmp_path, "3:cpu,cpuacct:/")) is None  # -1: no quota
