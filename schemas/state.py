"""A fleet job's state in Redis: one typed record, one status enum, every key, every transition.

Producer and workers change a job only through ``JobState``; each transition is one Lua script (or
one MULTI), so duplicates of a shard's tasks, in any order, settle it exactly once.

A shard's life: its task queued for a stage (in the broker) -> *leased* by the worker running that stage
(the lease names the task, so it can be sent again) -> the stage is done and the next stage's task sent ->
... -> *settled*: aggregated (its rows are in place) or failed. A worker renews its lease every
``lease_renew`` seconds; a lease that is ``lease_expire`` seconds old (its worker died) is re-armed
by the reaper, which sends the task again; a worker that is stopped (SIGTERM) hands its lease back at once
(``hand_back``) and sends the task again itself. A failed attempt that will be retried holds its lease
until the back-off ends, then the reaper sends it again. Time is Redis's own clock (``TIME``), so
the machines' clocks need not agree.
"""
from __future__ import annotations

import enum
import json
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.job import JobSpec

if TYPE_CHECKING:  # the local run imports the enums with no Redis client installed
    import redis
    import redis.lock

KEY_PREFIX = "samplefleet"
STAGES = ("generate", "score", "aggregate")


class Status(str, enum.Enum):
    RUNNING = "running"
    DONE = "done"
    PARTIAL = "partial"  # every shard settled, some failed, --allow_partial: final file without them
    FAILED = "failed"  # every shard settled, some failed: no final file; `producer resume` retries them
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not Status.RUNNING


class LeaseState(str, enum.Enum):
    RUNNING = "running"  # its holder is at work and renews it
    RETRY = "retry"  # a failed attempt waiting out its back-off
    REQUEUED = "requeued"  # its holder was lost (or the back-off ended): the reaper sent the task again


class Keys:
    """Every Redis key of the fleet (all under ``samplefleet:``).

    A job's keys carry its id as a hash tag (``samplefleet:job:{ID}...``), so Redis Cluster would keep them in
    one slot and each per-job script stays single-slot; the four index keys below are the cross-slot part
    (README's Scaling section).
    """

    jobs = f"{KEY_PREFIX}:jobs"  # sorted set: job id -> created time
    active = f"{KEY_PREFIX}:active"  # set: jobs running now (the reaper looks only at these)
    queues = f"{KEY_PREFIX}:queues"  # set: generate queues in use, followed by workers that serve every queue
    reaper = f"{KEY_PREFIX}:reaper"  # lock: one reaper at work at a time

    def __init__(self, job_id: str) -> None:
        base = f"{KEY_PREFIX}:job:{{{job_id}}}"
        self.job = base  # hash: the JobRecord's fields
        self.stage = {stage: f"{base}:{stage}" for stage in STAGES}  # sets: shards whose stage is done
        self.failed = f"{base}:failed"  # hash: shard -> error (never holds an aggregated shard)
        self.attempts = f"{base}:attempts"  # hash: shard (or "shard.waveN") -> failed attempts
        self.deliveries = f"{base}:deliveries"  # hash: "stage:shard" -> times its task began
        self.leases = f"{base}:leases"  # hash: shard -> Lease JSON
        self.expiry = f"{base}:expiry"  # sorted set: shard -> when its lease expires (Redis time)
        self.requeued = f"{base}:requeued"  # hash: shard -> times it was sent again after a lost worker
        self.fingerprint = f"{base}:fingerprint"  # hash: shard -> hash of its prompt ids (checked on resume)
        self.counters = f"{base}:counters"  # hash: candidates, tokens, rows (counted once per shard)
        self.finalising = f"{base}:finalising"  # lock: one aggregator assembles the output

    def all(self) -> list[str]:
        return [*self.kept(), self.finalising]

    def kept(self) -> list[str]:
        """The job's keys but its finaliser's lock: what a finished job keeps until SAMPLEFLEET_FINISHED_TTL."""
        return [self.job, *self.stage.values(), self.failed, self.attempts, self.deliveries, self.leases,
                self.expiry, self.requeued, self.fingerprint, self.counters]


