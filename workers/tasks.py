"""The fleet's tasks: thin wrappers that run a stage on one shard and pass a reference on.

Big payloads stay out of the broker: a message carries (job id, shard index) and, for generation,
the shard's prompts; candidates and scores go to the job's storage, keyed by (job, shard, stage).
Failure policy lives once, in ``ShardTask``.
"""
from __future__ import annotations

import json
import logging

from celery import Task

from schemas import GeneratedShard, JobSpec, PromptShard
from schemas.errors import PermanentError
from schemas.fleet import (QUEUE_AGGREGATE, QUEUE_SCORE, TASK_AGGREGATE, TASK_FINALISE, TASK_GENERATE, TASK_OPEN,
                           TASK_SCORE, max_attempts, state_url)
from workers.aggregate import shard_rows, summarise
from workers.app import app
from workers.engines import ENGINES, Engine
from workers.generate import generate_shard, load_engine, rows_note
from workers.jobs import FleetJob, connect
from workers.output import JobOutput
from workers.score import Scorer
from workers.scoring import orms
from workers.scoring.plugins import load_plugins

log = logging.getLogger(__name__)
_loaded: dict[str, tuple[str, Engine | Scorer]] = {}  # "engine"/"scorer" -> (config key, loaded object)


def _warm(kind: str, key: str, load) -> Engine | Scorer:
    """The process's engine or scorer, reloaded only when a job needs another model or options."""
    if kind in _loaded and _loaded[kind][0] == key:
        return _loaded[kind][1]
    if kind in _loaded:
        _loaded.pop(kind)[1].close()
    obj = load()
    _loaded[kind] = (key, obj)
    return obj


def engine_for(spec: JobSpec) -> Engine:
    key = json.dumps(spec.model_dump(mode="json", include={"sampler_engine", "model", "torch_dtype", "max_batch_size",
                                                            "max_batch_tokens", "engine_kwargs", "cache_files"}))
    return _warm("engine", key, lambda: load_engine(spec))


def scorer_for(spec: JobSpec) -> Scorer:
    key = json.dumps(spec.model_dump(mode="json", include={"orm_model", "orm_kwargs", "prm_model", "prm_kwargs",
                                                            "external_plugins", "include_ground_truth"}))
    return _warm("scorer", key, lambda: Scorer(spec))


def preload(model: str, engine: str) -> None:
    """Load a model's engine at worker start with default options (jobs with other options reload)."""
    engine_for(JobSpec(model=model, sampler_engine=engine, datasets=[{"source": "-"}], output_file="-.jsonl"))


class ShardTask(Task):
    """Failure policy of every shard task, declared once.

    Bad input or configuration (PermanentError) is never retried: the shard is marked failed with its
    error at once. Anything else is retried with exponential backoff up to SAMPLEFLEET_MAX_ATTEMPTS
    attempts, then marked failed. A shard whose worker keeps dying (delivered more than twice that many
    times) is failed as a poison shard. A failed shard never blocks the job: it ends as partial. The
    failure names the shard's prompts (their dataset rows) when the task has them.
    """

    acks_late = True
    ignore_result = True
    autoretry_for = (Exception,)
    dont_autoretry_for = (PermanentError,)
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = max_attempts() - 1
    stage = ""

    def job(self, job_id: str) -> FleetJob:
        return FleetJob(connect(state_url()), job_id)

    def begin(self, job_id: str, index: int) -> FleetJob | None:
        """The job, or None when the task should do nothing (job cancelled or unknown)."""
        job = self.job(job_id)
        status = job.field("status")
        if status != "running":  # cancelled, unknown, or already finalised (a late duplicate)
            log.info("job %s shard %d: %s skipped (job %s)", job_id, index, self.stage, status or "unknown")
            job.not_running(index)
            return None
        deliveries = job.delivered(self.stage, index)
        if deliveries > 2 * max_attempts():
            raise PermanentError(f"shard {index}: {self.stage} delivered {deliveries} times without finishing "
                                 "(its worker was lost each time: a poison shard?)")
        job.started(self.stage, index, self.request.hostname or "?")
        return job

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id, index = args[0], args[1]
        job = self.job(job_id)
        job.failed(index, f"{self.stage}: {type(exc).__name__}: {exc}{_rows(job, index, args)}")
        log.error("job %s shard %d failed in %s: %s", job_id, index, self.stage, exc)
        job.finalise_once()


