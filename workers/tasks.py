"""The fleet's tasks: thin wrappers that run a stage on one shard and pass a reference on.

Big payloads stay out of the broker: a message carries (job id, shard index) and, for generation,
the shard's prompts; candidates and scores go to the job's storage, keyed by (job, shard, stage).
Lease, retry, time-limit and failure policy live once, in ``ShardTask`` (the policy itself:
``workers.lifecycle.policy``); what each task sends next: ``workers.lifecycle.pipeline``.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import count

from celery import Task

from schemas import GeneratedShard, JobSpec, Prompt, PromptShard
from schemas.errors import PermanentError, StageTimeLimit
from schemas.fleet import QUEUE_AGGREGATE, TASK_AGGREGATE, TASK_FINALISE, TASK_GENERATE, TASK_OPEN, TASK_SCORE
from schemas.jobstate import JobRecord, Lease, Outcome, Stage
from schemas.records import rows_note
from schemas.settings import settings
from workers.adaptive import generate_wave, replay, wave_stage
from workers.aggregate import shard_rows, summarise
from workers.app import app, send
from workers.engines import ENGINES
from workers.generate import generate_shard
from workers.lifecycle.finalise import finalise_once
from workers.lifecycle.lease import Hold
from workers.lifecycle.pipeline import Step, after
from workers.lifecycle.policy import FailurePolicy
from workers.lifecycle.state import JobState, job_state
from workers.models import hub_models
from workers.output import JobOutput
from workers.preemption import STOPPER, Preempted
from workers.scoring.plugins import load_plugins
from workers.warm import engine_for, scorer_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """What every shard task reads first (``ShardTask.shard``): its job's state, record and output, its step."""

    state: JobState
    record: JobRecord
    output: JobOutput
    index: int
    step: Step
    token: str

    @property
    def spec(self) -> JobSpec:
        return self.record.spec


_current: ContextVar[Shard] = ContextVar("shard")  # the running task's (per thread, for --pool threads)


