"""The producer's side of the fleet: record a job in Redis, enqueue its shards, report and steer it.

Tasks are sent by name and job state is read by key (both from ``schemas.fleet``): the producer
never imports the workers. Every option and every row is checked before anything is enqueued, and
the output location is checked by a worker (which holds the storage credentials) through the
``open_job`` task, so a job that cannot finish never half-starts.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from producer.datasets import PromptStream
from producer.submit import cut_shards, part_size
from schemas import JobSpec
from schemas.errors import ConfigError, SampleFleetError, TransientError
from schemas.fleet import (QUEUE_AGGREGATE, QUEUE_CONTROL, STAGES, TASK_FINALISE, TASK_GENERATE, TASK_OPEN, Keys,
                           celery_settings, model_queue, redis_options)

log = logging.getLogger(__name__)
FINISHED = ("done", "partial", "cancelled")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"  # not .port: it raises on a bad one
    return urlunsplit(parts._replace(netloc=netloc))


def for_workers(spec: JobSpec) -> JobSpec:
    """Paths made absolute: workers do not share the producer's working directory."""
    def absolute(path: str) -> str:
        return path if "://" in path else str(Path(path).expanduser().resolve())

    return spec.model_copy(update={"output_dir": absolute(spec.output_dir),
                                   "external_plugins": [absolute(p) for p in spec.external_plugins],
                                   "cache_files": [absolute(p) for p in spec.cache_files]})


