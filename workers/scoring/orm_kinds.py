"""The built-in outcome reward models: math, accuracy, format, repetition, length.

Each reads its options from ``--orm_kwargs`` (unknown keys are refused) and returns one float per request;
the pipeline counts a score > 0 as a pass. The math check runs sympy in killable checker processes, because
a hostile expression (a power tower, say) can keep sympy busy for hours.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import multiprocessing
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, ClassVar

from schemas.errors import ConfigError, PermanentError
from workers.scoring.answers import check, extract_answer, final_answers, normalize, reference_answer
from workers.scoring.base import ORM, InferRequest
from workers.threads import checker_processes

if TYPE_CHECKING:
    from schemas import JobSpec

log = logging.getLogger(__name__)

#: Checks sent to a checker process in one message: amortises the IPC, small enough to spread a shard.
CHUNK_SIZE = 32
#: How long a new checker process may take to import sympy and report ready.
START_TIMEOUT = 120.0
_READY = "ready"


def _options(spec: JobSpec, orm: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``--orm_kwargs`` over the ORM's defaults; a key the ORM does not know is an error that lists the known ones."""
    for key in spec.orm_kwargs:
        if key not in defaults:
            allowed = ", ".join(defaults) or "none (this ORM takes no options)"
            raise ConfigError(f"--orm_kwargs {key!r}: not an option of --orm_model {orm}; allowed: {allowed}")
    return {**defaults, **spec.orm_kwargs}


