"""A stopped worker (SIGTERM: Kubernetes, a spot preemption, `docker stop`) hands its shard back in seconds.

SIGTERM (and a first Ctrl-C) is Celery's warm shutdown: no new task is taken and the running one is waited
for, however long it runs. From Celery's ``worker_shutting_down`` signal, ``Stopper.stop`` adds:

1. the stage running gets ``SAMPLEFLEET_SOFT_SHUTDOWN`` seconds (default 5) to finish on its own (a score or
   aggregate stage usually does);
2. if it still runs then, a thread hands its shard back (``JobState.hand_back``: the lease is re-armed as
   sent again) and sends the stage's task again at once, so an idle worker starts it within a second;
3. ``Preempted`` is raised in the thread running the stage; the task ends "handed back" and is acknowledged,
   and Celery's warm shutdown completes (exit 0);
4. a process still alive ``EXIT_MARGIN`` seconds later (a stage stuck in C code that never comes back to
   Python, a shutdown wedged on a silent broker) leaves with ``os._exit(1)``: its shard runs elsewhere already.
   With the defaults a worker is gone 13 s after SIGTERM at the latest, well inside the 30 s grace period.

How the stage is stopped: with ``--pool solo`` (every GPU worker) the stage runs in the main thread, so the
stop is a signal (``POKE``) sent to that thread whose handler raises ``Preempted``, as Ctrl-C raises
KeyboardInterrupt: it breaks a sleep, a lock or queue wait, an asyncio select (the client engine), and any
decode loop (transformers, vLLM, LMDeploy step in Python) at its next step, with no engine having to check a
flag. A stage in a pool thread (``--pool threads``) gets the exception through the interpreter's async
exception, at its next Python step. ``Preempted`` is a BaseException, so an engine's ``except Exception``
cannot swallow it. Wherever it lands, nothing is lost: every stage is idempotent and the shard was handed
back before the stop (the same reasoning that makes a SIGKILL at any point safe).

Why not Celery's cold shutdown (``REMAP_SIGTERM=SIGQUIT`` with ``worker_soft_shutdown_timeout``): its soft
wait sleeps inside the signal handler, which under ``--pool solo`` runs on the task's own thread, so the
task is frozen while it "gets time to finish"; then it cancels the task with ``pool.terminate_job``, which
the solo pool does not implement: ``NotImplementedError`` is raised into the task, which counts a failed
attempt and waits out a back-off, and the lease was never released (measured with Celery 5.7.0, see
RELIABILITY.md). So REMAP_SIGTERM must stay unset on these workers (``workers.app`` warns if it is set).

``POKE`` is also the heartbeat's tick (``workers.heartbeat``): one handler serves both.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

POKE = signal.SIGURG  # ignored by default: a stray one before the handler is installed does nothing
EXIT_MARGIN = 8.0  # seconds from the hand-back to the forced exit


class Preempted(BaseException):
    """Raised in a stage whose worker is stopping, after its shard was handed back."""


@dataclass(eq=False)
class _Stage:
    what: str
    hand_back: Callable[[], None]
    thread: int = field(default_factory=threading.get_ident)
    done: threading.Event = field(default_factory=threading.Event)
    doomed: bool = False  # set by the stopping thread: the next poke raises Preempted in the stage


class Stopper:
    """The process's running stages and its stop sequence (one per process: ``STOPPER``)."""

    def __init__(self) -> None:
        self._stages: dict[int, _Stage] = {}  # thread id -> its stage; read from a signal handler: no lock
        self._stopping = False
        self.on_poke: list[Callable[[], None]] = []  # run by every poke, in the main thread (the heartbeat)

    def install(self) -> None:
        """Install the poke handler; from the main thread (Celery's ``worker_init``)."""
        signal.signal(POKE, self._poked)
        signal.siginterrupt(POKE, False)  # restart C-level system calls; Python's own waits still wake up

    @contextmanager
    def stage(self, what: str, hand_back: Callable[[], None]) -> Iterator[None]:
        """Run a stage that a stop may interrupt after calling ``hand_back``."""
        stage = _Stage(what, hand_back)
        self._stages[stage.thread] = stage
        try:
            yield
        finally:
            self._stages.pop(stage.thread, None)
            stage.done.set()
            if stage.doomed and stage.thread != threading.main_thread().ident:  # a pending async exception
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(stage.thread), None)

    def stop(self, budget: float) -> None:
        """Begin the stop sequence (once); returns at once, the work is done in a thread."""
        if self._stopping:
            return
        self._stopping = True
        threading.Thread(target=self._stop, args=(budget,), name="samplefleet-stop", daemon=True).start()

    def _stop(self, budget: float) -> None:
        deadline = time.monotonic() + budget
        for stage in list(self._stages.values()):
            stage.done.wait(max(0.0, deadline - time.monotonic()))
        running = [s for s in list(self._stages.values()) if not s.done.is_set()]
        for stage in running:
            log.warning("%s: still running %gs after the stop signal; handing the shard back", stage.what, budget)
            try:
                stage.hand_back()
            except Exception as exc:  # noqa: BLE001 - Redis away: the lease expires and the reaper sends it
                log.warning("%s: hand-back failed (%s: %s); the reaper sends the shard again once its lease "
                            "expires", stage.what, type(exc).__name__, exc)
        exit_at = time.monotonic() + EXIT_MARGIN
        while running and time.monotonic() < exit_at:  # poke again until each stage has stopped
            for stage in running:
                stage.doomed = True
                self._interrupt(stage.thread)
            running = [s for s in running if not s.done.wait(1.0)]
        left = exit_at - time.monotonic()
        if left > 0:
            time.sleep(left)  # the warm shutdown normally ends the process before this
        print(f"samplefleet worker: still running {budget + EXIT_MARGIN:g}s after the stop signal; exiting now",
              file=sys.stderr, flush=True)
        os._exit(1)

    def _interrupt(self, thread: int) -> None:
        if thread == threading.main_thread().ident:
            signal.pthread_kill(thread, POKE)
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(Preempted))

    def _poked(self, signum, frame) -> None:
        for hook in self.on_poke:
            hook()
        stage = self._stages.get(threading.get_ident())
        if stage is not None and stage.doomed:
            stage.doomed = False
            raise Preempted(stage.what)


STOPPER = Stopper()
