"""``producer metrics``: the fleet as Prometheus metrics, served on ``/metrics`` by prometheus_client.

Flower exports task events, but not how many messages wait in each queue, how far each job is, or
whether Redis is up; this collector reads those from Redis at every scrape. A scrape must answer even
when Redis does not: the reads run with one-second socket timeouts and no retries (the producer's own
client rides out a restart for a minute), under a deadline, and a Redis that does not answer is
reported as ``samplefleet_redis_up 0`` rather than as a hung or failed scrape. ``samplefleet_scrape_complete``
is 1 only when every source answered in time: the broker, the job state (every reported job) and the pings.

Job series carry the job's id as ``job_id``: ``job`` is Prometheus's own target label (a scraped ``job`` is
stored as ``exported_job``).

Workers alive: a ``--pool solo`` worker answers neither pings nor sends heartbeats while it runs a shard
(its one thread is busy), so a worker counts as alive when it answers a ping or holds a shard's lease.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from producer.fleet import Fleet
from schemas.fleet import DEFAULT_QUEUES
from schemas.jobstate import STAGES, JobStatus, ShardState, Stage, Status
from workers.lifecycle.keys import Keys

log = logging.getLogger(__name__)
JOB_STATES = tuple(s.value for s in Status)
# A shard at a stage: done past it, in_flight (a worker holds its lease), retrying (a failed attempt waits out
# its back-off), requeued (its worker was lost; sent again), failed there (a queued shard is in no series).
SHARD_STATES = tuple(s.value for s in ShardState if s is not ShardState.QUEUED)
SOCKET = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}


@dataclass
class Snapshot:
    """What one scrape read; whatever was not read in time stays empty."""

    redis_up: dict[str, bool] = field(default_factory=lambda: {"broker": False, "state": False})
    queues: dict[str, int] = field(default_factory=dict)
    unacked: int | None = None
    jobs: list[JobStatus] = field(default_factory=list)
    pinged: set[str] = field(default_factory=set)
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> (used_memory, maxmemory)
    failed: list[str] = field(default_factory=list)  # the sources that did not answer
    done: bool = False  # the reader got to the end before the deadline

    @property
    def complete(self) -> bool:
        return self.done and not self.failed


def _stage_of_failure(error: str) -> str:
    """Failure messages start with the stage (``generate: ValueError: ...``)."""
    head = error.split(":", 1)[0]
    return head if head in STAGES else "unknown"


def _memory(db: redis.Redis) -> tuple[int, int]:
    """(used_memory, maxmemory) in bytes; at maxmemory a noeviction Redis refuses writes."""
    info = db.info("memory")
    return int(info["used_memory"]), int(info.get("maxmemory", 0))


def live_holders(job: JobStatus) -> set[str]:
    """Workers holding one of the job's shards under a lease that has not expired."""
    return {held.lease.owner for held in job.running.values()
            if held.shard_state is ShardState.IN_FLIGHT and held.expires_in > 0}


def in_flight_by_queue(jobs: list[JobStatus], queues: Iterable[str] = ()) -> dict[str, int]:
    """Shards held by a live worker, by the queue their stage's task came from (every queue in ``queues`` too, at 0):
    generate (any adaptive wave) from the job's model queue, score and aggregate from theirs."""
    out = Counter({queue: 0 for queue in queues})
    for job in jobs:
        for held in job.running.values():
            if held.shard_state is ShardState.IN_FLIGHT:
                stage = held.lease.stage
                out[job.queue if stage == Stage.GENERATE else stage] += 1
    return dict(out)


