"""How many threads torch (and the math ORM's checker processes) may use here: the cores this process may run on.

Why: torch sizes its intra-op pool once, from the CPUs it sees when it is imported; it does not follow an
affinity set later, and it ignores a cgroup CPU quota (a container limited to 2 CPUs on a 64-core host gets
64 threads). Threads beyond the cores a process really gets spin against each other: on this project's
2-core machine a generator beside one busy process ran 5-7x slower. So every process that runs torch calls
``apply_torch_threads()`` when it loads a model (the transformers engine, the PRMs), and the math ORM sizes
its checker pool with ``checker_processes()``. ``SAMPLEFLEET_THREADS`` overrides the count for both: on one
box shared by several workers, give each its share (see bench/README.md, "One-box layouts").
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

from schemas.settings import settings

log = logging.getLogger(__name__)

#: Checker processes at most: the checks of one shard rarely keep more busy (bench/orm_throughput.py).
MAX_CHECKERS = 2


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: Iterable[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many distinct physical cores ``cpus`` span (hyperthread siblings count once; each CPU alone when the
    topology cannot be read). torch's own default counts physical cores too."""
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topology / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            cores.add(f"cpu{cpu}")
    return len(cores)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _up(base: Path, inner: str) -> list[Path]:
    """The cgroup folder of ``inner`` under ``base`` and each of its ancestors up to ``base``."""
    parts = [p for p in inner.split("/") if p]
    return [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                     self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (the tightest of it and its ancestors; cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is none."""
    limits = []
    for line in (_read(self_cgroup) or "").splitlines():
        _, controllers, inner = line.split(":", 2)
        if controllers == "":  # v2: mounted at the root, or at unified/ beside the v1 controllers
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            for folder in _up(base, inner):
                quota, _, period = (_read(folder / "cpu.max") or "max").partition(" ")
                if quota != "max" and period:
                    limits.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):
            base = next((root / n for n in (controllers, "cpu", "cpu,cpuacct") if (root / n).is_dir()), None)
            for folder in _up(base, inner) if base else []:
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def usable_cores() -> int:
    """The physical cores of the affinity mask, capped by the cgroup quota (rounded up, as the JVM does)."""
    cores = physical_cores(allowed_cpus())
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit)) if limit else cores)


def thread_budget() -> int:
    """``SAMPLEFLEET_THREADS`` when set, else ``usable_cores()``."""
    return settings().threads or usable_cores()


def apply_torch_threads() -> int:
    """Set torch's intra-op threads of this process to ``thread_budget()``; returns the count. An
    ``OMP_NUM_THREADS`` given by hand (torch's own setting) is left alone unless ``SAMPLEFLEET_THREADS`` is set."""
    import torch

    if settings().threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = thread_budget()
    if torch.get_num_threads() != n:
        log.info("torch intra-op threads: %d -> %d (cores this process may use, or SAMPLEFLEET_THREADS)",
                 torch.get_num_threads(), n)
        torch.set_num_threads(n)
    return n


def checker_processes() -> int:
    """How many math-checker processes to start: the budget's cores, at most ``MAX_CHECKERS``.

    Each checker is one single-threaded Python process (sympy; no torch, no BLAS), so one per core. In one
    process the checks run between generation batches, never beside them, so they may take every core.
    """
    return max(1, min(MAX_CHECKERS, thread_budget()))
