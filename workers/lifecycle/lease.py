"""Holding a shard while a stage runs: the lease renewed in a thread, and the stage's time limit.

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

from schemas.errors import StageTimeLimit
from workers.keepalive import KeepAlive

log = logging.getLogger(__name__)


class Hold:
    """Calls ``renew`` every ``every`` seconds while the ``with`` block runs, until it returns False (the lease was
    given to another worker). With ``limit`` > 0: once the block has run that long, ``StageTimeLimit`` is raised
    in the thread that entered it."""

    def __init__(self, renew: Callable[[], bool], every: float, *, limit: float = 0.0, what: str = "") -> None:
        self.renew, self.limit, self.what = renew, limit, what
        self.timed_out = False
        self._target = threading.get_ident()
        self._started = 0.0
        self._keepalive = KeepAlive(self._tick, every, what=what, on_lost=self._lost)

    def __enter__(self) -> Hold:
        self._started = time.monotonic()
        self._keepalive.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._keepalive.stop()

    def _tick(self) -> bool:
        if self.limit and not self.timed_out and time.monotonic() - self._started > self.limit:
            self.timed_out = True
            log.error("%s: still running after SAMPLEFLEET_STAGE_TIME_LIMIT=%gs; stopping it", self.what, self.limit)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(StageTimeLimit))
        return self.renew()

    def _lost(self) -> None:
        log.warning("%s: lease lost (the shard was given to another worker); finishing anyway, the stages are "
                    "idempotent", self.what)