_JSON_FIELDS = ("spec", "bad_rows", "engine")  # JobRecord fields kept as JSON in the hash; the rest as text


class JobRecord(BaseModel):
    """The job's own fields (the ``job`` hash)."""

    model_config = ConfigDict(frozen=True)

    id: str
    spec: JobSpec
    shards: int
    prompts: int
    rows_read: int = Field(0, description="Prompts the producer read from the data (the fingerprint's count).")
    bad_rows: list[str] = Field(default_factory=list)
    created: float
    status: Status = Status.RUNNING
    queue: str
    finished: float | None = None
    output: str | None = None
    engine: dict[str, Any] = Field(default_factory=dict, description="Set once, by the first worker that loads it.")
    requeues: int = Field(0, description="Shards sent again because their worker was lost or stopped.")
    finalise_failures: int = Field(0, description="Finalisations that raised; the reaper stops resending at the "
                                   "attempt limit.")
    finalise_error: str | None = None

    def to_hash(self) -> dict[str, str]:
        raw = self.model_dump(mode="json", exclude_none=True, exclude={"id"} | ({"engine"} if not self.engine else set()))
        return {k: json.dumps(v) if k in _JSON_FIELDS else str(v) for k, v in raw.items()}

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> "JobRecord":
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        data: dict[str, Any] = {k: json.loads(v) if k in _JSON_FIELDS else v for k, v in fields.items()}
        return cls.model_validate({"id": job_id, **data})


class Lease(BaseModel):
    """A shard held by a worker for one stage; what to send again if the worker is lost."""

    model_config = ConfigDict(frozen=True)

    stage: str
    index: int
    wave: int = Field(0, description="Adaptive sampling's wave (generate and score run once per wave).")
    token: str = Field(description="The task's id: a retry of the same task keeps it.")
    owner: str = Field(description="The worker's name, or 'reaper' once sent again.")
    state: LeaseState = LeaseState.RUNNING
    task: str
    args: list[Any]
    queue: str
    since: float = Field(description="When the current holder took it (Redis time).")


class Begin(BaseModel):
    """What a task should do with its shard."""

    run: bool
    reason: str = ""  # why not: the job's status, "settled", "leased by <worker>", "poison"
    deliveries: int = 0


def _per_wave(name: str | int, wave: int) -> str:
    """What a count is kept under for one adaptive wave (``name`` as is for wave 0, as a fixed-N job has it)."""
    return f"{name}.wave{wave}" if wave else str(name)


def _finished_ttl() -> int:
    from schemas.settings import settings  # here: the local run imports this module without the fleet's settings

    return settings().finished_ttl


def _now(db: redis.Redis) -> float:
    seconds, micros = db.time()
    return seconds + micros / 1e6


_LUA_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6 "

# KEYS: job, aggregate set, failed, deliveries, leases, expiry
# ARGV: the delivery's name (stage, and wave after the first), index, lease JSON (without `since`), lease seconds,
# most deliveries. A shard's steps run in order: wave 0's generate, score, wave 1's generate, ..., aggregate.
_BEGIN = _LUA_NOW + """
local index = ARGV[2]
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return {0, status or 'unknown', 0}
end
if redis.call('SISMEMBER', KEYS[2], index) == 1 or redis.call('HEXISTS', KEYS[3], index) == 1 then
  return {0, 'settled', 0}
end
local lease = cjson.decode(ARGV[3])
local held = redis.call('HGET', KEYS[5], index)
if held then
  local other = cjson.decode(held)
  local expires = tonumber(redis.call('ZSCORE', KEYS[6], index) or '0')
  local function step(l)
    if l.stage == 'aggregate' then return math.huge end
    return (l.wave or 0) * 2 + (l.stage == 'score' and 1 or 0)
  end
  local live = expires > now and other.state ~= 'requeued'
  if other.token ~= lease.token and live and step(other) >= step(lease) then
    return {0, 'leased by ' .. other.owner, 0}
  end
end
local n = redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':' .. index, 1)
if n > tonumber(ARGV[5]) then return {0, 'poison', n} end
lease.since = now
redis.call('HSET', KEYS[5], index, cjson.encode(lease))
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[4]), index)
return {1, '', n}
"""

