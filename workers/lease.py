"""Holding a shard: the lease renewed in a thread while a stage runs, and the stage's time limit.

A renewal is one small Redis call every ``SAMPLEFLEET_LEASE_RENEW`` seconds, whatever the stage is doing
(torch releases the GIL), so a slow but alive worker keeps its shard however long it takes. With
``SAMPLEFLEET_STAGE_TIME_LIMIT`` set, a stage still running past it gets ``StageTimeLimit`` raised in
its thread (between two Python steps of the engine), and its shard is released with that error.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

from schemas.errors import TransientError

log = logging.getLogger(__name__)


class StageTimeLimit(TransientError):
    """A stage ran past SAMPLEFLEET_STAGE_TIME_LIMIT (a hung engine?); counted as a failed attempt."""


class KeepAlive:
    """Calls ``renew`` every ``every`` seconds until stopped or until it returns False (the hold was lost).

    With ``limit`` > 0: once the body has run that long, ``StageTimeLimit`` is raised in the thread that
    entered the block.
    """

    def __init__(self, renew: Callable[[], bool], every: float, *, limit: float = 0.0, what: str = "") -> None:
        self.renew, self.every, self.limit, self.what = renew, every, limit, what
        self.lost = False
        self.timed_out = False
        self._stop = threading.Event()
        self._target = threading.get_ident()
        self._thread = threading.Thread(target=self._loop, name=f"keepalive {what}", daemon=True)

    def __enter__(self) -> "KeepAlive":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            if self.limit and not self.timed_out and time.monotonic() - self._started > self.limit:
                self.timed_out = True
                log.error("%s: still running after SAMPLEFLEET_STAGE_TIME_LIMIT=%gs; stopping it", self.what,
                          self.limit)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target),
                                                           ctypes.py_object(StageTimeLimit))
            try:
                if not self.renew():
                    self.lost = True
                    log.warning("%s: lease lost (the shard was given to another worker); finishing anyway, "
                                "the stages are idempotent", self.what)
                    return
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: the next renewal may get through
                log.warning("%s: lease renewal failed (%s); retrying", self.what, exc)