class FleetCollector(Collector):
    """Queue depths, job progress, live workers and Redis' health, read at each scrape.

    ``recent_jobs``: how many of the newest jobs are reported (every job keeps its series while among
    them); ``deadline``: seconds a scrape may spend reading; ``ping_timeout``: seconds to wait for pongs.
    """

    def __init__(self, fleet: Fleet, *, recent_jobs: int = 20, deadline: float = 1.6,
                 ping_timeout: float = 0.8) -> None:
        self.fleet = copy.copy(fleet)  # the same fleet, its Redis calls failing fast instead of retrying
        self.fleet.db = redis.Redis.from_url(fleet.state_url, **SOCKET)
        self.broker = redis.Redis.from_url(fleet.broker, **SOCKET)
        self.recent_jobs, self.deadline, self.ping_timeout = recent_jobs, deadline, ping_timeout

    def collect(self) -> Iterable[Metric]:
        started = time.monotonic()
        snap = Snapshot()
        reader = threading.Thread(target=self._read, args=(snap,), daemon=True, name="metrics-read")
        reader.start()
        reader.join(self.deadline)
        if reader.is_alive():
            log.warning("metrics: Redis did not answer within %.1fs; reporting what was read", self.deadline)
        yield from self._metrics(copy.deepcopy(snap), time.monotonic() - started)  # a late reader changes nothing

    # --- reading -----------------------------------------------------------------------------------------

    def _read(self, snap: Snapshot) -> None:
        for source, read in (("broker", self._read_broker), ("state", self._read_state), ("ping", self._ping)):
            try:
                read(snap)
            except Exception as exc:  # noqa: BLE001 - a scrape reports what it could read, it never fails
                log.warning("metrics: %s unreachable: %s: %s", source, type(exc).__name__, exc)
                snap.failed.append(source)
        snap.done = True

    def _ping(self, snap: Snapshot) -> None:
        if not snap.redis_up["broker"]:
            raise redis.ConnectionError("no broker to ping the workers through")
        app = self.fleet.celery
        with app.connection_for_write() as conn:  # a fresh connection: a reused one misses pongs now and then
            replies = app.control.ping(timeout=self.ping_timeout, connection=conn) or []
        snap.pinged = {name for reply in replies for name in reply}

    def _read_broker(self, snap: Snapshot) -> None:
        try:  # the model queues in use are recorded with the job state
            known = {q.decode() for q in self.fleet.db.smembers(Keys.queues)}
        except (redis.RedisError, OSError) as exc:  # the default queues are still read; the scrape is incomplete
            log.warning("metrics: job state unreachable: %s", exc)
            snap.failed.append("state: queues")
            known = set()
        queues = sorted(set(DEFAULT_QUEUES) | known)
        with self.broker.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            pipe.hlen("unacked")  # kombu's hash of messages delivered to workers and not yet acknowledged
            *depths, unacked = pipe.execute()
        snap.redis_up["broker"] = True
        snap.queues, snap.unacked = dict(zip(queues, depths)), unacked
        snap.memory["broker"] = _memory(self.broker)

    def _read_state(self, snap: Snapshot) -> None:
        ids = [j.decode() for j in self.fleet.db.zrevrange(Keys.jobs, 0, self.recent_jobs - 1)]
        snap.redis_up["state"] = True
        snap.memory["state"] = _memory(self.fleet.db)
        snap.jobs = [self.fleet.status(job_id) for job_id in ids]  # all or none

    # --- metrics -----------------------------------------------------------------------------------------

    def _metrics(self, snap: Snapshot, seconds: float) -> Iterator[Metric]:
        up = GaugeMetricFamily("samplefleet_redis_up", "1 when the fleet's Redis answered this scrape.",
                               labels=["role"])
        for role, ok in snap.redis_up.items():
            up.add_metric([role], int(ok))
        yield up
        used = GaugeMetricFamily("samplefleet_redis_memory_used_bytes", "Memory the fleet's Redis uses.",
                                 labels=["role"])
        cap = GaugeMetricFamily("samplefleet_redis_maxmemory_bytes", "Its maxmemory (0: none set); there, with "
                                "noeviction, it refuses writes: submits and workers fail.", labels=["role"])
        for role, (in_use, limit) in snap.memory.items():
            used.add_metric([role], in_use)
            cap.add_metric([role], limit)
        yield used
        yield cap
        yield GaugeMetricFamily("samplefleet_scrape_complete", "1 when every source (broker, job state, worker "
                                "pings) answered this scrape in time; 0 when any failed.", value=int(snap.complete))
        yield GaugeMetricFamily("samplefleet_scrape_duration_seconds", "Seconds this scrape took.", value=seconds)
        depth = GaugeMetricFamily("samplefleet_queue_depth", "Messages waiting in a queue (a Redis list).",
                                  labels=["queue"])
        for queue, count in snap.queues.items():
            depth.add_metric([queue], count)
        yield depth
        running = GaugeMetricFamily("samplefleet_queue_in_flight", "Shards of a queue's stage that a worker holds "
                                    "now (what KEDA scales on beside the waiting messages).", labels=["queue"])
        for queue, count in sorted(in_flight_by_queue(snap.jobs, snap.queues).items()):
            running.add_metric([queue], count)
        yield running
        if snap.unacked is not None:
            yield GaugeMetricFamily("samplefleet_broker_unacked", "Messages delivered to workers and not yet "
                                    "acknowledged (running or reserved).", value=snap.unacked)
        yield from self._job_metrics(snap.jobs)
        yield from self._worker_metrics(snap)

    def _job_metrics(self, jobs: list[JobStatus]) -> Iterator[Metric]:
        status = GaugeMetricFamily("samplefleet_job_status", "1 for the job's current status, 0 for the others.",
                                   labels=["job_id", "status"])
        shards = GaugeMetricFamily("samplefleet_job_shards", "Shards in the job.", labels=["job_id"])
        stage = GaugeMetricFamily("samplefleet_job_stage_shards", "Shards of the job in a state at a stage: "
                                  "done (past it), in_flight (a worker holds it), retrying (waits out a back-off), "
                                  "requeued (its worker was lost), failed.", labels=["job_id", "stage", "state"])
        failed = GaugeMetricFamily("samplefleet_job_failed_shards", "Shards of the job that failed.", labels=["job_id"])
        in_flight = GaugeMetricFamily("samplefleet_job_in_flight_shards", "Shards of the job a worker holds now.",
                                      labels=["job_id"])
        requeued = CounterMetricFamily("samplefleet_job_requeued_shards", "Times the job's shards were sent "
                                       "again because their worker was lost.", labels=["job_id"])
        samples = CounterMetricFamily("samplefleet_job_samples", "Candidates sampled for the job.", labels=["job_id"])
        tokens = CounterMetricFamily("samplefleet_job_tokens", "Tokens generated for the job.", labels=["job_id"])
        rows = CounterMetricFamily("samplefleet_job_rows", "Rows written for the job.", labels=["job_id"])
        samples_rate = GaugeMetricFamily("samplefleet_job_samples_per_second", "Candidates per second over the "
                                         "job's run so far (rate() of samplefleet_job_samples_total for now).",
                                         labels=["job_id"])
        tokens_rate = GaugeMetricFamily("samplefleet_job_tokens_per_second", "Tokens per second over the job's "
                                        "run so far.", labels=["job_id"])
        expired = GaugeMetricFamily("samplefleet_job_expired_leases", "Shards of the job whose lease expired and "
                                    "was not re-armed yet (the reaper sends them again; stuck if it stays).",
                                    labels=["job_id"])
        oldest = GaugeMetricFamily("samplefleet_job_oldest_lease_seconds", "Seconds the longest-held shard of the "
                                   "job has been with its worker (0 when none is in flight).", labels=["job_id"])
        age = GaugeMetricFamily("samplefleet_job_seconds", "Seconds since the job was submitted (until it "
                                "finished).", labels=["job_id"])
        for job in jobs:
            current = job.status
            for name in sorted({*JOB_STATES, current}):
                status.add_metric([job.job_id, name], int(name == current))
            shards.add_metric([job.job_id], job.shards)
            held = Counter((lease.label, lease.shard_state.value) for lease in job.running.values())
            held.update((_stage_of_failure(error), "failed") for error in job.failed.values())
            for name in STAGES:
                stage.add_metric([job.job_id, name, "done"], job.stages.get(name, 0))
                for state in SHARD_STATES[1:]:
                    stage.add_metric([job.job_id, name, state], held[(name, state)])
            failed.add_metric([job.job_id], len(job.failed))
            in_flight.add_metric([job.job_id], sum(n for (_, state), n in held.items() if state == "in_flight"))
            requeued.add_metric([job.job_id], job.requeues)
            expired.add_metric([job.job_id], sum(lease.expires_in <= 0 for lease in job.running.values()))
            oldest.add_metric([job.job_id], max((lease.age for lease in job.running.values()
                                                 if lease.shard_state is ShardState.IN_FLIGHT), default=0))
            seconds = max(job.seconds, 1e-9)
            for family, rate, key in ((samples, samples_rate, "candidates"), (tokens, tokens_rate, "tokens")):
                family.add_metric([job.job_id], job.counters.get(key, 0))
                rate.add_metric([job.job_id], job.counters.get(key, 0) / seconds)
            rows.add_metric([job.job_id], job.counters.get("rows", 0))
            age.add_metric([job.job_id], job.seconds)
        yield from (status, shards, stage, failed, in_flight, requeued, expired, oldest, samples, tokens, rows,
                    samples_rate, tokens_rate, age)

    def _worker_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        busy = set().union(*(live_holders(job) for job in snap.jobs))
        up = GaugeMetricFamily("samplefleet_worker_up", "1 for a worker that answered a ping or holds a shard "
                               "(seen: how it was seen).", labels=["worker", "seen"])
        for name in sorted(snap.pinged | busy):
            up.add_metric([name, "ping" if name in snap.pinged else "lease"], 1)
        yield up
        yield GaugeMetricFamily("samplefleet_workers_alive", "Workers that answered a ping or hold a shard.",
                                value=len(snap.pinged | busy))
        yield GaugeMetricFamily("samplefleet_workers_busy", "Workers holding a shard now.", value=len(busy))


def registry(fleet: Fleet, **options) -> CollectorRegistry:
    """A registry holding only the fleet's collector (``options`` go to FleetCollector)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(fleet, **options))
    return reg


def serve(fleet: Fleet, host: str, port: int) -> None:
    """Serve the metrics on ``http://HOST:PORT/metrics`` until interrupted."""
    server, thread = start_http_server(port, addr=host, registry=registry(fleet))
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    try:
        thread.join()
    finally:
        server.shutdown()
