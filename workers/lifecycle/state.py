"""A job's state in Redis: ``JobState``, whose every method is one atomic step (one Lua script of ``lua/``, or
one MULTI), so duplicates of a shard's tasks, in any order, settle it exactly once.

Time is Redis's own clock (``TIME``), so the machines' clocks need not agree.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from schemas.errors import StateError
from schemas.jobstate import Begin, HeldLease, JobRecord, Lease, Stage, Status
from schemas.settings import settings
from workers.broker import connect
from workers.lifecycle.keys import Keys
from workers.lifecycle.pipeline import Step
from workers.lifecycle.policy import FailurePolicy
from workers.lifecycle.scripts import Script

if TYPE_CHECKING:
    import redis
    import redis.lock

SCRIPTS = ("begin", "renew", "release", "stage_done", "fail", "retry", "reap", "hand_back", "finish", "cancel",
           "resume")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _now(db: redis.Redis) -> float:
    seconds, micros = db.time()
    return seconds + micros / 1e6


class JobState:
    """One job's state; every method is one atomic step."""

    def __init__(self, db: redis.Redis, job_id: str) -> None:
        self.db, self.id, self.keys = db, job_id, Keys(job_id)
        self._lua = {name: Script(db, name) for name in SCRIPTS}

    # --- the record --------------------------------------------------------------------------------------

    @classmethod
    def create(cls, db: redis.Redis, record: JobRecord, *, done: Iterable[int] = ()) -> JobState:
        """Record a new running job; ``done``: shards an earlier run finished (kept in the output)."""
        state, keys = cls(db, record.id), Keys(record.id)
        pipe = db.pipeline()
        pipe.hset(keys.job, mapping=record.to_hash())
        pipe.zadd(Keys.jobs, {record.id: record.created})
        pipe.sadd(Keys.active, keys.job)
        pipe.sadd(Keys.queues, record.queue)
        done = list(done)
        if done:
            pipe.sadd(keys.aggregated, *done)
        pipe.execute()
        return state

    def record(self) -> JobRecord:
        raw = self.db.hgetall(self.keys.job)
        if not raw:
            raise KeyError(f"job {self.id}: unknown (no record in Redis)")
        return JobRecord.from_hash(self.id, raw)

    def status(self) -> Status | None:
        raw = self.db.hget(self.keys.job, "status")
        return Status(raw.decode()) if raw else None

    def record_engine(self, engine: dict[str, str]) -> None:
        self.db.hsetnx(self.keys.job, "engine", json.dumps(engine))

    def remember(self, fingerprints: dict[int, str]) -> None:
        """Each shard's fingerprint, checked when the job is resumed."""
        if fingerprints:
            self.db.hset(self.keys.fingerprint, mapping=fingerprints)

    def fingerprints(self) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.db.hgetall(self.keys.fingerprint).items()}

    # --- a shard's steps ---------------------------------------------------------------------------------

    def begin(self, lease: Lease, *, seconds: float, most_deliveries: int) -> Begin:
        """Take the shard's lease for its step unless the task should not run (see ``Begin.reason``)."""
        step = Step(Stage(lease.stage), lease.wave)
        run, reason, n = self._lua["begin"](
            self.keys, delivery=step.name, index=lease.index, seconds=seconds, most_deliveries=most_deliveries,
            lease=lease.model_copy(update={"rank": step.rank}).model_dump_json(exclude={"since"}))
        return Begin(run=bool(run), reason=_text(reason), deliveries=n)

    def renew(self, index: int, token: str, seconds: float) -> bool:
        """Push the lease's expiry on; False when it is no longer ours (the reaper gave it away)."""
        return bool(self._lua["renew"](self.keys, index=index, token=token, seconds=seconds))

    def release(self, index: int, token: str) -> None:
        """Drop our lease (after the next step's task is sent: a worker lost before that is re-run)."""
        self._lua["release"](self.keys, index=index, token=token)

    def hand_back(self, lease: Lease, seconds: float) -> Lease | None:
        """Give the shard back now (its worker is stopping): the lease to send again, None when it is no longer
        ours. If the caller dies before sending it, the re-armed lease expires and the reaper sends it."""
        held = self._lua["hand_back"](self.keys, index=lease.index, token=lease.token, seconds=seconds,
                                      delivery=Step(Stage(lease.stage), lease.wave).name)
        return Lease.model_validate_json(held) if held else None

    def stage_done(self, stage: str, index: int, token: str, *, candidates: int = 0, tokens: int = 0,
                   rows: int = 0) -> bool:
        """Mark the stage done for the shard; True when this call was the first. An aggregated shard is
        settled: its lease is dropped, its counters added once, and a failure recorded earlier is forgotten."""
        return bool(self._lua["stage_done"](self.keys, stage=self.keys.stage[Stage(stage).value], index=index,
                                            token=token, settles=int(stage == Stage.AGGREGATE),
                                            candidates=candidates, tokens=tokens, rows=rows))

    def failed(self, index: int, token: str, error: str) -> bool:
        """Settle the shard as failed; False when it was settled already (aggregated, or failed before)."""
        return bool(self._lua["fail"](self.keys, index=index, token=token, reason=error))

    def attempt_failed(self, index: int, token: str, *, most: int, wave: int = 0, base: float = FailurePolicy.base,
                       cap: float = FailurePolicy.cap, error: BaseException | None = None) -> tuple[int, float]:
        """Count a failed attempt: (attempts so far, back-off); below ``most`` the shard's task is sent again
        once the back-off is over (``FailurePolicy(most, base, cap).backoff``, honouring ``error``'s
        ``RetryAfter``). Each adaptive wave after the first has ``most`` attempts of its own, so a shard sampled
        in many waves is not failed for a few unrelated transient errors."""
        n, backoff = self._lua["retry"](self.keys, index=index, token=token, most=most,
                                        backoffs=FailurePolicy(most, base, cap).backoffs(error),
                                        counted=f"{index}.wave{wave}" if wave else str(index))
        return int(n), float(backoff)

    # --- the whole job -----------------------------------------------------------------------------------

    def settled(self) -> tuple[int, int]:
        """(aggregated, failed) shards: disjoint by construction."""
        pipe = self.db.pipeline(transaction=True)
        pipe.scard(self.keys.aggregated)
        pipe.hlen(self.keys.failed)
        done, failed = pipe.execute()
        return int(done), int(failed)

    def complete(self, shards: int) -> bool:
        return sum(self.settled()) >= shards

    def failures(self) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.db.hgetall(self.keys.failed).items()}

    def aggregated(self) -> set[int]:
        return {int(i) for i in self.db.smembers(self.keys.aggregated)}

    def finish(self, status: Status, output: str) -> bool:
        """Mark the running job finished, its keys to expire; False when it was not running (finished or
        cancelled meanwhile)."""
        return bool(self._lua["finish"](self.keys, ttl=settings().finished_ttl, status=status.value,
                                        finished=time.time(), output=output))

    def finalise_failed(self, error: str) -> int:
        """Count a finalisation that raised; the finalisations failed so far."""
        pipe = self.db.pipeline()
        pipe.hincrby(self.keys.job, "finalise_failures", 1)
        pipe.hset(self.keys.job, "finalise_error", error)
        return int(pipe.execute()[0])

    def finalise_lock(self, seconds: float) -> redis.lock.Lock:
        """The lock one finaliser holds (and extends) while it assembles the output."""
        return self.db.lock(self.keys.finalising, timeout=seconds, blocking=False, thread_local=False)

    def cancel(self) -> None:
        """Workers skip the job's remaining tasks; refused for a finished job."""
        was = _text(self._lua["cancel"](self.keys, ttl=settings().finished_ttl))
        if was != Status.RUNNING.value:
            raise StateError(f"job {self.id} is {was}: only a running job can be cancelled")

    def resume(self, status: Status, shards: int, waiting: Iterable[int] = ()) -> list[int]:
        """Reopen the job; the shards to send again (``waiting``: those whose task is in the broker). See
        ``lua/resume.lua``."""
        k = self.keys
        named = {k.job, k.aggregated, k.failed, k.attempts, k.deliveries, k.leases, k.expiry}
        out = self._lua["resume"](k, others=[key for key in k.kept() if key not in named], seen=status.value,
                                  shards=shards, waiting=list(waiting))
        if out and out[0] == -1:
            now = _text(out[1])
            raise StateError(f"job {self.id} is {now}: nothing to resume" if now == "done" else
                             f"job {self.id} changed while resuming (now {now}): see `producer status {self.id}`")
        return [int(i) for i in out]

    # --- what `producer status` shows, and the reaper ------------------------------------------------------

    def leases(self) -> dict[int, HeldLease]:
        """Shard -> its lease, how long its holder has had it and how long until it expires."""
        pipe = self.db.pipeline(transaction=True)
        pipe.hgetall(self.keys.leases)
        pipe.zrange(self.keys.expiry, 0, -1, withscores=True)
        raw, expiry = pipe.execute()
        now, until = _now(self.db), {int(i): score for i, score in expiry}
        leases = {int(i): Lease.model_validate_json(v) for i, v in raw.items()}
        return {i: HeldLease(lease, now - lease.since, until.get(i, 0.0) - now) for i, lease in leases.items()}

    def requeued(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.db.hgetall(self.keys.requeued).items()}

    def counters(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.db.hgetall(self.keys.counters).items()}

    def stage_counts(self) -> dict[str, int]:
        return {stage: int(self.db.scard(key)) for stage, key in self.keys.stage.items()}

    def reap(self, seconds: float) -> list[Lease]:
        """Re-arm every expired lease (its worker was lost, or its back-off ended); the tasks to send again.

        The caller sends each one; if it dies first, the re-armed lease expires again and the next pass sends
        it. A task sent twice is harmless: the second copy finds the first one's lease and skips.
        """
        out = []
        for index in self.db.zrangebyscore(self.keys.expiry, "-inf", _now(self.db)):
            held = self._lua["reap"](self.keys, index=int(index), seconds=seconds)
            if held:
                out.append(Lease.model_validate_json(held))
        return out


def job_state(job_id: str) -> JobState:
    """A job's state in the store the workers use (SAMPLEFLEET_STATE_URL)."""
    return JobState(connect(settings().state), job_id)


def forget_expired(db: redis.Redis, ttl: int) -> int:
    """Drop from the job index the jobs whose keys expired (SAMPLEFLEET_FINISHED_TTL); how many. Only a job
    created more than ``ttl`` seconds ago can have expired, so a pass reads only those, not every job."""
    if ttl <= 0:
        return 0
    old = db.zrangebyscore(Keys.jobs, "-inf", time.time() - ttl)
    pipe = db.pipeline(transaction=False)
    for job_id in old:
        pipe.exists(Keys(job_id.decode()).job)
    gone = [job_id for job_id, alive in zip(old, pipe.execute()) if not alive]
    if gone:
        db.zrem(Keys.jobs, *gone)
    return len(gone)


def active_jobs(db: redis.Redis) -> list[str]:
    """Ids of the running jobs."""
    return [Keys.job_id(key) for key in db.smembers(Keys.active)]