def _rows(job: FleetJob, index: int, args: tuple) -> str:
    """The failed shard's rows, from the message (generate) or its stored candidates (later stages)."""
    try:
        if len(args) > 2:  # generate carries its prompts
            prompts = PromptShard.model_validate_json(args[2]).prompts
        else:
            shard = GeneratedShard.model_validate_json(JobOutput(job.spec).read_stage("generated", index))
            prompts = [g.prompt for g in shard.generations]
    except Exception as exc:  # noqa: BLE001 - the failure itself is what matters; the rows are a courtesy
        log.warning("job %s shard %d: cannot list its rows (%s)", job.id, index, exc)
        return ""
    return rows_note(prompts)


@app.task(name=TASK_OPEN)
def open_job(spec_json: str) -> list[int]:
    """Check names, plugins and the output location before anything is enqueued; the shards an earlier run
    finished. Checked without loading a model: --sampler_engine, --orm_model, and every --external_plugins
    file (imported, its entries checked)."""
    spec = JobSpec.model_validate_json(spec_json)
    ENGINES.canonical(spec.sampler_engine)
    load_plugins(spec.external_plugins)
    if spec.orm_model:
        orms.canonical(spec.orm_model)
    return sorted(JobOutput(spec).open())


@app.task(bind=True, base=ShardTask, name=TASK_GENERATE, stage="generate")
def generate(self: ShardTask, job_id: str, index: int, shard_json: str) -> None:
    job = self.begin(job_id, index)
    if job is None:
        return
    spec = job.spec
    output = JobOutput(spec)
    if output.has_stage("generated", index):  # a redelivery, or a resumed job: same prompts, same seed
        log.info("job %s shard %d: candidates already in storage, not generated again", job_id, index)
        job.record_engine({"engine": spec.sampler_engine, "model": spec.model})  # if no shard here loads one
    else:
        engine = engine_for(spec)
        job.record_engine(engine.describe())
        output.write_stage("generated", index,
                           generate_shard(engine, spec, PromptShard.model_validate_json(shard_json)).model_dump_json())
    job.stage_done("generate", index)
    if spec.scored:
        score.apply_async((job_id, index), queue=QUEUE_SCORE)
    else:
        aggregate.apply_async((job_id, index), queue=QUEUE_AGGREGATE)


@app.task(bind=True, base=ShardTask, name=TASK_SCORE, stage="score")
def score(self: ShardTask, job_id: str, index: int) -> None:
    job = self.begin(job_id, index)
    if job is None:
        return
    spec = job.spec
    output = JobOutput(spec)
    scored = scorer_for(spec).score(GeneratedShard.model_validate_json(output.read_stage("generated", index)))
    output.write_stage("scored", index, scored.model_dump_json())
    job.stage_done("score", index)
    aggregate.apply_async((job_id, index), queue=QUEUE_AGGREGATE)


@app.task(bind=True, base=ShardTask, name=TASK_AGGREGATE, stage="aggregate")
def aggregate(self: ShardTask, job_id: str, index: int) -> None:
    job = self.begin(job_id, index)
    if job is None:
        return
    spec = job.spec
    output = JobOutput(spec)
    shard = GeneratedShard.model_validate_json(output.read_stage("scored" if spec.scored else "generated", index))
    rows, dropped = shard_rows(spec, shard)
    summary = summarise(spec, shard, len(rows), dropped)
    output.write_shard(rows, summary)
    job.stage_done("aggregate", index, summary)
    job.finalise_once()


@app.task(name=TASK_FINALISE, acks_late=True, ignore_result=True, autoretry_for=(Exception,), max_retries=5,
          retry_backoff=2)
def finalise(job_id: str) -> None:
    """Assemble a job whose shards are all settled but whose finaliser died (sent by `producer resume`)."""
    FleetJob(connect(state_url()), job_id).finalise_once()
