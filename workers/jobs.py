"""A fleet job's state in Redis, as the workers change it: stage progress, failures, finalisation.

Every update is idempotent: a shard is added to a stage's *set*, and counters move only when the
shard was not there yet, so a redelivered task never counts twice. The job is finalised by the one
aggregator that wins a SET NX lock, after every shard is either aggregated or failed; the lock
expires, so a finaliser that dies mid-way does not leave the job unfinished for ever.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from functools import lru_cache

import redis

from schemas import JobSpec, ShardSummary
from schemas.fleet import Keys, finalise_timeout, redis_options
from workers.manifest import build_manifest
from workers.output import JobOutput

log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    """One client per URL per process (redis-py pools connections, reconnects and retries by itself)."""
    return redis.Redis.from_url(url, **redis_options())


class FleetJob:
    """One job as seen by a worker."""

    def __init__(self, db: redis.Redis, job_id: str) -> None:
        self.db, self.id, self.keys = db, job_id, Keys(job_id)

    @property
    def spec(self) -> JobSpec:
        raw = self.db.hget(self.keys.job, "spec")
        if raw is None:
            raise KeyError(f"job {self.id}: unknown (no record in Redis)")
        return _spec(raw.decode() if isinstance(raw, bytes) else raw)

    def field(self, name: str) -> str | None:
        raw = self.db.hget(self.keys.job, name)
        return raw.decode() if isinstance(raw, bytes) else raw

    def cancelled(self) -> bool:
        return self.field("status") == "cancelled"

    def delivered(self, stage: str, index: int) -> int:
        """Count one more delivery of the shard's stage task; the new count."""
        return int(self.db.hincrby(self.keys.deliveries, f"{stage}:{index}", 1))

    def record_engine(self, engine: dict[str, str]) -> None:
        self.db.hsetnx(self.keys.job, "engine", json.dumps(engine))

    def not_running(self, index: int) -> None:
        self.db.hdel(self.keys.running, str(index))

    def started(self, stage: str, index: int, worker: str) -> None:
        self.db.hset(self.keys.running, str(index), json.dumps({"stage": stage, "worker": worker, "since": time.time()}))

    def stage_done(self, stage: str, index: int, summary: ShardSummary | None = None) -> bool:
        """Mark the stage done for the shard; True when this call was the first to do so."""
        first = bool(self.db.sadd(self.keys.stage[stage], index))
        pipe = self.db.pipeline()
        pipe.hdel(self.keys.running, str(index))  # in flight again only when the next stage starts
        if stage == "aggregate":
            pipe.hdel(self.keys.failed, str(index))
            if first and summary is not None:
                pipe.hincrby(self.keys.counters, "candidates", summary.candidates)
                pipe.hincrby(self.keys.counters, "tokens", summary.tokens)
                pipe.hincrby(self.keys.counters, "rows", summary.rows)
        pipe.execute()
        return first

    def failed(self, index: int, error: str) -> None:
        """The shard is given up: its error is kept for `producer status` and the manifest.

        A shard already aggregated (a late duplicate failing) is not failed: its rows are in place.
        """
        if self.db.sismember(self.keys.stage["aggregate"], index):
            return
        pipe = self.db.pipeline()
        pipe.hset(self.keys.failed, str(index), error)
        pipe.hdel(self.keys.running, str(index))
        pipe.execute()

    def complete(self) -> bool:
        total = int(self.field("shards") or 0)
        done = self.db.scard(self.keys.stage["aggregate"])
        failed = self.db.hlen(self.keys.failed)
        return done + failed >= total

    def finalise_once(self) -> str | None:
        """Assemble the output if every shard is settled and no other aggregator has; the location or None.

        The parts are dropped only after the job is marked finished, so a finaliser killed at any point
        leaves either the parts (and the job running, finalised again once the lock expires or on
        `producer resume`) or a finished job. A second finaliser that starts while the first is still at
        work (the lock expired, or `resume` removed it) finds the job finished, or parts missing, and
        leaves the output alone; one that gets as far as writing writes the same bytes.
        """
        if not self.complete():
            return None
        token = uuid.uuid4().hex
        # a retried SET whose first reply was lost finds its own token there: it did get the lock
        if not (self.db.set(self.keys.finalising, token, nx=True, ex=finalise_timeout())
                or _text(self.db.get(self.keys.finalising)) == token):
            return None
        try:
            if self.field("status") != "running":  # finalised before (the lock expired since), or cancelled
                return None
            spec = self.spec
            output = JobOutput(spec)
            failed = {int(k): v.decode() for k, v in self.db.hgetall(self.keys.failed).items()}
            summaries = output.summaries()
            aggregated = {int(i) for i in self.db.smembers(self.keys.stage["aggregate"])}
            if not aggregated <= {s.index for s in summaries}:  # another finaliser is dropping the parts
                log.warning("job %s: parts missing while finalising; another finaliser is at work", self.id)
                return None
            manifest = build_manifest(spec, summaries, job_id=self.id,
                                      engine=json.loads(self.field("engine") or "{}"),
                                      planned_prompts=int(self.field("prompts") or 0),
                                      bad_rows=json.loads(self.field("bad_rows") or "[]"),
                                      started=float(self.field("created") or time.time()), finished=time.time(),
                                      failed=failed)
            location = output.finalise(manifest, summaries=summaries)
            self.db.hset(self.keys.job, mapping={"status": "partial" if failed else "done", "finished": time.time(),
                                                 "output": location})
        finally:  # ours only: a lock that expired and was taken by another finaliser is theirs
            self.db.eval(_RELEASE, 1, self.keys.finalising, token)
        if not failed:  # a partial job keeps its parts, so that resuming it can assemble the whole output
            output.drop_parts()
        log.info("job %s finalised: %s%s", self.id, location, f" ({len(failed)} shards failed)" if failed else "")
        return location


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


@lru_cache(maxsize=32)
def _spec(raw: str) -> JobSpec:
    return JobSpec.model_validate_json(raw)