def _require(key: str, value: Any, valid: Callable[[Any], bool], expected: str) -> Any:
    """``value`` when it is a number (never a bool) that ``valid`` accepts, else a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value):
        raise ConfigError(f"--orm_kwargs {key}={value!r}: must be {expected}")
    return value


def _whole(value: Any) -> bool:
    return isinstance(value, int) and value >= 1


def _answers(request: InferRequest, ground_truth: str | None) -> tuple[str, str] | None:
    """(reference answer, candidate answer), or None when either is missing: that candidate scores 0."""
    reference = reference_answer(ground_truth)
    candidate = extract_answer(request.response)
    return (reference, candidate) if reference and candidate else None


# --- math: symbolic equivalence in killable processes -----------------------------------------------------------

def _serve(conn: Connection) -> None:
    """A checker process: answers each chunk one check at a time, so the parent can tell which check overran."""
    # math-verify warns that its own timeout is off: on purpose, the parent enforces the deadline.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send(_READY)
    while (chunk := conn.recv()) is not None:
        for reference, candidate in chunk:
            try:
                conn.send((check(reference, candidate), None))
            except Exception as exc:  # noqa: BLE001 - one bad expression must not end the process
                conn.send((None, type(exc).__name__))  # not str(exc): printing a sympy object can hang too


@dataclass(eq=False)
class _Checker:
    """One checker process and the checks it has been sent but not yet answered."""

    process: BaseProcess
    conn: Connection
    todo: deque[int] = field(default_factory=deque)
    since: float = 0.0  # when its current check (todo[0]) started: the chunk's dispatch or the previous answer


class _CheckerPool:
    """Processes that run ``check`` with a hard deadline per check.

    A check past its deadline is abandoned by killing its process (SIGALRM, math-verify's own timeout, cannot
    stop sympy inside C code and only works in a main thread); that check is unread and a fresh process takes
    the rest of its chunk. Processes come from a forkserver (spawn where there is none), never a fork of a
    parent that may hold torch threads; the forkserver preloads sympy, so a replacement starts in milliseconds.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self.timeout = timeout
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._ctx = multiprocessing.get_context(method)
        if method == "forkserver":  # takes effect if this process has not started its forkserver yet
            self._ctx.set_forkserver_preload(["math_verify", __name__])
        self._checkers = [self._start() for _ in range(size)]
        try:
            for checker in self._checkers:
                self._await_ready(checker)
        except BaseException:
            self.close()
            raise

    def _start(self) -> _Checker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, args=(child,), name="samplefleet-math-check", daemon=True)
        process.start()
        child.close()
        return _Checker(process, parent)

    @staticmethod
    def _await_ready(checker: _Checker) -> None:
        try:
            ready = checker.conn.poll(START_TIMEOUT) and checker.conn.recv() == _READY
        except EOFError:
            ready = False
        if not ready:
            checker.process.join(1.0)
            raise PermanentError(f"math ORM: a checker process did not start (exit code {checker.process.exitcode}, "
                                 f"waited up to {START_TIMEOUT:.0f} s); its error, if any, is above. A script that "
                                 "scores must guard its entry point with if __name__ == '__main__'.")

    def run(self, pairs: list[tuple[str, str]]) -> list[bool | None]:
        """``check``'s verdict per (reference, candidate) pair, in order; an overrun or a crashed check: None."""
        scores: list[bool | None] = [None] * len(pairs)
        size = max(1, min(CHUNK_SIZE, math.ceil(len(pairs) / len(self._checkers))))
        queue = deque(list(range(i, min(i + size, len(pairs)))) for i in range(0, len(pairs), size))
        while queue or any(c.todo for c in self._checkers):
            for checker in self._checkers:
                if not checker.todo and queue:
                    if not checker.process.is_alive():  # died between calls (the OOM killer, say)
                        checker = self._replace(checker)
                    self._send(checker, queue.popleft(), pairs)
            busy = [c for c in self._checkers if c.todo]
            deadline = min(c.since for c in busy) + self.timeout
            ready = wait([c.conn for c in busy], timeout=max(0.0, deadline - time.monotonic()))
            for checker in busy:
                if checker.conn in ready:
                    self._receive(checker, pairs, scores, queue)
                elif time.monotonic() - checker.since > self.timeout:
                    self._abandon(checker, pairs, queue, f"took over {self.timeout:g} s")
        return scores

    @staticmethod
    def _send(checker: _Checker, chunk: list[int], pairs: list[tuple[str, str]]) -> None:
        checker.conn.send([pairs[i] for i in chunk])
        checker.todo.extend(chunk)
        checker.since = time.monotonic()

    def _receive(self, checker: _Checker, pairs: list[tuple[str, str]], scores: list[bool | None],
                 queue: deque[list[int]]) -> None:
        """Take every answer waiting in the pipe; a pipe closed mid-chunk means the check crashed its process."""
        try:
            while checker.todo and checker.conn.poll():
                score, error = checker.conn.recv()
                index = checker.todo.popleft()
                scores[index] = score
                if error:
                    log.warning("math check of %.80r against %.80r raised %s: unread", pairs[index][1],
                                pairs[index][0], error)
                checker.since = time.monotonic()
        except (EOFError, OSError):
            checker.process.join(1.0)
            self._abandon(checker, pairs, queue, f"ended its process (exit code {checker.process.exitcode})")

    def _abandon(self, checker: _Checker, pairs: list[tuple[str, str]], queue: deque[list[int]], why: str) -> None:
        """Leave the current check unread (its default), replace the process, requeue the rest of the chunk."""
        culprit = checker.todo.popleft()
        log.warning("math check of %.80r against %.80r %s: unread, checker process replaced",
                    pairs[culprit][1], pairs[culprit][0], why)
        if checker.todo:
            queue.appendleft(list(checker.todo))
        self._replace(checker)

    def _replace(self, checker: _Checker) -> _Checker:
        self._stop(checker)
        fresh = self._start()
        self._checkers[self._checkers.index(checker)] = fresh
        self._await_ready(fresh)
        return fresh

    @staticmethod
    def _stop(checker: _Checker) -> None:
        checker.process.kill()
        checker.process.join()
        checker.conn.close()

    def close(self) -> None:
        """Ask every process to exit, and kill any that does not within a second."""
        for checker in self._checkers:
            try:
                checker.conn.send(None)
            except OSError:
                pass  # already gone
        for checker in self._checkers:
            checker.process.join(1.0)
            self._stop(checker)
        self._checkers = []


