"""The embedded default: the whole pipeline in this process, shard by shard, no broker.

Each shard walks the fleet's steps (``workers.lifecycle.pipeline``): generate -> score (when a reward model
is set) -> with adaptive sampling, the next wave while prompts are still open -> aggregate -> write the
shard's part; shards already done (``--resume``) are skipped; after the last shard the parts become the
final jsonl and manifest. The output's lock is held from the first check to the final write, so a second run on the
same output is refused while this one lives.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from schemas import GeneratedShard, JobSpec, PromptShard, ShardSummary
from schemas.errors import DataError, PermanentError, PluginError
from schemas.jobstate import Stage
from schemas.records import check_unchanged, rows_note
from workers.adaptive import generate_wave, replay
from workers.aggregate import shard_rows, summarise
from workers.engines import Engine
from workers.generate import generate_shard, load_engine
from workers.lifecycle import pipeline
from workers.manifest import build_manifest
from workers.output import JobOutput
from workers.score import Scorer

log = logging.getLogger(__name__)


def run_job(spec: JobSpec, shards: Iterable[PromptShard], *, job_id: str, plan: Callable[[], tuple[int, list[str]]],
            on_shard: Callable[[ShardSummary, bool], None] = lambda summary, resumed: None,
            recheck: Iterable[PromptShard] | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> tuple[str, dict]:
    """Run every shard not yet done, then finalise; returns the final file's location and the manifest.

    ``plan()`` gives (planned prompts, bad rows) from the producer's reading of the data, for the manifest; it is
    asked once the models are loaded, before the output opens (the local run counts the data meanwhile), and
    must give the same each time;
    ``on_shard(summary, resumed)`` is called per shard (``resumed``: done by an earlier run). ``recheck``
    (with --resume): the shards once more, read before anything runs, to refuse data that changed since the
    finished shards were made. ``on_progress(tokens, samples)`` hears from inside a shard (engines that report).
    """
    started = time.time()
    output = JobOutput(spec)
    with output.lock() as lock:
        output.check()  # a clash fails before any model loads
        if recheck is not None:
            check_unchanged({s.index: s.fingerprint for s in output.summaries()}, recheck)
        summaries, manifest = _run_shards(spec, shards, output, job_id=job_id, plan=plan, on_shard=on_shard,
                                          on_progress=on_progress, started=started)
        if spec.sampler_engine == "no" and not any(s.candidates for s in summaries):
            raise DataError(f"--cache_files {', '.join(spec.cache_files)}: no cached candidate matches any prompt of "
                            f"{', '.join(map(str, spec.datasets))} (matched by id, then by the prompt's turns); give "
                            "the stage-1 output of this same dataset")
        lock.ensure_held()
        location = output.finalise(manifest, summaries=summaries, planned=-(-plan()[0] // spec.shard_size))
        output.drop_parts()
    return location, manifest


def _run_shards(spec: JobSpec, shards: Iterable[PromptShard], output: JobOutput, *, job_id: str,
                plan: Callable[[], tuple[int, list[str]]], on_shard: Callable[[ShardSummary, bool], None],
                on_progress: Callable[[int, int], None] | None, started: float) -> tuple[list[ShardSummary], dict]:
    """Load the models, run every shard not done yet; the done-markers and the manifest (models closed)."""
    with contextlib.ExitStack() as stack:
        # Loaded once, before any shard: a plugin, reward model or generator that cannot load fails here.
        scorer = Scorer(spec) if spec.scored else None
        if scorer is not None:
            stack.callback(scorer.close)
        engine = load_engine(spec)
        stack.callback(engine.close)
        loaded = time.time()
        planned_prompts, bad_rows = plan()  # bad data fails here, before the output opens
        done = output.open()  # only now: a plugin or model that cannot load leaves no "unfinished run" behind
        previous = {s.index: s for s in output.summaries()}
        for shard in shards:
            if shard.index in done:
                on_shard(previous[shard.index], True)
                continue
            try:
                generated, stopped = _sample(engine, scorer, spec, shard, on_progress)
            except (PermanentError, PluginError) as exc:  # name the shard and its rows, as the fleet's failures do
                raise type(exc)(f"shard {shard.index}{rows_note(shard.prompts)}: {exc}") from exc
            rows, dropped = shard_rows(spec, generated)
            summary = summarise(spec, generated, len(rows), dropped, stopped)
            output.write_shard(rows, summary)
            log.info("job %s shard %d: %d rows in %.1fs", shard.job_id, shard.index, len(rows), summary.seconds)
            on_shard(summary, False)
        summaries = output.summaries()
        manifest = build_manifest(spec, summaries, job_id=job_id, engine=engine.describe(),
                                  planned_prompts=planned_prompts, bad_rows=bad_rows, started=started,
                                  finished=time.time(), load_seconds=loaded - started)
    return summaries, manifest


def _sample(engine: Engine, scorer: Scorer | None, spec: JobSpec, shard: PromptShard,
            on_progress: Callable[[int, int], None] | None) -> tuple[GeneratedShard, dict[int, str]]:
    """The shard's steps up to aggregate, as the fleet's tasks take them (``pipeline.after``): its candidates
    (scored when the job is) and, with adaptive sampling, prompt row -> why its sampling stopped."""
    adaptive = spec.target_correct is not None
    step: pipeline.Step | None = pipeline.FIRST
    waves: list[GeneratedShard] = []  # adaptive sampling's scored waves
    acc, stopped, still = None, {}, list(shard.prompts)
    generated: GeneratedShard | None = None
    while step is not None and step.stage is not Stage.AGGREGATE:
        if step.stage is Stage.GENERATE and adaptive:
            engine.on_progress = on_progress
            try:
                generated = generate_wave(engine, spec, shard.model_copy(update={"prompts": still}), acc, step.wave)
            finally:
                engine.on_progress = None
        elif step.stage is Stage.GENERATE:
            generated = generate_shard(engine, spec, shard, on_progress)
        else:
            generated = scorer.score(generated)
            if adaptive:
                waves.append(generated)
                acc, stopped, still = replay(spec, waves)
        step = pipeline.after(spec, step, open_prompts=bool(still))
    return (acc if adaptive else generated), stopped
