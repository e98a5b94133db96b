"""The producer's side of the fleet: record a job in Redis, enqueue its shards, report and steer it.

Tasks are sent by name (``schemas.fleet``) and the job state is changed only through
``workers.lifecycle`` (torch-free): the producer never imports the workers' tasks. Every option and every
row is checked before anything is enqueued, and the output location is checked by a worker (which holds
the storage credentials) through the ``open_job`` task, so a job that cannot finish never half-starts.
"""
from __future__ import annotations

import logging
import time
import uuid
from functools import cached_property
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from producer.datasets import PromptStream
from producer.submit import absolute_paths, check_scoring, cut_shards, part_size
from schemas import JobSpec
from schemas.errors import ConfigError, DataError, OutputError, SampleFleetError, StateError, TransientError
from schemas.fleet import QUEUE_CONTROL, TASK_GENERATE, TASK_OPEN, model_queue
from schemas.jobstate import HeldLease, JobRecord, JobStatus, Status
from schemas.records import check_unchanged, fingerprint
from schemas.settings import settings
from workers.broker import celery_settings, redis_options
from workers.lifecycle.keys import Keys
from workers.lifecycle.reaper import Reaper
from workers.lifecycle.resume import reopen
from workers.lifecycle.state import JobState, active_jobs

log = logging.getLogger(__name__)
FINISHED = tuple(s.value for s in Status if s.finished)


def redis_full(exc: BaseException) -> bool:
    """Redis at its ``maxmemory`` under ``noeviction`` refuses writes: redis-py's OutOfMemoryError, or kombu's
    OperationalError around the same reply ("command not allowed when used memory > 'maxmemory'")."""
    return isinstance(exc, redis.OutOfMemoryError) or "used memory > 'maxmemory'" in str(exc)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"  # not .port: it raises on a bad one
    return urlunsplit(parts._replace(netloc=netloc))


