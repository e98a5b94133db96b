"""The local run's counting pass, beside the model load: every row read and checked once, in a child process.

Why a process: the pass is pure Python (about 25 us a row, so seconds at a million rows), and the model load is
mostly Python too (imports, module construction), so a thread would only take turns with it under the GIL. The
child is forked before the run imports torch or reads any data, and it only parses rows. Where there is no fork
(macOS and Windows default to spawn, which would import the caller's script again) the pass runs in this process
when its result is first asked for.
"""
from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from producer.datasets import PromptStream
from schemas.errors import DataError

Counted = tuple[int, list[str]]  # (prompts in the whole job, the bad rows skipped)


def _count(stream: PromptStream) -> Counted:
    return stream.count(), list(stream.bad_rows)


def _serve(stream: PromptStream, conn: Connection) -> None:
    try:
        conn.send(_count(stream))
    except Exception as exc:  # noqa: BLE001 - a DataError above all; the parent raises it as its own
        conn.send(exc)


class Counting:
    """A counting pass under way: ``result()`` waits for it and raises its error; ``finished(seconds)`` says
    whether it is over, so that an early failure (no such file, a bad first row) is seen before a model loads."""

    def __init__(self, stream: PromptStream, child: BaseProcess | None = None, conn: Connection | None = None) -> None:
        self.stream, self.child, self.conn = stream, child, conn
        self._counted: Counted | None = None

    def finished(self, seconds: float) -> bool:
        return self.conn is None or self._counted is not None or self.conn.poll(seconds)

    def result(self) -> Counted:
        if self._counted is None:
            self._counted = _count(self.stream) if self.conn is None else self._receive()
        return self._counted

    def _receive(self) -> Counted:
        try:
            outcome = self.conn.recv()
        except EOFError:
            self.child.join()
            raise DataError(f"reading {', '.join(map(str, self.stream.spec.datasets))}: the counting pass ended "
                            f"without a result (exit code {self.child.exitcode})") from None
        self.child.join()  # it sends its answer last; reaped now, not left a zombie for the rest of the run
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@contextlib.contextmanager
def count_aside(stream: PromptStream) -> Iterator[Counting]:
    """Start the counting pass in a forked child (in this process where there is no fork). The child is stopped
    on exit, so a run that fails while it still counts does not wait for it."""
    if "fork" not in multiprocessing.get_all_start_methods():
        yield Counting(stream)
        return
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_serve, args=(stream, send), name="samplefleet-count", daemon=True)
    child.start()
    send.close()
    try:
        yield Counting(stream, child, receive)
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        receive.close()