class MathORM(ORM):
    """1.0 when the candidate's final answer is mathematically the reference's (math-verify), else 0.0.

    The candidate is read like a careful reader reads it (``answers.final_answers``): boxes, ``# Answer`` lines,
    ``<answer>`` tags, ``####`` lines, answer phrases ("The answer is 7.", "**Answer:** 7") and, with none of
    those, a last line that is only the answer; it passes when it states at least one answer and every answer it
    states is the reference's (so several different answers fail). ``strict_format``: only the last marked
    answer counts (box, ``# Answer``, tag, ``####``), as before. A bare reference is used whole. Identical
    normalised answers pass at once; the rest go, deduplicated and in chunks, to checker processes with a
    per-check ``timeout``. No answer, an unparsable one or an overrun scores 0.0. ``workers`` checker
    processes (default ``workers.threads.checker_processes()``: the cores this process may use, at most 2, or
    ``SAMPLEFLEET_THREADS``), each single-threaded.
    """

    name: ClassVar[str] = "math"
    needs_ground_truth = True

    def __init__(self, timeout: float = 5.0, workers: int | None = None, strict_format: bool = False) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise ConfigError("--orm_model math needs the math-verify package: pip install 'math-verify>=0.9' "
                              "(or the project's scoring extra)")
        self.timeout = timeout
        self.workers = workers or checker_processes()
        self.strict_format = strict_format
        self._pool: _CheckerPool | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec) -> MathORM:
        opts = _options(spec, cls.name, {"timeout": 5.0, "workers": checker_processes(), "strict_format": False})
        if not isinstance(opts["strict_format"], bool):
            raise ConfigError(f"--orm_kwargs strict_format={opts['strict_format']!r}: must be true or false")
        return cls(timeout=_require("timeout", opts["timeout"], lambda v: v > 0, "a number of seconds > 0"),
                   workers=_require("workers", opts["workers"], _whole, "a whole number >= 1"),
                   strict_format=opts["strict_format"])

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return self.grade(infer_requests, ground_truths)[0]

    def grade(self, infer_requests: list[InferRequest],
              ground_truths: list[str | None]) -> tuple[list[float], list[bool]]:
        """(score per request, whether its answer was read): read means an answer was found and parsed, so a
        failing candidate that is read is wrong, not unreadable (the better ``rejected_response``)."""
        stated: dict[int, tuple[str, list[str]]] = {}  # request -> (reference, its answers)
        to_check: dict[tuple[str, str], bool | None] = {}  # (reference, answer) -> verdict, filled below
        for i, (request, truth) in enumerate(zip(infer_requests, ground_truths, strict=True)):
            reference = reference_answer(truth)
            answers = final_answers(request.response, strict=self.strict_format)
            if reference and answers:
                stated[i] = (reference, answers)
                to_check.update({(reference, a): None for a in answers if normalize(a) != normalize(reference)})
        to_check.update(zip(to_check, self._check(list(to_check)) if to_check else []))
        scores, read = [0.0] * len(infer_requests), [False] * len(infer_requests)
        for i, (reference, answers) in stated.items():
            verdicts = [True if normalize(a) == normalize(reference) else to_check[(reference, a)] for a in answers]
            scores[i] = float(all(verdicts))
            read[i] = any(v is not None for v in verdicts)
        log.debug("math ORM: %d requests, %d distinct symbolic checks", len(infer_requests), len(to_check))
        return scores, read

    def _check(self, pairs: list[tuple[str, str]]) -> list[bool | None]:
        """The pool's verdicts; the pool starts on first use and is dropped if a call fails half-way."""
        if self._pool is None:
            self._pool = _CheckerPool(self.workers, self.timeout)
        try:
            return self._pool.run(pairs)
        except BaseException:  # an interrupt included: answers still in the pipes must not leak into a later call
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


# --- the string and shape checks ------------------------------------------------------------------------------

