"""The generate stage: a prompt shard -> its candidates, on an engine loaded once per process."""
from __future__ import annotations

import time
from collections.abc import Sequence

from schemas import GeneratedShard, JobSpec, Prompt, PromptShard
from workers.engines import ENGINES, Engine


def load_engine(spec: JobSpec) -> Engine:
    """The engine named by --sampler_engine, loaded with the job's model and options."""
    return ENGINES.create(spec.sampler_engine, spec)


def generate_shard(engine: Engine, spec: JobSpec, shard: PromptShard) -> GeneratedShard:
    """Sample N candidates for every prompt of the shard with the shard's own seed."""
    started = time.perf_counter()
    generations = engine.generate(shard.prompts, spec.sampling, seed=spec.sampling.shard_seed(shard.index))
    return GeneratedShard(job_id=shard.job_id, index=shard.index, generations=generations,
                          seconds=time.perf_counter() - started)


def rows_note(prompts: Sequence[Prompt], shown: int = 5) -> str:
    """" [rows: ...]" for a failed shard's error: where its prompts came from (the first few and a count)."""
    sources = [p.source for p in prompts[:shown]]
    more = f"; ... {len(prompts)} prompts in all" if len(prompts) > shown else ""
    return " [rows: " + "; ".join(sources) + more + "]"
