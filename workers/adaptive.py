"""Adaptive sampling (``--target_correct K``): sample a shard's prompts in waves, stop each one once it has
what the selection needs.

Every wave samples ``--wave_size`` candidates for each prompt still open, all of them in one engine call (the
engine batches the prompts together), and scores them at once. A prompt stops when it has K ORM-passing
candidates and, when the output wants a rejected side (every format but ``trl_stepwise``), a failing one; or
when it reaches ``--num_return_sequences`` samples; or, with ``--drop_settled``, when its first wave is all
correct or all wrong (the groups DAPO's dynamic sampling drops). Why each prompt stopped goes to its stats line
and the manifest. Each wave's seed derives from the shard's seed and the wave's number, so a run is
deterministic with ``--seed``. Off by default: without ``--target_correct`` this module is not used at all.

``add_wave`` and ``settle`` are the steps between waves, so the fleet's tasks can run one wave per generate +
score task and decide as the embedded loop does (``sample_adaptively``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from itertools import groupby

from schemas import Candidate, GeneratedShard, Generation, JobSpec, Prompt, PromptShard
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


def _samples(gen: Generation | None) -> int:
    return 0 if gen is None else sum(not c.reference for c in gen.candidates)


def add_wave(acc: GeneratedShard | None, wave: GeneratedShard, number: int) -> GeneratedShard:
    """The shard's scored candidates so far with a wave's appended, prompts matched by row (the first wave has
    every prompt of the shard, later ones the prompts still open); the dataset's answer joins once."""
    fresh = {g.prompt.row: g for g in wave.generations}
    if acc is None:
        return wave
    generations = []
    for gen in acc.generations:
        add = fresh.get(gen.prompt.row)
        if add is None or gen.skipped:
            generations.append(gen)
        elif add.skipped:
            generations.append(add)
        else:
            new = [c for c in add.candidates if not c.reference or number == 0]
            generations.append(gen.model_copy(update={"candidates": [*gen.candidates, *new]}))
    return acc.model_copy(update={"generations": generations, "seconds": acc.seconds + wave.seconds})


def settle(spec: JobSpec, acc: GeneratedShard, wave: GeneratedShard, number: int,
           stopped: dict[int, str]) -> tuple[list[Prompt], dict[int, str]]:
    """After wave ``number``: the prompts of that wave still open (for the next one), and every stop reason so far
    (prompt row -> why). The fleet's tasks and the embedded loop both decide with this."""
    stopped = dict(stopped)
    by_row = {g.prompt.row: g for g in acc.generations}
    still = []
    for gen in wave.generations:
        row = gen.prompt.row
        grew = any(not c.reference for c in gen.candidates)
        reason = SKIPPED if gen.skipped else (_stop(spec, by_row[row].candidates, first_wave=number == 0)
                                              or (None if grew else DRY))
        if reason:
            stopped[row] = reason
        else:
            still.append(gen.prompt)
    return still, stopped


def sample_adaptively(engine: Engine, scorer: Scorer, spec: JobSpec, shard: PromptShard,
                      on_progress: Callable[[int, int], None] | None = None) -> tuple[GeneratedShard, dict[int, str]]:
    """The shard's scored candidates, sampled wave by wave, and prompt row -> why its sampling stopped."""
    n, size_cap, seed = spec.sampling.num_return_sequences, spec.adaptive_wave, spec.sampling.shard_seed(shard.index)
    acc: GeneratedShard | None = None
    stopped: dict[int, str] = {}
    open_prompts, number = list(shard.prompts), 0
    engine.on_progress = on_progress
    try:
        while open_prompts:
            have = {g.prompt.row: g for g in acc.generations} if acc else {}
            size = {p.row: min(size_cap, n - _samples(have.get(p.row))) for p in open_prompts}
            generations: list[Generation] = []
            started = time.perf_counter()
            # one engine call per wave (every open prompt has as many samples as the others, unless an engine
            # returned fewer): groups by the samples still allowed
            for count, group in groupby(sorted(open_prompts, key=lambda p: -size[p.row]), key=lambda p: size[p.row]):
                params = spec.sampling.model_copy(update={"num_return_sequences": count})
                generations += engine.generate(list(group), params, seed=wave_seed(seed, number))
            wave = scorer.score(GeneratedShard(job_id=shard.job_id, index=shard.index, generations=generations,
                                               seconds=time.perf_counter() - started))
            acc = add_wave(acc, wave, number)
            open_prompts, stopped = settle(spec, acc, wave, number, stopped)
            number += 1
    finally:
        engine.on_progress = None
    order = {p.row: i for i, p in enumerate(shard.prompts)}  # the shard's own order, whatever the waves did
    acc = acc.model_copy(update={"generations": sorted(acc.generations, key=lambda g: order[g.prompt.row])})
    return acc, stopped