# KEYS: leases, expiry. ARGV: index, token, seconds. 1 while the lease is ours (not once the reaper re-armed it).
_RENEW = _LUA_NOW + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return 0 end
local lease = cjson.decode(held)
if lease.token ~= ARGV[2] or lease.state == 'requeued' then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

_LUA_DROP = """
local function drop_if_ours(leases, expiry, index, token)
  local held = redis.call('HGET', leases, index)
  if held and cjson.decode(held).token == token then
    redis.call('HDEL', leases, index)
    redis.call('ZREM', expiry, index)
  end
end
"""

# KEYS: leases, expiry. ARGV: index, token. Drops the lease if it is ours.
_RELEASE = _LUA_DROP + """
drop_if_ours(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: stage set, failed, counters, leases, expiry. ARGV: index, token, aggregate?, candidates, tokens, rows
_STAGE_DONE = _LUA_DROP + """
local first = redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  if first == 1 then
    redis.call('HINCRBY', KEYS[3], 'candidates', ARGV[4])
    redis.call('HINCRBY', KEYS[3], 'tokens', ARGV[5])
    redis.call('HINCRBY', KEYS[3], 'rows', ARGV[6])
  end
  drop_if_ours(KEYS[4], KEYS[5], ARGV[1], ARGV[2])
end
return first
"""

# KEYS: aggregate set, failed, leases, expiry. ARGV: index, token, error. 1 when this settled it.
_FAIL = _LUA_DROP + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
drop_if_ours(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
return 1
"""

# KEYS: attempts, leases, expiry. ARGV: index, token, most attempts, back-off base, cap, a random in [0, 1),
# what the attempts are counted under (the shard; an adaptive wave after the first apart).
# {failed attempts so far, back-off}; below the limit the lease waits out the back-off (full jitter: a random
# share of base x 2^attempts, at most cap), then the reaper sends the task again.
_RETRY = _LUA_NOW + """
local n = redis.call('HINCRBY', KEYS[1], ARGV[7], 1)
local backoff = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ n) * tonumber(ARGV[6])
if n < tonumber(ARGV[3]) then
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  if held then
    local lease = cjson.decode(held)
    if lease.token == ARGV[2] then
      lease.state = 'retry'
      redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(lease))
      redis.call('ZADD', KEYS[3], now + backoff, ARGV[1])
    end
  end
end
return {n, tostring(backoff)}
"""

# KEYS[1..4]: leases, expiry, job, requeued. Re-arms a lease as sent again by the reaper (its expiry pushed on,
# so that if the task is lost on its way it is sent again); counted as a requeue unless a back-off ended.
_LUA_REARM = _LUA_NOW + """
local function rearm(index, lease, seconds)
  if lease.state ~= 'retry' then
    redis.call('HINCRBY', KEYS[3], 'requeues', 1)
    redis.call('HINCRBY', KEYS[4], index, 1)
  end
  lease.state = 'requeued'
  lease.owner = 'reaper'
  lease.since = now
  local held = cjson.encode(lease)
  redis.call('HSET', KEYS[1], index, held)
  redis.call('ZADD', KEYS[2], now + tonumber(seconds), index)
  return held
end
"""

# KEYS: leases, expiry, job, requeued. ARGV: index, lease seconds.
# Re-arms an expired lease as sent again by the reaper; returns it (to be sent) or nil.
_REAP = _LUA_REARM + """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not expires or not held or tonumber(expires) > now then return false end
return rearm(ARGV[1], cjson.decode(held), ARGV[2])
"""