class AccuracyORM(ORM):
    """1.0 when the final answers match exactly after normalisation (no sympy: fast, strict), else 0.0."""

    name: ClassVar[str] = "accuracy"
    needs_ground_truth = True

    @classmethod
    def from_spec(cls, spec: JobSpec) -> AccuracyORM:
        _options(spec, cls.name, {})
        return cls()

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [float(self._same(_answers(request, truth)))
                for request, truth in zip(infer_requests, ground_truths, strict=True)]

    @staticmethod
    def _same(pair: tuple[str, str] | None) -> bool:
        if pair is None:
            return False
        reference, candidate = (normalize(answer).casefold() for answer in pair)
        return bool(reference) and reference == candidate


class FormatORM(ORM):
    """1.0 when the candidate matches ``pattern`` (searched with DOTALL; anchors are the pattern's own), else 0.0."""

    name: ClassVar[str] = "format"
    needs_ground_truth = False
    DEFAULT_PATTERN: ClassVar[str] = r"^<think>.*?</think>\s*<answer>.*?</answer>$"

    def __init__(self, pattern: str = DEFAULT_PATTERN) -> None:
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"--orm_kwargs pattern {pattern!r}: not a valid regular expression: {exc}") from None

    @classmethod
    def from_spec(cls, spec: JobSpec) -> FormatORM:
        return cls(_options(spec, cls.name, {"pattern": cls.DEFAULT_PATTERN})["pattern"])

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [float(self.pattern.search(request.response) is not None) for request in infer_requests]


class RepetitionORM(ORM):
    """swift's RepetitionPenalty shifted up by 1: ``1 + max_penalty * (share of repeated word n-grams)``.

    swift returns the penalty itself, in [max_penalty, 0]; here a pass means score > 0, so the score is
    ``1 + penalty``, in [0, 1]: 1.0 without repetition, lower the more n-grams repeat (hence max_penalty is
    limited to [-1, 0]). Texts shorter than one n-gram score 1.0, as in swift.
    """

    name: ClassVar[str] = "repetition"
    needs_ground_truth = False

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0) -> None:
        self.ngram_size = ngram_size
        self.max_penalty = max_penalty

    @classmethod
    def from_spec(cls, spec: JobSpec) -> RepetitionORM:
        opts = _options(spec, cls.name, {"ngram_size": 3, "max_penalty": -1.0})
        return cls(ngram_size=_require("ngram_size", opts["ngram_size"], _whole, "a whole number >= 1"),
                   max_penalty=_require("max_penalty", opts["max_penalty"], lambda v: -1.0 <= v <= 0.0,
                                        "a number from -1 to 0 (the score is 1 + penalty)"))

    def penalty(self, text: str) -> float:
        """swift's value: max_penalty times the share of word n-grams (lower-cased) that repeat an earlier one."""
        words = text.lower().split()
        if len(words) < self.ngram_size:
            return 0.0
        ngrams = list(zip(*(words[i:] for i in range(self.ngram_size))))
        return (1 - len(set(ngrams)) / len(ngrams)) * self.max_penalty

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [1.0 + self.penalty(request.response) for request in infer_requests]


class LengthORM(ORM):
    """swift's SoftOverlong in words (whitespace-split, so no tokenizer): 1.0 up to ``max_words - buffer_words``,
    then linearly down to 0.0 at ``max_words`` and 0.0 beyond (so a candidate of max_words or more fails)."""

    name: ClassVar[str] = "length"
    needs_ground_truth = False

    def __init__(self, max_words: int = 1024, buffer_words: int = 256) -> None:
        if not 1 <= buffer_words <= max_words:
            raise ConfigError(f"--orm_kwargs buffer_words={buffer_words!r}: must be from 1 to max_words ({max_words})")
        self.max_words = max_words
        self.buffer_words = buffer_words

    @classmethod
    def from_spec(cls, spec: JobSpec) -> LengthORM:
        opts = _options(spec, cls.name, {"max_words": 1024, "buffer_words": 256})
        return cls(max_words=_require("max_words", opts["max_words"], _whole, "a whole number >= 1"),
                   buffer_words=_require("buffer_words", opts["buffer_words"], _whole, "a whole number >= 1"))

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [min(1.0, max(0.0, (self.max_words - len(request.response.split())) / self.buffer_words))
                for request in infer_requests]
