"""Every Redis key of the fleet, all under ``samplefleet:``."""
from __future__ import annotations

from schemas.jobstate import STAGES, Stage

KEY_PREFIX = "samplefleet"


class Keys:
    """The fleet's index keys (class attributes) and one job's keys (an instance).

    A job's keys carry its id as a hash tag (``samplefleet:job:{ID}...``), so Redis Cluster would keep them in
    one slot and each per-job script stays single-slot; the four index keys are the cross-slot part (README's
    Scaling section). The Lua scripts name their keys as these attributes do (``scripts.Script``).
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

    @property
    def aggregated(self) -> str:
        """The set of settled-as-done shards (aggregate's stage set)."""
        return self.stage[Stage.AGGREGATE.value]

    def all(self) -> list[str]:
        return [*self.kept(), self.finalising]

    def kept(self) -> list[str]:
        """The job's keys but its finaliser's lock: what a finished job keeps until SAMPLEFLEET_FINISHED_TTL."""
        return [self.job, *self.stage.values(), self.failed, self.attempts, self.deliveries, self.leases,
                self.expiry, self.requeued, self.fingerprint, self.counters]

    @staticmethod
    def job_id(job_key: bytes | str) -> str:
        """The id in a job's key (``samplefleet:job:{ID}``), as the ``active`` set holds them."""
        key = job_key.decode() if isinstance(job_key, bytes) else job_key
        return key.removeprefix(f"{KEY_PREFIX}:job:").strip("{}")
