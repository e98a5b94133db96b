"""A fleet job's state as records: what ``workers.lifecycle`` keeps in Redis and what ``producer status`` shows.

The records only; the transitions that change them (Lua scripts, one per step) are in ``workers.lifecycle``.
"""
from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas.job import JobSpec


class Stage(str, enum.Enum):
    """A shard's stages, in the order they run (the steps between them: ``workers.lifecycle.pipeline``)."""

    GENERATE = "generate"
    SCORE = "score"
    AGGREGATE = "aggregate"


STAGES = tuple(stage.value for stage in Stage)


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


class ShardState(str, enum.Enum):
    """Where a shard is, derived from its keys by ``ShardState.of`` alone (metrics and `producer status` say
    these names)."""

    DONE = "done"  # aggregated: its rows are in place
    IN_FLIGHT = "in_flight"  # a worker holds its lease
    RETRYING = "retrying"  # a failed attempt waits out its back-off
    REQUEUED = "requeued"  # its worker was lost: sent again
    FAILED = "failed"  # settled as failed
    QUEUED = "queued"  # none of these: its task waits in the broker

    @classmethod
    def of(cls, *, aggregated: bool = False, failed: bool = False, lease: LeaseState | None = None) -> ShardState:
        if aggregated:
            return cls.DONE
        if failed:
            return cls.FAILED
        if lease is None:
            return cls.QUEUED
        return {LeaseState.RUNNING: cls.IN_FLIGHT, LeaseState.RETRY: cls.RETRYING,
                LeaseState.REQUEUED: cls.REQUEUED}[lease]


class Outcome(str, enum.Enum):
    """What a shard task did with its delivery; its result (in Flower) is ``said`` from it."""

    DONE = "done"
    SKIPPED = "skipped"  # the job is not running, the shard is settled, or another worker holds it
    HANDED_BACK = "handed back"  # its worker is stopping: sent again at once
    RETRYING = "retrying"  # a failed attempt: sent again after its back-off
    FAILED = "failed"

    def said(self, detail: str = "") -> str:
        return f"{self.value}: {detail}" if detail else self.value


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
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
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
    rank: int = Field(0, description="Its step's place in the shard's life (workers.lifecycle.pipeline), set when "
                      "it is taken: a task of an earlier step than a live lease's is skipped.")


class HeldLease(NamedTuple):
    """A lease as `producer status` sees it."""

    lease: Lease
    age: float  # seconds since its holder took it
    expires_in: float  # seconds until it expires: negative once expired

    @property
    def label(self) -> str:
        """The lease's step: ``score``, ``generate (wave 2)``."""
        return self.lease.stage + (f" (wave {self.lease.wave})" if self.lease.wave else "")

    @property
    def shard_state(self) -> ShardState:
        return ShardState.of(lease=self.lease.state)


class Begin(BaseModel):
    """What a task should do with its shard."""

    run: bool
    reason: str = ""  # why not: the job's status, "settled", "leased by <worker>", "poison"
    deliveries: int = 0


@dataclass(frozen=True)
class JobStatus:
    """What `producer status`, `wait`, `list` and the metrics read of a job."""

    job_id: str
    status: str
    shards: int
    prompts: int
    stages: dict[str, int]
    failed: dict[int, str]
    running: dict[int, HeldLease]  # shard -> its lease
    created: float
    finished: float | None
    output: str | None
    counters: dict[str, int]
    scored: bool
    requeued: dict[int, int] = field(default_factory=dict)  # shard -> times sent again after a lost worker
    requeues: int = 0
    queue: str = ""  # the job's generate queue (generate.<model>)

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.created

    def describe(self) -> str:
        """The text of `producer status`."""
        stages = [s for s in STAGES if s != Stage.SCORE or self.scored]
        lines = [f"job {self.job_id}: {self.status}, {self.prompts} prompts in {self.shards} shards, "
                 f"{self.seconds:.0f}s",
                 "  " + ", ".join(f"{stage} {self.stages[stage]}/{self.shards}" for stage in stages)
                 + f", failed {len(self.failed)}, in flight {len(self.running)}, re-queued {self.requeues}"]
        if self.counters:
            rate = self.counters.get("candidates", 0) / max(self.seconds, 1e-9)
            lines.append(f"  {self.counters.get('rows', 0)} rows, {self.counters.get('candidates', 0)} samples, "
                         f"{self.counters.get('tokens', 0)} tokens ({rate:.1f} samples/s)")
        for index, held in sorted(self.running.items()):
            where = {ShardState.IN_FLIGHT: f"on {held.lease.owner}", ShardState.RETRYING: "waiting to retry",
                     ShardState.REQUEUED: "sent again (its worker was lost)"}[held.shard_state]
            expiry = (f"lease expires in {held.expires_in:.0f}s" if held.expires_in >= 0 else
                      f"lease expired {-held.expires_in:.0f}s ago")
            lines.append(f"  shard {index}: {held.label} {where}, for {held.age:.0f}s, {expiry}")
        if self.requeued:
            lines.append("  re-queued after a lost worker: " + ", ".join(
                f"shard {i}" + (f" ({n}x)" if n > 1 else "") for i, n in sorted(self.requeued.items())))
        lines += [f"  shard {k} failed: {v}" for k, v in sorted(self.failed.items())]
        if self.status == Status.FAILED.value:
            lines.append(f"  no output file: missing shards {', '.join(map(str, sorted(self.failed)))}; parts "
                         f"kept, `producer resume {self.job_id}` retries them")
            lines += [f"  manifest: {self.output}"] if self.output else []
        elif self.output:
            lines.append(f"  output: {self.output}")
        return "\n".join(lines)
