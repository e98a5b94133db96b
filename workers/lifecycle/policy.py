"""The one failure policy: what a failed attempt of any task (a shard's step, or a job's finalisation) leads to.

- Bad input or configuration (``PermanentError``) fails at once: retrying cannot help.
- Anything else (``TransientError`` or an unexpected exception) is retried after a back-off, full jitter: a
  random share of ``base`` x 2^attempts, at most ``cap`` seconds, or ``RetryAfter.seconds`` when the error
  says how long to wait; after ``SAMPLEFLEET_MAX_ATTEMPTS`` attempts it fails.
- A shard delivered more than twice that many times without finishing (its worker dies each time) is a poison
  shard: failed.
A shard that fails never blocks its job: the job ends failed (or partial), and `producer resume` retries it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from schemas.errors import PermanentError, RetryAfter


@dataclass(frozen=True)
class FailurePolicy:
    most: int  # attempts at most (SAMPLEFLEET_MAX_ATTEMPTS)
    base: float = 2.0
    cap: float = 300.0

    @property
    def most_deliveries(self) -> int:
        """Deliveries past which a shard is poison: room for a lost worker per attempt, and a retried publish."""
        return 2 * self.most

    @staticmethod
    def permanent(exc: BaseException) -> bool:
        return isinstance(exc, PermanentError)

    def backoff(self, attempts: int, exc: BaseException | None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        if isinstance(exc, RetryAfter):
            return max(0.0, exc.seconds)
        return min(self.cap, self.base * 2 ** attempts) * random.random()

    def backoffs(self, exc: BaseException | None) -> list[float]:
        """The wait after the 1st, 2nd, ... failed attempt, for a retry counted where the count is kept (Redis)."""
        return [self.backoff(n, exc) for n in range(1, self.most + 1)]

    def gives_up(self, exc: BaseException, attempts: int) -> bool:
        """True when the failed attempt that made ``attempts`` is the last one."""
        return self.permanent(exc) or attempts >= self.most