class Fleet:
    """A connection to one fleet: its broker, job-state store and result backend (default: all the broker)."""

    def __init__(self, broker: str, state: str | None = None, result: str | None = None) -> None:
        self.broker, self.state_url, self.result_url = broker, state or broker, result or broker
        self.db = redis.Redis.from_url(self.state_url, **redis_options())
        try:
            redis.Redis.from_url(self.state_url, socket_connect_timeout=5).ping()  # fail fast here, not after retries
        except redis.AuthenticationError as exc:
            raise ConfigError(f"{self._named()}: Redis refused the password ({exc})") from None
        except redis.ResponseError as exc:
            raise ConfigError(f"{self._named()}: Redis refused the connection ({exc})") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise TransientError(f"{self._named()}: unreachable ({exc})") from None

    @classmethod
    def from_settings(cls, broker: str) -> "Fleet":
        """The fleet at ``broker``, with SAMPLEFLEET_STATE_URL / SAMPLEFLEET_RESULT_URL as the workers read them."""
        env = settings()
        return cls(broker, env.state_url, env.result_url)

    def _named(self) -> str:
        where = "SAMPLEFLEET_STATE_URL" if self.state_url != self.broker else "--broker"
        return f"{where} {redact(self.state_url)}"

    @cached_property
    def celery(self) -> Celery:
        app = Celery("samplefleet-producer")
        app.conf.update(celery_settings(self.broker, self.result_url))  # TLS options follow these URLs
        return app

    def state(self, job_id: str) -> JobState:
        return JobState(self.db, job_id)

    def _send(self, task: str, args: list, queue: str) -> None:
        self.celery.send_task(task, args=args, queue=queue, ignore_result=True)

    def sweep(self) -> int:
        """One reaper pass (the workers run the same): lost workers' shards and orphaned finalisations sent."""
        return Reaper(self.db, self._send, settings()).maybe_sweep()

    # --- submit ----------------------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, open_timeout: float | None = None) -> str:
        """Check reward models, data and output, record the job, enqueue every shard not done yet; the job id.

        ``open_timeout`` (default SAMPLEFLEET_OPEN_TIMEOUT): how long a worker may take to check the output.
        """
        open_timeout = open_timeout or settings().open_timeout
        spec = absolute_paths(spec)
        check_scoring(spec)
        self._refuse_live_output(spec)
        stream = PromptStream(spec)
        total = stream.count()
        if total == 0:
            raise ConfigError(f"no prompts in {', '.join(map(str, spec.datasets))}")
        prompts = part_size(spec, total)
        if prompts == 0:
            raise ConfigError(f"--data_range {spec.data_range[0]} {spec.data_range[1]}: this part of the {total} "
                              "prompts is empty")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        recorded = False
        try:
            done = self._open(spec, open_timeout)
            if done:  # shards an earlier run left in the output: they must hold the same prompts as now
                check_unchanged(done, cut_shards(stream.iterate(total), job_id, spec.shard_size))
            queue = model_queue(spec.model)
            record = JobRecord(id=job_id, spec=spec, shards=-(-prompts // spec.shard_size), prompts=prompts,
                               rows_read=total, bad_rows=stream.bad_rows, created=time.time(), queue=queue)
            state = JobState.create(self.db, record, done=done)
            recorded = True
            self.celery.control.broadcast("samplefleet_follow", arguments={"queue": queue})
            self._enqueue(state, spec, stream, total, skip=set(done))
        except Exception as exc:
            if not redis_full(exc):
                raise
            then = (f"job {job_id} was recorded but not all its shards were sent: free memory, then `producer "
                    f"resume {job_id}` sends the rest" if recorded else "free memory, then submit again")
            raise TransientError(f"Redis refused the write: it is full (maxmemory reached; with noeviction it "
                                 f"refuses writes instead of dropping data, so nothing it holds was lost); {then} "
                                 "(finished jobs' keys expire, or raise maxmemory below the container's limit)") \
                from None
        log.info("job %s: %d prompts in %d shards on queue %s", job_id, prompts, record.shards, queue)
        return job_id

    def _refuse_live_output(self, spec: JobSpec) -> None:
        """One run per output: a running job's output is not another job's to write (or, overridden, to clear)."""
        for job_id in active_jobs(self.db):
            try:
                other = self.state(job_id).record()
            except KeyError:
                continue
            if other.status is Status.RUNNING and (other.spec.output_dir, other.spec.output_file) == (
                    spec.output_dir, spec.output_file):
                raise OutputError(f"{spec.output_dir}/{spec.output_file} is being written by running job {job_id}: "
                                  f"wait for it (`producer wait {job_id}`), cancel it, or choose another "
                                  "--output_file")

    def _open(self, spec: JobSpec, timeout: float) -> dict[int, str]:
        """A worker checks the output location; the shards already done there, with their fingerprints."""
        result = self.celery.send_task(TASK_OPEN, args=[spec.model_dump_json()], queue=QUEUE_CONTROL,
                                       argsrepr=f"(<job spec: {spec.model} -> {spec.output_dir}/{spec.output_file}>)")
        try:
            return {int(k): v for k, v in dict(result.get(timeout=timeout, propagate=True)).items()}
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

    def _enqueue(self, state: JobState, spec: JobSpec, stream: PromptStream, total: int, *, skip: set[int],
                 only: set[int] | None = None, batch: int = 256) -> int:
        """Send every shard not in ``skip`` (and in ``only``, when given); how many were sent.

        Every shard's fingerprint is recorded, for a later resume to check the data against. One producer for
        the whole loop, and ``ignore_result``: otherwise Celery subscribes to each task's result channel as it
        sends it, a SUBSCRIBE per shard and a subscription list that grows with the job.
        """
        queue, sent, seen = model_queue(spec.model), 0, {}
        with self.celery.producer_or_acquire() as producer:
            for shard in cut_shards(stream.iterate(total), state.id, spec.shard_size):
                seen[shard.index] = fingerprint(shard.prompts)
                if len(seen) >= batch:
                    state.remember(seen)
                    seen = {}
                if shard.index in skip or (only is not None and shard.index not in only):
                    continue
                self.celery.send_task(TASK_GENERATE, args=[state.id, shard.index, shard.model_dump_json()],
                                      queue=queue, producer=producer, ignore_result=True,
                                      argsrepr=f"({state.id!r}, {shard.index}, <{len(shard.prompts)} prompts>)")
                sent += 1
            state.remember(seen)
        return sent

    # --- inspect and steer -----------------------------------------------------------------------------------

    def _record(self, job_id: str) -> JobRecord:
        try:
            return self.state(job_id).record()
        except KeyError:
            raise ConfigError(f"job {job_id!r}: unknown (see `producer list`; if Redis lost its data, submit the "
                              "same job again with --resume true: shards already in the output are kept)") from None

    def status(self, job_id: str) -> JobStatus:
        record, state = self._record(job_id), self.state(job_id)
        leases = {i: HeldLease(held.lease, round(held.age, 1), round(held.expires_in, 1))
                  for i, held in state.leases().items()}
        return JobStatus(
            job_id=job_id, status=record.status.value, shards=record.shards, prompts=record.prompts,
            stages=state.stage_counts(), failed=state.failures(), running=leases, requeued=state.requeued(),
            requeues=record.requeues, created=record.created, finished=record.finished, output=record.output,
            counters=state.counters(), scored=record.spec.scored, queue=record.queue)

    def list(self) -> list[JobStatus]:
        out = []
        for job_id in self.db.zrevrange(Keys.jobs, 0, -1):
            try:
                out.append(self.status(job_id.decode()))
            except ConfigError:  # its keys expired (SAMPLEFLEET_FINISHED_TTL); the reaper drops it from the index
                continue
        return out

    def cancel(self, job_id: str) -> None:
        """Workers skip the job's remaining tasks; finished parts stay where they are. A finished job is refused."""
        self._record(job_id)
        try:
            self.state(job_id).cancel()
        except StateError as exc:
            raise ConfigError(str(exc)) from None

    def resume(self, job_id: str) -> int:
        """Send again the shards that are neither aggregated, nor leased by a live worker, nor waiting in the
        broker; how many.

        The data is read again from the job's (absolute) dataset paths and must hold the same prompts: a
        changed dataset is refused, naming the first shard that differs, before anything is sent. A job whose
        shards are all aggregated but which is not finished (its finaliser was lost) is sent to be finalised.
        """
        record, state = self._record(job_id), self.state(job_id)
        if record.status is Status.DONE:
            raise ConfigError(f"job {job_id} is done: nothing to resume (output: {record.output})")
        spec = record.spec
        stream = PromptStream(spec)
        total = stream.count()
        if total != record.rows_read:
            raise DataError(f"job {job_id}: the data changed since the job began ({record.rows_read} prompts read "
                            f"then, {total} now from {', '.join(map(str, spec.datasets))}); resume with the same "
                            "data, or submit a new job")
        check_unchanged(state.fingerprints(), cut_shards(stream.iterate(total), job_id, spec.shard_size))
        try:
            again = reopen(state, record, self.broker)
        except StateError as exc:
            raise ConfigError(str(exc)) from None
        if not again:
            self.sweep()  # sends the finalisation of a job whose shards are all settled
            return 0
        return self._enqueue(state, spec, stream, total, skip=set(), only=set(again))

    def wait(self, job_id: str, *, progress: bool = True, poll: float = 0.5) -> JobStatus:
        """Show a bar per stage until the job ends; its last status. Makes the reaper's pass as it waits."""
        from producer.progress import StageBars

        interval = settings().reap_interval
        swept = time.monotonic()
        status = self.status(job_id)
        bars = StageBars(status, enabled=progress)
        try:
            while status.status not in FINISHED:
                time.sleep(poll)
                if time.monotonic() - swept >= interval:
                    self.sweep()
                    swept = time.monotonic()
                status = self.status(job_id)
                bars.update(status)
        finally:
            bars.close()
        return status

