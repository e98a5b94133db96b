"""The one failure policy (workers.lifecycle.policy) and the keep-alive helper (workers.keepalive)."""
from __future__ import annotations

import pickle
import threading
import time

from schemas.errors import ConfigError, RetryAfter, StageTimeLimit, TransientError
from workers.keepalive import KeepAlive
from workers.lifecycle.policy import FailurePolicy


def test_permanent_errors_fail_at_once_and_the_rest_retry_up_to_the_limit():
    policy = FailurePolicy(3)
    assert policy.gives_up(ConfigError("--x 1: bad"), 1)
    assert not policy.gives_up(TransientError("reset"), 2) and policy.gives_up(TransientError("reset"), 3)
    assert not policy.gives_up(ValueError("unknown"), 1)  # an unexpected error is retried like a transient one
    assert not policy.gives_up(StageTimeLimit("hung"), 1) and policy.most_deliveries == 6


def test_the_back_off_is_full_jitter_capped_unless_the_error_says_when():
    policy = FailurePolicy(4, base=1.0, cap=5.0)
    for attempts in range(1, 6):
        assert 0 <= policy.backoff(attempts, TransientError("x")) <= min(5.0, 2 ** attempts)
    assert policy.backoffs(RetryAfter("throttled", 7.5)) == [7.5] * 4
    again = pickle.loads(pickle.dumps(RetryAfter("throttled", 7.5)))  # as the prefork pool sends it
    assert (str(again), again.seconds) == ("throttled", 7.5)


def test_keepalive_calls_until_stopped_logs_failures_and_ends_when_the_hold_is_lost(caplog):
    calls: list[float] = []
    with KeepAlive(lambda: calls.append(time.monotonic()), 0.02, what="beat", at_once=True):
        time.sleep(0.15)
    assert len(calls) >= 3
    seen = len(calls)
    time.sleep(0.05)
    assert len(calls) == seen  # stopped

    results = iter([ConnectionError("away"), True, False])
    lost = threading.Event()

    def renew() -> bool:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    hold = KeepAlive(renew, 0.01, what="lease", on_lost=lost.set).start()
    assert lost.wait(2) and hold.lost
    hold.stop()
    assert "lease: ConnectionError: away" in caplog.text
