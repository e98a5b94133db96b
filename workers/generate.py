"""The generate stage: a prompt shard -> its candidates, on an engine loaded once per process."""
from __future__ import annotations

import time
from collections.abc import Callable

from schemas import GeneratedShard, JobSpec, PromptShard
from workers.engines import ENGINES, Engine
from workers.models import hub_models


def load_engine(spec: JobSpec) -> Engine:
    """The engine named by --sampler_engine, loaded with the job's model and options."""
    return ENGINES.create(spec.sampler_engine, hub_models(spec, "model"))


def generate_shard(engine: Engine, spec: JobSpec, shard: PromptShard,
                   on_progress: Callable[[int, int], None] | None = None) -> GeneratedShard:
    """Sample N candidates for every prompt of the shard with the shard's own seed; ``on_progress(tokens,
    samples)`` hears from engines that report as they decode (see ``Engine.on_progress``)."""
    started = time.perf_counter()
    engine.on_progress = on_progress
    try:
        generations = engine.generate(shard.prompts, spec.sampling, seed=spec.sampling.shard_seed(shard.index))
    finally:
        engine.on_progress = None
    return GeneratedShard(job_id=shard.job_id, index=shard.index, generations=generations,
                          seconds=time.perf_counter() - started)