class Fleet:
    """A connection to one fleet (its Redis broker and state store)."""

    def __init__(self, broker: str, state: str | None = None) -> None:
        self.broker, self.state_url = broker, state or broker
        self.db = redis.Redis.from_url(self.state_url, **redis_options())
        try:
            redis.Redis.from_url(self.state_url, socket_connect_timeout=5).ping()  # fail fast here, not after retries
        except redis.AuthenticationError as exc:
            raise ConfigError(f"--broker {redact(self.state_url)}: Redis refused the password ({exc})") from None
        except redis.ResponseError as exc:
            raise ConfigError(f"--broker {redact(self.state_url)}: Redis refused the connection ({exc})") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise TransientError(f"--broker {redact(self.state_url)}: unreachable ({exc})") from None

    @cached_property
    def celery(self) -> Celery:
        app = Celery("samplefleet-producer")
        app.conf.update(celery_settings(self.broker, self.state_url))  # TLS options follow these URLs
        return app

    # --- submit ----------------------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, open_timeout: float | None = None) -> str:
        """Check data and output, record the job, enqueue every shard not already done; the job id.

        ``open_timeout`` (default $SAMPLEFLEET_OPEN_TIMEOUT or 60 s): how long a worker may take to check
        the output location.
        """
        open_timeout = open_timeout or float(os.environ.get("SAMPLEFLEET_OPEN_TIMEOUT", 60))
        spec = for_workers(spec)
        stream = PromptStream(spec)
        total = stream.count()
        if total == 0:
            raise ConfigError(f"no prompts in {', '.join(map(str, spec.datasets))}")
        prompts = part_size(spec, total)
        if prompts == 0:
            raise ConfigError(f"--data_range {spec.data_range[0]} {spec.data_range[1]}: this part of the {total} "
                              "prompts is empty")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        done = self._open(spec, open_timeout)
        keys = Keys(job_id)
        queue = model_queue(spec.model)
        shards = -(-prompts // spec.shard_size)
        pipe = self.db.pipeline()
        pipe.hset(keys.job, mapping={"spec": spec.model_dump_json(), "shards": shards, "prompts": prompts,
                                     "bad_rows": json.dumps(stream.bad_rows), "created": time.time(),
                                     "status": "running", "queue": queue})
        pipe.zadd(Keys.jobs, {job_id: time.time()})
        pipe.sadd(Keys.queues, queue)
        if done:
            pipe.sadd(keys.stage["aggregate"], *done)
        pipe.execute()
        self.celery.control.broadcast("samplefleet_follow", arguments={"queue": queue})
        self._enqueue(job_id, spec, stream, total, skip=set(done))
        log.info("job %s: %d prompts in %d shards on queue %s", job_id, prompts, shards, queue)
        return job_id

    def _open(self, spec: JobSpec, timeout: float) -> list[int]:
        result = self.celery.send_task(TASK_OPEN, args=[spec.model_dump_json()], queue=QUEUE_CONTROL,
                                       argsrepr=f"(<job spec: {spec.model} -> {spec.output_dir}/{spec.output_file}>)")
        try:
            return list(result.get(timeout=timeout, propagate=True))
        except CeleryTimeout:
            result.revoke()
            raise TransientError(f"no worker answered within {timeout:.0f}s: start one with "
                                 "`celery -A workers.app worker` against the same broker") from None
        except SampleFleetError:
            raise
        except Exception as exc:  # a worker-side error that is not ours: say what it was
            raise ConfigError(f"checking the output location failed: {type(exc).__name__}: {exc}") from None
        finally:  # drop the result subscription now; left to __del__ it fails at interpreter exit
            result.backend.remove_pending_result(result)
            result.backend = None

    def _enqueue(self, job_id: str, spec: JobSpec, stream: PromptStream, total: int, skip: set[int]) -> int:
        """Send every shard not in ``skip``; how many were sent.

        One producer for the whole loop, and ``ignore_result``: otherwise Celery subscribes to each task's
        result channel as it sends it, a SUBSCRIBE per shard and a subscription list that grows with the
        job (the stage tasks store no result; job state lives in our own keys).
        """
        queue, sent = model_queue(spec.model), 0
        with self.celery.producer_or_acquire() as producer:
            for shard in cut_shards(stream.iterate(total), job_id, spec.shard_size):
                if shard.index not in skip:
                    self.celery.send_task(TASK_GENERATE, args=[job_id, shard.index, shard.model_dump_json()],
                                          queue=queue, producer=producer, ignore_result=True,
                                          argsrepr=f"({job_id!r}, {shard.index}, <{len(shard.prompts)} prompts>)")
                    sent += 1
        return sent

    # --- inspect and steer -----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, str]:
        raw = self.db.hgetall(Keys(job_id).job)
        if not raw:
            raise ConfigError(f"job {job_id!r}: unknown (see `producer list`; if Redis lost its data, submit the "
                              "same job again with --resume true: shards already in the output are kept)")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def status(self, job_id: str) -> "JobStatus":
        job, keys = self._job(job_id), Keys(job_id)
        counters = {k.decode(): int(v) for k, v in self.db.hgetall(keys.counters).items()}
        return JobStatus(
            job_id=job_id, status=job["status"], shards=int(job["shards"]), prompts=int(job["prompts"]),
            stages={stage: self.db.scard(keys.stage[stage]) for stage in STAGES},
            failed={int(k): v.decode() for k, v in self.db.hgetall(keys.failed).items()},
            running={int(k): json.loads(v) for k, v in self.db.hgetall(keys.running).items()},
            created=float(job["created"]), finished=float(job["finished"]) if "finished" in job else None,
            output=job.get("output"), counters=counters, scored=JobSpec.model_validate_json(job["spec"]).scored)

    def list(self) -> list["JobStatus"]:
        return [self.status(j.decode()) for j in self.db.zrevrange(Keys.jobs, 0, -1)]

    def cancel(self, job_id: str) -> None:
        """Workers skip the job's remaining tasks; finished parts stay where they are."""
        self._job(job_id)
        self.db.hset(Keys(job_id).job, "status", "cancelled")

    def resume(self, job_id: str, *, stale_after: float | None = None) -> int:
        """Re-enqueue the shards that are neither aggregated nor in flight; how many were sent.

        A job whose shards are all aggregated but which is not finished (its finaliser died) is sent
        to be finalised instead.
        """
        job, keys = self._job(job_id), Keys(job_id)
        if job["status"] == "done":
            raise ConfigError(f"job {job_id} is done: nothing to resume (output: {job.get('output')})")
        spec = JobSpec.model_validate_json(job["spec"])
        stale_after = stale_after if stale_after is not None else celery_settings()["broker_transport_options"][
            "visibility_timeout"]
        done = {int(i) for i in self.db.smembers(keys.stage["aggregate"])}
        running = {int(k) for k, v in self.db.hgetall(keys.running).items()
                   if time.time() - json.loads(v)["since"] < stale_after}
        skip = done | running
        with self.db.pipeline() as pipe:  # only if no finaliser finished the job since it was read
            try:
                pipe.watch(keys.job)
                if pipe.hget(keys.job, "status") != job["status"].encode():
                    raise redis.WatchError
                pipe.multi()
                pipe.delete(keys.failed, keys.deliveries, keys.finalising)
                pipe.hset(keys.job, "status", "running")
                pipe.hdel(keys.job, "finished")
                pipe.execute()
            except redis.WatchError:
                raise ConfigError(f"job {job_id} changed while resuming (it may have just finished): see "
                                  f"`producer status {job_id}`") from None
        if len(done) >= int(job["shards"]):
            self.celery.send_task(TASK_FINALISE, args=[job_id], queue=QUEUE_AGGREGATE)
            return 0
        stream = PromptStream(spec)
        return self._enqueue(job_id, spec, stream, stream.count(), skip)

    def wait(self, job_id: str, *, progress: bool = True, poll: float = 0.5) -> "JobStatus":
        """Show a bar per stage until the job ends; its last status."""
        from producer.progress import StageBars

        status = self.status(job_id)
        bars = StageBars(status, enabled=progress)
        try:
            while status.status not in FINISHED:
                time.sleep(poll)
                status = self.status(job_id)
                bars.update(status)
        finally:
            bars.close()
        return status


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    status: str
    shards: int
    prompts: int
    stages: dict[str, int]
    failed: dict[int, str]
    running: dict[int, dict]
    created: float
    finished: float | None
    output: str | None
    counters: dict[str, int]
    scored: bool

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.created

    def describe(self) -> str:
        """The text of `producer status`."""
        stages = [s for s in STAGES if s != "score" or self.scored]
        lines = [f"job {self.job_id}: {self.status}, {self.prompts} prompts in {self.shards} shards, "
                 f"{self.seconds:.0f}s",
                 "  " + ", ".join(f"{stage} {self.stages[stage]}/{self.shards}" for stage in stages)
                 + f", failed {len(self.failed)}, in flight {len(self.running)}"]
        if self.counters:
            rate = self.counters.get("candidates", 0) / max(self.seconds, 1e-9)
            lines.append(f"  {self.counters.get('rows', 0)} rows, {self.counters.get('candidates', 0)} samples, "
                         f"{self.counters.get('tokens', 0)} tokens ({rate:.1f} samples/s)")
        lines += [f"  shard {k} failed: {v}" for k, v in sorted(self.failed.items())]
        if self.output:
            lines.append(f"  output: {self.output}")
        return "\n".join(lines)
