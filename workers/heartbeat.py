"""The worker's liveness: a local file saying when its main thread last ran Python; never Redis's health.

A thread pokes the main thread every ``SAMPLEFLEET_HEARTBEAT_INTERVAL`` seconds (``workers.preemption.POKE``);
the poke's handler, which runs only when the main thread executes Python, notes the time, and the thread
writes the file (``pid``, ``beat``: the thread's last write, ``main``: the main thread's last tick). The
main thread is where a ``--pool solo`` worker runs its consumer loop and its stages, so the file stays fresh
while it is idle, while it decodes a shard for hours (every decode step is Python), and while Celery retries
a lost broker connection (a Redis outage restarts no worker). It goes stale when the process is frozen
(SIGSTOP, a cgroup freeze) or its main thread is stuck in C code that never returns to Python (a hung CUDA
call, a wedged driver): what a liveness probe is for. ``deploy/worker_health.py live NAME`` reads it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from schemas.settings import Settings

log = logging.getLogger(__name__)


def heartbeat_path(name: str, env: Settings) -> Path:
    """Where the worker ``name`` (as given to ``-n``, e.g. ``generator@pod-1``) keeps its heartbeat."""
    folder = Path(env.heartbeat_dir or Path(tempfile.gettempdir()) / "samplefleet-heartbeat")
    return folder / name.replace("/", "_")


class Heartbeat:
    """Writes the heartbeat file of this worker process from a thread; see the module's docstring."""

    def __init__(self, name: str, env: Settings) -> None:
        self.path, self.every = heartbeat_path(name, env), env.heartbeat_interval
        self.main_seen = time.time()
        self._main = threading.main_thread().ident

    def tick(self) -> None:
        """The poke's hook: runs in the main thread."""
        self.main_seen = time.time()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        threading.Thread(target=self._loop, name="samplefleet-heartbeat", daemon=True).start()

    def _loop(self) -> None:
        from workers.preemption import POKE

        while True:
            signal.pthread_kill(self._main, POKE)
            time.sleep(self.every)
            try:
                self._write()
            except OSError as exc:  # a full disk: the probe will say the heartbeat is stale
                log.warning("heartbeat %s: %s", self.path, exc)

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "beat": time.time(), "main": self.main_seen}))
        os.replace(tmp, self.path)


def check(name: str, env: Settings, now: float | None = None) -> str:
    """'' when the worker on this host is alive, else why not (one line)."""
    path = heartbeat_path(name, env)
    try:
        beat = json.loads(path.read_text())
    except FileNotFoundError:
        return f"no heartbeat at {path} (not started yet, or not on this host)"
    except (OSError, ValueError) as exc:
        return f"heartbeat {path} unreadable: {exc}"
    now = time.time() if now is None else now
    try:
        os.kill(int(beat["pid"]), 0)
    except ProcessLookupError:
        return f"process {beat['pid']} is gone (heartbeat {path})"
    except PermissionError:
        pass  # another user's process: it exists
    stale = env.heartbeat_stale
    if now - beat["beat"] > stale:
        return f"heartbeat not written for {now - beat['beat']:.0f}s (> {stale:g}s): process frozen?"
    if now - beat["main"] > stale:
        return f"main thread has not run Python for {now - beat['main']:.0f}s (> {stale:g}s): stuck in a C call?"
    return ""
