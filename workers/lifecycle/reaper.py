"""The reaper: sends again the shards of lost workers, and finalises jobs whose finaliser was lost.

It runs with no operator: every worker runs one in a thread (one at a time does the work, under a
lock), and `producer wait`, `status` and `resume` make the same pass, so a fleet recovers even while
they are the only thing watching it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from schemas.fleet import QUEUE_AGGREGATE, TASK_FINALISE
from schemas.jobstate import Status
from schemas.settings import Settings
from workers.keepalive import KeepAlive
from workers.lifecycle.keys import Keys
from workers.lifecycle.state import JobState, active_jobs, forget_expired

if TYPE_CHECKING:  # the local run needs no Redis client installed
    import redis

log = logging.getLogger(__name__)
Send = Callable[[str, list[Any], str], None]  # (task name, args, queue)


class Reaper:
    def __init__(self, db: redis.Redis, send: Send, env: Settings) -> None:
        self.db, self.send, self.env = db, send, env
        self.lock = db.lock(Keys.reaper, timeout=3 * env.reap_interval, blocking=False, thread_local=False)

    def start(self) -> KeepAlive:
        """Sweep now, then every SAMPLEFLEET_REAP_INTERVAL seconds, in a daemon thread (every worker runs one)."""
        return KeepAlive(self.maybe_sweep, self.env.reap_interval, what="reaper", at_once=True).start()

    def maybe_sweep(self) -> int:
        """Sweep if no other reaper holds the lock; the tasks sent."""
        held = self.lock.owned() and self.lock.reacquire() or self.lock.acquire(blocking=False)
        return self.sweep() if held else 0

    def sweep(self) -> int:
        """One pass over the running jobs (finished ones cost nothing: their keys expire); the tasks sent."""
        forget_expired(self.db, self.env.finished_ttl)
        sent = 0
        for job_id in active_jobs(self.db):
            state = JobState(self.db, job_id)
            for lease in state.reap(self.env.lease_expire):
                log.warning("job %s shard %d: lease of %s expired; %s sent again", job_id, lease.index,
                            lease.stage, lease.task)
                self.send(lease.task, lease.args, lease.queue)
                sent += 1
            sent += self._finalise_if_orphaned(state)
        return sent

    def _finalise_if_orphaned(self, state: JobState) -> int:
        """A job whose shards are all settled, still running, with no finaliser at work: its finaliser died."""
        try:
            record = state.record()
        except KeyError:
            return 0
        if record.status is not Status.RUNNING or record.finalise_failures >= self.env.max_attempts:
            return 0
        if not state.complete(record.shards):
            return 0
        if self.db.exists(state.keys.finalising):
            return 0
        log.warning("job %s: every shard settled and no finaliser at work; finalise sent", state.id)
        self.send(TASK_FINALISE, [state.id], QUEUE_AGGREGATE)
        return 1
