"""A throwaway fleet for benchmarks: one redis-server and Celery worker processes on 127.0.0.1, all stopped when
the ``with`` block ends, built on the test kit's harness (tests/kits/fleet.py: the same servers and workers the
tests start), and helpers that every fleet benchmark needs: machine facts, queue depths, medians.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable
for path in (REPO, REPO / "tests"):  # the scripts here run as `python bench/X.py`: the project and the test kits
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from kits import OFFLINE  # noqa: E402
from kits.fleet import RedisServer, Worker, Workers, free_port, redis_binary, stop  # noqa: E402,F401


@dataclass
class Fleet:
    """``with Fleet() as f: f.worker("control,aggregate", "name")``: Redis first, workers on demand, all stopped at
    exit. ``workers`` maps each running worker's name to its process (delete one to stop waiting for it)."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sf-bench-")))
    port: int = field(default_factory=free_port)
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server = RedisServer(self.workdir / "redis", port=self.port)
        self.pool = Workers(self.url, self.workdir)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def redis(self) -> subprocess.Popen | None:
        return self.server.proc

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO), "SAMPLEFLEET_BROKER_URL": self.url, **extra}

    def __enter__(self) -> "Fleet":
        import redis

        self.server.start()
        self.db = redis.Redis.from_url(self.url)
        return self

    def __exit__(self, *exc) -> None:
        running = [w for w in self.pool.started if self.workers.get(w.name.split("@")[0]) is w.proc]
        self.pool.stop_all(running)
        self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def worker(self, queues: str, name: str, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO",
               **env: str) -> subprocess.Popen:
        """Start one `celery worker --pool POOL` serving ``queues`` (``concurrency`` tasks at once with the threads
        or gevent pool); not waited for (see ``ready``)."""
        started = self.pool.start(queues, wait=False, name=name, pool=pool, concurrency=concurrency,
                                  loglevel=loglevel, **env)
        self.workers[name] = started.proc
        return started.proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def ready(self, timeout: float = 300) -> None:
        """Wait until every started worker answers a ping (workers start in parallel, so this is one wait)."""
        waiting = [w for w in self.pool.started if self.workers.get(w.name.split("@")[0]) is w.proc]
        self.pool.wait_ready(*waiting, timeout=timeout)

    def producer(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "producer", *args, "--broker", self.url], cwd=REPO, env=self.env(),
                              capture_output=True, text=True, check=True, **kwargs)

    def job(self, job_id: str) -> dict[str, str]:
        from workers.lifecycle.keys import Keys

        return {k.decode(): v.decode() for k, v in self.db.hgetall(Keys(job_id).job).items()}

    def wait_job(self, job_id: str, timeout: float = 1800, poll: float = 0.1, on_poll=None) -> dict[str, str]:
        """Poll until the job has finished; its record. ``on_poll()`` runs at every poll (e.g. a queue sampler)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_poll:
                on_poll()
            job = self.job(job_id)
            if "finished" in job:
                return job
            time.sleep(poll)
        raise RuntimeError(f"job {job_id} not finished after {timeout:.0f}s: {self.job(job_id)}")


def job_id_of(stdout: str) -> str:
    """The job id `producer submit --broker` prints (its last line)."""
    return stdout.strip().splitlines()[-1].split()[-1]


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def machine() -> dict:
    """Where and with what a figure was measured."""
    import celery
    import pydantic
    import redis

    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "celery": celery.__version__, "redis_py": redis.__version__,
            "pydantic": pydantic.__version__, "redis_server": run(redis_binary(), "--version"),
            "git_head": run("git", "rev-parse", "--short", "HEAD"),
            "uncommitted_files": len(run("git", "status", "--porcelain").splitlines()),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}


def write_results(name: str, record: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
