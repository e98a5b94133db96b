"""One helper for every keep-alive thread: a shard's lease renewal, the S3 output lock's heartbeat, the
finaliser's lock extension and the reaper's loop.

Each is a daemon thread that calls a function every N seconds until it is stopped or the function returns
False (what it keeps alive is gone). A call that raises is logged and the thread goes on: Redis or S3 away for
a moment must not end the hold, the next call may get through.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class KeepAlive:
    """Calls ``fn`` every ``every`` seconds in a daemon thread, from ``start()`` (or entering a ``with`` block)
    until ``stop()`` (or leaving it), or until ``fn`` returns False: then ``lost`` is True and ``on_lost`` is
    called. ``at_once``: the first call right at the start. ``what`` names the thread and starts its log lines."""

    def __init__(self, fn: Callable[[], bool | None], every: float, *, what: str, at_once: bool = False,
                 on_lost: Callable[[], None] = lambda: None) -> None:
        self.fn, self.every, self.what, self.at_once, self.on_lost = fn, every, what, at_once, on_lost
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"keepalive {what}", daemon=True)

    def start(self) -> "KeepAlive":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "KeepAlive":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        if self.at_once and not self._call():
            return
        while not self._stop.wait(self.every):
            if not self._call():
                return

    def _call(self) -> bool:
        """One call of ``fn``; False once it said the hold is lost."""
        try:
            if self.fn() is False:
                self.lost = True
                self.on_lost()
                return False
        except Exception as exc:  # noqa: BLE001 - away for a moment: the next call may get through
            log.warning("%s: %s: %s; trying again in %gs", self.what, type(exc).__name__, exc, self.every)
        return True
