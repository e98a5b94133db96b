"""Adaptive sampling (``--target_correct K``): sample a shard's prompts in waves, stop each one once it has
what the selection needs.

Every wave samples ``--wave_size`` candidates for each prompt still open, all of them in one engine call (the
engine batches the prompts together), and scores them at once. A prompt stops when it has K ORM-passing
candidates and, when the output wants a rejected side (every format but ``trl_stepwise``), a failing one; or
when it reaches ``--num_return_sequences`` samples; or, with ``--drop_settled``, when its first wave is all
correct or all wrong (the groups DAPO's dynamic sampling drops). Why each prompt stopped goes to its stats line
and the manifest. Each wave's seed derives from the shard's seed and the wave's number, so a run is
deterministic with ``--seed``. Off by default: without ``--target_correct`` this module is not used at all.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from itertools import groupby

from schemas import Candidate, GeneratedShard, Generation, JobSpec, PromptShard
from workers.engines import Engine
from workers.score import Scorer

TARGET = "target reached"
CAP = "sample cap reached"
ALL_CORRECT = "settled: first wave all correct"
ALL_WRONG = "settled: first wave all wrong"
UNSCORABLE = "unscorable"
DRY = "the engine returned no more samples"
SKIPPED = "skipped"


def wave_seed(shard_seed: int, wave: int) -> int:
    """Wave 0 uses the shard's own seed; later waves derive theirs from it."""
    return (shard_seed * 1_000_003 + wave * 7_919) % (2**63)


def _stop(spec: JobSpec, cands: list[Candidate], first_wave: bool) -> str | None:
    """Why the prompt needs no more samples, or None."""
    samples = [c for c in cands if not c.reference]
    if any(c.scores is None for c in samples):
        return UNSCORABLE
    passing = sum(c.scores.orm_pass for c in samples)
    failing = len(samples) - passing
    if passing >= spec.target_correct and (failing > 0 or spec.output_format == "trl_stepwise"):
        return TARGET
    if first_wave and spec.drop_settled and (failing == 0 or passing == 0):
        return ALL_CORRECT if failing == 0 else ALL_WRONG
    if len(samples) >= spec.sampling.num_return_sequences:
        return CAP
    return None


def sample_adaptively(engine: Engine, scorer: Scorer, spec: JobSpec, shard: PromptShard,
                      on_progress: Callable[[int, int], None] | None = None) -> tuple[GeneratedShard, dict[int, str]]:
    """The shard's scored candidates, sampled wave by wave, and prompt row -> why its sampling stopped."""
    started = time.perf_counter()
    n, wave = spec.sampling.num_return_sequences, spec.adaptive_wave
    prompts = shard.prompts
    cands: list[list[Candidate]] = [[] for _ in prompts]
    skipped: dict[int, str] = {}
    stopped: dict[int, str] = {}
    active = list(range(len(prompts)))
    dry: set[int] = set()
    engine.on_progress = on_progress
    try:
        number = 0
        while active:
            sizes = {i: min(wave, n - sum(not c.reference for c in cands[i])) for i in active}
            for size, group in groupby(sorted(active, key=lambda i: -sizes[i]), key=lambda i: sizes[i]):
                members = list(group)
                params = spec.sampling.model_copy(update={"num_return_sequences": size})
                gens = engine.generate([prompts[i] for i in members], params,
                                       seed=wave_seed(spec.sampling.shard_seed(shard.index), number))
                scored = scorer.score(GeneratedShard(job_id=shard.job_id, index=shard.index, generations=gens))
                for i, gen in zip(members, scored.generations, strict=True):
                    if gen.skipped:
                        skipped[i] = gen.skipped
                    # the dataset's answer (--include_ground_truth) joins once, with the first wave
                    new = [c for c in gen.candidates if not c.reference or number == 0]
                    if not any(not c.reference for c in new):
                        dry.add(i)
                    cands[i] += new
            still = []
            for i in active:
                reason = (SKIPPED if i in skipped else _stop(spec, cands[i], first_wave=number == 0)
                          or (DRY if i in dry else None))
                if reason:
                    stopped[prompts[i].row] = reason
                else:
                    still.append(i)
            active, number = still, number + 1
    finally:
        engine.on_progress = None
    generations = [Generation(prompt=p, skipped=skipped[i]) if i in skipped else
                   Generation(prompt=p, candidates=cands[i]) for i, p in enumerate(prompts)]
    return (GeneratedShard(job_id=shard.job_id, index=shard.index, generations=generations,
                           seconds=time.perf_counter() - started), stopped)