# KEYS: leases, expiry, job, requeued, deliveries. ARGV: index, token, lease seconds, the delivery's name.
# A worker that is stopping (SIGTERM) gives its shard back: if the lease is still ours and running, it is
# re-armed as sent again, as _REAP does for a lost worker but at once, and this delivery is taken back (a
# stopped worker says nothing against its shard, so preemptions never make a poison shard). Returns the lease
# to send again, or nil.
_HAND_BACK = _LUA_REARM + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return false end
local lease = cjson.decode(held)
if lease.token ~= ARGV[2] or lease.state ~= 'running' then return false end
if tonumber(redis.call('HGET', KEYS[5], ARGV[4]) or '0') > 0 then redis.call('HINCRBY', KEYS[5], ARGV[4], -1) end
return rearm(ARGV[1], lease, ARGV[3])
"""

# A finished job's keys (KEYS[3] on) expire after ARGV[1] seconds (0: never), so Redis memory is freed.
_LUA_EXPIRE = """
local function expire_job(ttl)
  if tonumber(ttl) > 0 then
    for i = 3, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
"""

# KEYS: job, active, the job's kept keys (the job first). ARGV: TTL, status, finished, output. Only a running
# job finishes.
_FINISH = _LUA_EXPIRE + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished', ARGV[3], 'output', ARGV[4])
redis.call('SREM', KEYS[2], KEYS[1])
expire_job(ARGV[1])
return 1
"""

# KEYS: job, active, the job's kept keys. ARGV: TTL. Refused (returns the status) unless the job is running.
_CANCEL = _LUA_EXPIRE + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return status or 'unknown' end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('SREM', KEYS[2], KEYS[1])
expire_job(ARGV[1])
return 'running'
"""

# KEYS: job, aggregate set, failed, attempts, deliveries, leases, expiry, active, then the job's other kept keys
# ARGV: status read by the caller, shard count, then the shards whose task waits in the broker.
# Reopens the job (its keys no longer expire); returns the shards to send again: those neither aggregated, nor
# under a live lease, nor waiting in the broker. Or {-1, status} when the job changed since the caller read it, or is done.
_RESUME = _LUA_NOW + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= ARGV[1] or status == 'done' then return {-1, status or 'unknown'} end
local waiting = {}
for i = 3, #ARGV do waiting[ARGV[i]] = true end
local out = {}
for i = 0, tonumber(ARGV[2]) - 1 do
  local index = tostring(i)
  if redis.call('SISMEMBER', KEYS[2], index) == 0 and not waiting[index] then
    local expires = tonumber(redis.call('ZSCORE', KEYS[7], index) or '0')
    if expires <= now then
      out[#out + 1] = i
      redis.call('HDEL', KEYS[6], index)
      redis.call('ZREM', KEYS[7], index)
    end
  end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HDEL', KEYS[1], 'finished')
redis.call('SADD', KEYS[8], KEYS[1])
for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
return out
"""


_SCRIPTS = {"begin": _BEGIN, "renew": _RENEW, "release": _RELEASE, "done": _STAGE_DONE, "fail": _FAIL,
            "retry": _RETRY, "reap": _REAP, "hand_back": _HAND_BACK, "finish": _FINISH, "cancel": _CANCEL,
            "resume": _RESUME}


class StateError(Exception):
    """A transition that the job's state refuses (e.g. cancelling a finished job); the message says why."""