class ShardTask(Task):
    """Lease, retry and failure policy of every shard task, declared once.

    Before the body runs, the shard's lease is taken (``JobState.begin``): a task whose job is not running,
    whose shard is settled, or whose shard another live worker holds for this step or a later one, does
    nothing. While the body runs, the lease is renewed (``workers.lifecycle.lease``); a worker that dies stops
    renewing and the reaper sends the task again. A failed attempt goes to the failure policy
    (``workers.lifecycle.policy``): failed at once, or retried after a back-off (the lease waits it out, then
    the reaper sends the task again), up to SAMPLEFLEET_MAX_ATTEMPTS attempts; a poison shard is failed. A
    worker told to stop (SIGTERM) hands the shard back and sends it again at once (``workers.preemption``);
    that delivery is not counted. A failed shard never blocks the job: it ends failed or partial. The failure
    names the shard's prompts (their dataset rows) when the task has them.
    """

    acks_late = True
    ignore_result = True
    stage: Stage
    wave_at: int | None = None  # where the adaptive wave's number is in the arguments after (job id, shard)

    @property
    def shard(self) -> Shard:
        """The running task's shard, read by ``__call__`` before the body runs."""
        return _current.get()

    def __call__(self, job_id: str, index: int, *rest) -> str:
        env = settings()
        policy = FailurePolicy(env.max_attempts)
        state = job_state(job_id)
        token = self.request.id or uuid.uuid4().hex
        step = Step(self.stage, rest[self.wave_at] if self.wave_at is not None and len(rest) > self.wave_at else 0)
        lease = Lease(stage=step.stage.value, index=index, wave=step.wave, token=token,
                      owner=self.request.hostname or "?", task=self.name, args=[job_id, index, *rest],
                      queue=self._queue(), since=0.0)
        begun = state.begin(lease, seconds=env.lease_expire, most_deliveries=policy.most_deliveries)
        what = f"job {job_id} shard {index} {step.stage.value}" + (f" (wave {step.wave})" if step.wave else "")
        if begun.reason == "poison":
            self._fail(state, index, token, PermanentError(
                f"shard {index}: {step.stage.value} delivered {begun.deliveries} times without finishing (its "
                "worker was lost each time: a poison shard?)"), rest, step.wave)
            return Outcome.FAILED.said("poison shard")
        if not begun.run:
            log.info("%s: skipped (%s)", what, begun.reason)
            return Outcome.SKIPPED.said(begun.reason)
        hold = Hold(lambda: state.renew(index, token, env.lease_expire), env.lease_renew,
                    limit=env.stage_time_limit, what=what)
        try:
            with STOPPER.stage(what, lambda: self._hand_back(state, lease, env.lease_expire)), hold:
                record = state.record()
                current = _current.set(Shard(state, record, JobOutput(record.spec), index, step, token))
                try:
                    self.run(job_id, index, *rest)
                finally:
                    _current.reset(current)
        except Preempted:
            log.warning("%s: stopped, its worker is shutting down (the shard was handed back)", what)
            return Outcome.HANDED_BACK.said()
        except Exception as exc:  # noqa: BLE001 - every failure goes through the one policy
            if hold.timed_out or isinstance(exc, StageTimeLimit):
                exc = StageTimeLimit(f"{self.stage.value} ran past SAMPLEFLEET_STAGE_TIME_LIMIT="
                                     f"{env.stage_time_limit:g}s")
            return self._attempt_failed(state, lease, exc, rest, policy)
        state.release(index, token)
        log.info("%s: done", what)  # Celery's own "succeeded" line names only the task id
        return Outcome.DONE.said()

    @staticmethod
    def _hand_back(state: JobState, lease: Lease, seconds: float) -> None:
        """The worker is stopping: the shard goes back to its queue now, not after its lease expires."""
        again = state.hand_back(lease, seconds)
        if again:
            send(again.task, again.args, again.queue)
            log.warning("job %s shard %d: %s handed back and sent again", state.id, lease.index, lease.stage)

    def _queue(self) -> str:
        info = self.request.delivery_info or {}
        return info.get("routing_key") or self.queue or QUEUE_AGGREGATE

    def _attempt_failed(self, state: JobState, lease: Lease, exc: Exception, rest: tuple,
                        policy: FailurePolicy) -> str:
        index, token = lease.index, lease.token
        if policy.permanent(exc):
            self._fail(state, index, token, exc, rest, lease.wave)
            raise exc
        attempts, backoff = state.attempt_failed(index, token, most=policy.most, wave=lease.wave, error=exc)
        if policy.gives_up(exc, attempts):
            self._fail(state, index, token, exc, rest, lease.wave)
            raise exc
        log.warning("job %s shard %d: %s attempt %d failed (%s: %s); again in %.0fs", state.id, index,
                    self.stage.value, attempts, type(exc).__name__, exc, backoff)
        return Outcome.RETRYING.said(f"in {backoff:.0f}s: {type(exc).__name__}: {exc}")

    def _fail(self, state: JobState, index: int, token: str, exc: Exception, rest: tuple, wave: int = 0) -> None:
        # wave 0's generate carries the shard's prompts; later waves only those still open, all of them fail
        prompts = rest[0] if self.stage is Stage.GENERATE and not wave else None
        error = f"{self.stage.value}: {type(exc).__name__}: {exc}{_rows(state, index, prompts)}"
        if state.failed(index, token, error):
            log.error("job %s shard %d failed in %s: %s", state.id, index, self.stage.value, exc)
        finalise_once(state)

    def pass_on(self, shard: Shard, *, still: Sequence[Prompt] = (), **counts: int) -> None:
        """Mark this step done and send the next step's task (``pipeline.after``; ``still``: the prompts an
        adaptive wave left open); after aggregate, the job is finalised once every shard is settled. The lease is
        dropped (``__call__``) only after the next task is sent, so a worker lost before that is re-run."""
        shard.state.stage_done(self.stage.value, shard.index, shard.token, **counts)
        step = after(shard.spec, shard.step, open_prompts=bool(still))
        if step is None:
            finalise_once(shard.state)
            return
        job_id, index = shard.state.id, shard.index
        if step.stage is Stage.GENERATE:
            args: tuple = (job_id, index, PromptShard(job_id=job_id, index=index, prompts=list(still)).model_dump_json(),
                           step.wave)
        else:
            args = (job_id, index, step.wave) if step.stage is Stage.SCORE else (job_id, index)
        _TASKS[step.stage].apply_async(args, queue=step.queue(shard.record.queue))


def _rows(state: JobState, index: int, shard_json: str | None) -> str:
    """The failed shard's rows, from the message (generate) or its stored candidates (later stages)."""
    try:
        if shard_json:
            prompts = PromptShard.model_validate_json(shard_json).prompts
        else:
            shard = GeneratedShard.model_validate_json(JobOutput(state.record().spec).read_stage("generated", index))
            prompts = [g.prompt for g in shard.generations]
    except Exception as exc:  # noqa: BLE001 - the failure itself is what matters; the rows are a courtesy
        log.warning("job %s shard %d: cannot list its rows (%s)", state.id, index, exc)
        return ""
    return rows_note(prompts)


@app.task(name=TASK_OPEN)
def open_job(spec_json: str) -> dict[str, str]:
    """Check names, plugins and the output location before anything is enqueued; the shards an earlier run
    finished, each with its prompts' fingerprint. Checked without loading a model: --sampler_engine,
    --orm_model, --prm_model (a registered name, or a model whose files say what kind of PRM it is), and every
    --external_plugins file (imported, its entries checked)."""
    spec = JobSpec.model_validate_json(spec_json)
    ENGINES.canonical(spec.sampler_engine)
    registries = load_plugins(spec.external_plugins)  # the job's own names, over the built-ins
    for name in spec.orm_names:
        registries.orms.canonical(name)
    if spec.prm_model and spec.prm_model not in registries.prms:
        from workers.scoring.prm_kinds import prm_kind

        configs = hub_models(spec, "prm_model", files=["config.json", "modules.json"])  # not the weights
        prm_kind(configs.prm_model, spec.prm_kwargs)
    output = JobOutput(spec)
    output.open()
    return {str(s.index): s.fingerprint or "" for s in output.summaries()}


