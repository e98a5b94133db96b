"""Adaptive sampling (``--target_correct K``): sample a shard's prompts in waves, stop each one once it has
what the selection needs.

Every wave samples ``--wave_size`` candidates for each prompt still open, all of them in one engine call (the
engine batches the prompts together), and scores them at once. A prompt stops when it has K ORM-passing
candidates and, when the output wants a rejected side (every format but ``trl_stepwise``), a failing one; or
when it reaches ``--num_return_sequences`` samples; or, with ``--drop_settled``, when its first wave is all
correct or all wrong (the groups DAPO's dynamic sampling drops). Why each prompt stopped goes to its stats line
and the manifest. Each wave's seed derives from the shard's seed and the wave's number, so a run is
deterministic with ``--seed``. Off by default: without ``--target_correct`` this module is not used at all.

The embedded loop and the fleet take the same steps (``workers.lifecycle.pipeline``): a generate step samples
one wave (``generate_wave``; the fleet stores it under ``wave_stage``), a score step scores it and folds every
wave so far (``replay``): the prompts still open go on to the next wave's generate step (in the fleet, back to
the generator pool), or the shard goes on to aggregate. Folding stored waves, not a running total carried in
messages, keeps a redelivered or resumed task's answer the same.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import groupby

from schemas import Candidate, GeneratedShard, Generation, JobSpec, Prompt, PromptShard
from workers.engines import Engine

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


def wave_stage(stage: str, number: int) -> str:
    """Where the fleet stores a shard's wave of ``stage`` ("generated", "scored"): wave 0 under the stage's own
    name, as a fixed-N job does."""
    return stage if number == 0 else f"{stage}-wave{number}"


def add_wave(acc: GeneratedShard | None, wave: GeneratedShard, number: int) -> GeneratedShard:
    """The shard's scored candidates so far with a wave's appended, prompts matched by row (the first wave has
    every prompt of the shard, in the shard's order, which later waves keep; they have the prompts still
    open); the dataset's answer joins once."""
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


def replay(spec: JobSpec, waves: Iterable[GeneratedShard]) -> tuple[GeneratedShard | None, dict[int, str],
                                                                    list[Prompt]]:
    """Scored waves folded in order, as the loop made them: (candidates so far, prompt row -> why it stopped,
    prompts still open). Reads no further than the wave that left no prompt open."""
    acc: GeneratedShard | None = None
    stopped: dict[int, str] = {}
    still: list[Prompt] = []
    for number, wave in enumerate(waves):
        acc = add_wave(acc, wave, number)
        still, stopped = settle(spec, acc, wave, number, stopped)
        if not still:
            break
    return acc, stopped, still


def generate_wave(engine: Engine, spec: JobSpec, shard: PromptShard, acc: GeneratedShard | None,
                  number: int) -> GeneratedShard:
    """Wave ``number`` for ``shard``'s prompts (those still open), unscored; ``acc``: the waves before it.

    Each prompt gets ``--wave_size`` samples, or what its ``--num_return_sequences`` cap leaves; one engine call
    per group of equal counts (every open prompt has as many as the others, unless an engine returned fewer),
    so the engine batches the prompts together.
    """
    n, seed = spec.sampling.num_return_sequences, wave_seed(spec.sampling.shard_seed(shard.index), number)
    have = {g.prompt.row: g for g in acc.generations} if acc else {}
    size = {p.row: min(spec.adaptive_wave, n - _samples(have.get(p.row))) for p in shard.prompts}
    generations: list[Generation] = []
    started = time.perf_counter()
    for count, group in groupby(sorted(shard.prompts, key=lambda p: -size[p.row]), key=lambda p: size[p.row]):
        params = spec.sampling.model_copy(update={"num_return_sequences": count})
        generations += engine.generate(list(group), params, seed=seed)
    return GeneratedShard(job_id=shard.job_id, index=shard.index, generations=generations,
                          seconds=time.perf_counter() - started)