class JobState:
    """One job's state; every method is one atomic step."""

    def __init__(self, db: redis.Redis, job_id: str) -> None:
        self.db, self.id, self.keys = db, job_id, Keys(job_id)
        # register_script only hashes the text (the script is loaded on first call, by EVALSHA / EVAL)
        self._lua = {name: db.register_script(text) for name, text in _SCRIPTS.items()}

    # --- the record --------------------------------------------------------------------------------------

    @classmethod
    def create(cls, db: redis.Redis, record: JobRecord, *, done: Iterable[int] = ()) -> "JobState":
        """Record a new running job; ``done``: shards an earlier run finished (kept in the output)."""
        state, keys = cls(db, record.id), Keys(record.id)
        pipe = db.pipeline()
        pipe.hset(keys.job, mapping=record.to_hash())
        pipe.zadd(Keys.jobs, {record.id: record.created})
        pipe.sadd(Keys.active, keys.job)
        pipe.sadd(Keys.queues, record.queue)
        done = list(done)
        if done:
            pipe.sadd(keys.stage["aggregate"], *done)
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

    # --- a shard's stages --------------------------------------------------------------------------------

    def begin(self, lease: Lease, *, seconds: float, most_deliveries: int) -> Begin:
        """Take the shard's lease for ``lease.stage`` unless the task should not run (see ``Begin.reason``)."""
        k = self.keys
        run, reason, n = self._lua["begin"](
            keys=[k.job, k.stage["aggregate"], k.failed, k.deliveries, k.leases, k.expiry],
            args=[_per_wave(lease.stage, lease.wave), lease.index,
                  lease.model_dump_json(exclude={"since"}), seconds, most_deliveries])
        return Begin(run=bool(run), reason=reason.decode() if isinstance(reason, bytes) else reason, deliveries=n)

    def renew(self, index: int, token: str, seconds: float) -> bool:
        """Push the lease's expiry on; False when it is no longer ours (the reaper gave it away)."""
        return bool(self._lua["renew"](keys=[self.keys.leases, self.keys.expiry], args=[index, token, seconds]))

    def release(self, index: int, token: str) -> None:
        """Drop our lease (after the next stage's task is sent: a worker lost before that is re-run)."""
        self._lua["release"](keys=[self.keys.leases, self.keys.expiry], args=[index, token])

    def hand_back(self, lease: Lease, seconds: float) -> Lease | None:
        """Give the shard back now (its worker is stopping): the lease to send again, None when it is no longer
        ours. If the caller dies before sending it, the re-armed lease expires and the reaper sends it."""
        k = self.keys
        held = self._lua["hand_back"](keys=[k.leases, k.expiry, k.job, k.requeued, k.deliveries],
                                      args=[lease.index, lease.token, seconds,
                                            f"{_per_wave(lease.stage, lease.wave)}:{lease.index}"])
        return Lease.model_validate_json(held) if held else None

    def stage_done(self, stage: str, index: int, token: str, *, candidates: int = 0, tokens: int = 0,
                   rows: int = 0) -> bool:
        """Mark the stage done for the shard; True when this call was the first. An aggregated shard is
        settled: its lease is dropped, its counters added once, and a failure recorded earlier is forgotten."""
        k = self.keys
        return bool(self._lua["done"](keys=[k.stage[stage], k.failed, k.counters, k.leases, k.expiry],
                                      args=[index, token, int(stage == "aggregate"), candidates, tokens, rows]))

    def failed(self, index: int, token: str, error: str) -> bool:
        """Settle the shard as failed; False when it was settled already (aggregated, or failed before)."""
        k = self.keys
        return bool(self._lua["fail"](keys=[k.stage["aggregate"], k.failed, k.leases, k.expiry],
                                      args=[index, token, error]))

    def attempt_failed(self, index: int, token: str, *, most: int, wave: int = 0, base: float = 2.0,
                       cap: float = 300.0) -> tuple[int, float]:
        """Count a failed attempt: (attempts so far, back-off); below ``most`` the shard's task is sent again
        once the back-off is over. Each adaptive wave after the first has ``most`` attempts of its own, so a
        shard sampled in many waves is not failed for a few unrelated transient errors."""
        k = self.keys
        n, backoff = self._lua["retry"](keys=[k.attempts, k.leases, k.expiry],
                                        args=[index, token, most, base, cap, random.random(),
                                              _per_wave(index, wave)])
        return int(n), float(backoff)

    # --- the whole job -----------------------------------------------------------------------------------

    def settled(self) -> tuple[int, int]:
        """(aggregated, failed) shards: disjoint by construction."""
        pipe = self.db.pipeline(transaction=True)
        pipe.scard(self.keys.stage["aggregate"])
        pipe.hlen(self.keys.failed)
        done, failed = pipe.execute()
        return int(done), int(failed)

    def complete(self, shards: int) -> bool:
        return sum(self.settled()) >= shards

    def failures(self) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.db.hgetall(self.keys.failed).items()}

    def aggregated(self) -> set[int]:
        return {int(i) for i in self.db.smembers(self.keys.stage["aggregate"])}

    def finish(self, status: Status, output: str) -> bool:
        """Mark the running job finished, its keys to expire; False when it was not running (finished or
        cancelled meanwhile)."""
        return bool(self._lua["finish"](keys=[self.keys.job, Keys.active, *self.keys.kept()],
                                        args=[_finished_ttl(), status.value, time.time(), output]))

    def finalise_failed(self, error: str) -> None:
        pipe = self.db.pipeline()
        pipe.hincrby(self.keys.job, "finalise_failures", 1)
        pipe.hset(self.keys.job, "finalise_error", error)
        pipe.execute()

    def finalise_lock(self, seconds: float) -> redis.lock.Lock:
        """The lock one finaliser holds (and extends) while it assembles the output."""
        return self.db.lock(self.keys.finalising, timeout=seconds, blocking=False, thread_local=False)

    def cancel(self) -> None:
        """Workers skip the job's remaining tasks; refused for a finished job."""
        was = self._lua["cancel"](keys=[self.keys.job, Keys.active, *self.keys.kept()], args=[_finished_ttl()])
        was = was.decode() if isinstance(was, bytes) else was
        if was != Status.RUNNING.value:
            raise StateError(f"job {self.id} is {was}: only a running job can be cancelled")

    def resume(self, status: Status, shards: int, waiting: Iterable[int] = ()) -> list[int]:
        """Reopen the job; the shards to send again (``waiting``: those whose task is in the broker). See
        ``_RESUME``."""
        k = self.keys
        first = [k.job, k.stage["aggregate"], k.failed, k.attempts, k.deliveries, k.leases, k.expiry]
        out = self._lua["resume"](keys=[*first, Keys.active, *(key for key in k.kept() if key not in first)],
                                  args=[status.value, shards, *waiting])
        if out and out[0] == -1:
            now = out[1].decode() if isinstance(out[1], bytes) else out[1]
            raise StateError(f"job {self.id} is {now}: nothing to resume" if now == "done" else
                             f"job {self.id} changed while resuming (now {now}): see `producer status {self.id}`")
        return [int(i) for i in out]

    # --- what `producer status` shows, and the reaper ------------------------------------------------------

    def leases(self) -> dict[int, tuple[Lease, float, float]]:
        """Shard -> (lease, seconds since its holder took it, seconds until it expires: negative once expired)."""
        pipe = self.db.pipeline(transaction=True)
        pipe.hgetall(self.keys.leases)
        pipe.zrange(self.keys.expiry, 0, -1, withscores=True)
        raw, expiry = pipe.execute()
        now, until = _now(self.db), {int(i): score for i, score in expiry}
        leases = {int(i): Lease.model_validate_json(v) for i, v in raw.items()}
        return {i: (lease, now - lease.since, until.get(i, 0.0) - now) for i, lease in leases.items()}

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
        k = self.keys
        out = []
        for index in self.db.zrangebyscore(k.expiry, "-inf", _now(self.db)):
            held = self._lua["reap"](keys=[k.leases, k.expiry, k.job, k.requeued], args=[int(index), seconds])
            if held:
                out.append(Lease.model_validate_json(held))
        return out


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
    prefix = f"{KEY_PREFIX}:job:"
    return [key.decode().removeprefix(prefix).strip("{}") for key in db.smembers(Keys.active)]