def _scored_waves(output: JobOutput, index: int, upto: int | None = None) -> Iterator[GeneratedShard]:
    """An adaptive shard's scored waves from storage, in order (``upto``: the first ones only)."""
    for number in count() if upto is None else range(upto):
        yield GeneratedShard.model_validate_json(output.read_stage(wave_stage("scored", number), index))


@app.task(bind=True, base=ShardTask, name=TASK_GENERATE, stage=Stage.GENERATE, wave_at=1)
def generate(self: ShardTask, job_id: str, index: int, shard_json: str, wave: int = 0) -> None:
    """A shard's candidates; with adaptive sampling, one wave of them for the prompts still open."""
    shard = self.shard
    spec, output = shard.spec, shard.output
    stored = wave_stage("generated", wave)
    if output.has_stage(stored, index):  # a redelivery, or a resumed job: same prompts, same seed
        log.info("job %s shard %d: candidates already in storage, not generated again", job_id, index)
        shard.state.record_engine({"engine": spec.sampler_engine, "model": spec.model or ""})  # if none loads one
    else:
        engine = engine_for(spec)
        shard.state.record_engine(engine.describe())
        prompts = PromptShard.model_validate_json(shard_json)
        if spec.target_correct is None:
            generated = generate_shard(engine, spec, prompts)
        else:
            acc = replay(spec, _scored_waves(output, index, upto=wave))[0] if wave else None
            generated = generate_wave(engine, spec, prompts, acc, wave)
        output.write_stage(stored, index, generated.model_dump_json())
    self.pass_on(shard)


@app.task(bind=True, base=ShardTask, name=TASK_SCORE, stage=Stage.SCORE, wave_at=0)
def score(self: ShardTask, job_id: str, index: int, wave: int = 0) -> None:
    """A shard's scores; with adaptive sampling, a wave's, then the next wave of the prompts still open goes back
    to the generator pool, or the shard goes on to aggregate."""
    shard = self.shard
    spec, output = shard.spec, shard.output
    stored = wave_stage("scored", wave)
    if not output.has_stage(stored, index):  # else a redelivery: the scores are in storage
        generated = GeneratedShard.model_validate_json(output.read_stage(wave_stage("generated", wave), index))
        output.write_stage(stored, index, scorer_for(spec).score(generated).model_dump_json())
    adaptive = spec.target_correct is not None
    self.pass_on(shard, still=replay(spec, _scored_waves(output, index, upto=wave + 1))[2] if adaptive else ())


@app.task(bind=True, base=ShardTask, name=TASK_AGGREGATE, stage=Stage.AGGREGATE)
def aggregate(self: ShardTask, job_id: str, index: int) -> None:
    shard = self.shard
    spec, output = shard.spec, shard.output
    stopped: dict[int, str] = {}
    if spec.target_correct is None:
        generated = GeneratedShard.model_validate_json(output.read_stage("scored" if spec.scored else "generated",
                                                                         index))
    else:
        generated, stopped, _ = replay(spec, _scored_waves(output, index))
    rows, dropped = shard_rows(spec, generated)
    summary = summarise(spec, generated, len(rows), dropped, stopped)
    output.write_shard(rows, summary)
    self.pass_on(shard, candidates=summary.candidates, tokens=summary.tokens, rows=summary.rows)


_TASKS = {Stage.GENERATE: generate, Stage.SCORE: score, Stage.AGGREGATE: aggregate}  # what pass_on sends


@app.task(bind=True, name=TASK_FINALISE, acks_late=True, ignore_result=True)
def finalise(self: Task, job_id: str) -> None:
    """Assemble a job whose shards are all settled but whose finaliser was lost (sent by the reaper); a failure
    goes through the shard tasks' policy (``workers.lifecycle.policy``), retried with this task's own count."""
    try:
        finalise_once(job_state(job_id))
    except Exception as exc:
        policy, attempts = FailurePolicy(settings().max_attempts), self.request.retries + 1
        if policy.gives_up(exc, attempts):
            log.error("job %s: finalising failed %d times (%s: %s); given up", job_id, attempts,
                      type(exc).__name__, exc)
            raise
        backoff = policy.backoff(attempts, exc)
        log.warning("job %s: finalising failed (%s: %s); again in %.0fs", job_id, type(exc).__name__, exc, backoff)
        raise self.retry(exc=exc, countdown=backoff, max_retries=None)
