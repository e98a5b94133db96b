"""The aggregate stage: a shard's (scored) candidates -> the rows written out.

Without a reward model every candidate is written (P x N rows), as in swift. With one, swift's rule:
a candidate passes when its ORM score is > 0 and its PRM score is above ``--prm_threshold``; the
candidates are ranked by min-max-normalised PRM + 10 x normalised ORM; the best ``--n_best_to_keep``
passing ones are written, each with the lowest ranked as ``rejected_response``. Unlike swift:
identical candidates count once, the rejected response is an ORM-failing candidate whenever one
exists (among equally scored ones, one whose final answer the math ORM read: a wrong answer over none),
and every prompt that gets no row is reported with its reason instead of vanishing. With several
ORMs a candidate passes when it passes each one; their weighted sum is the ORM score that ranks. The TRL
formats of ``--output_format`` start from the same ranking (``workers.exports``). The shard's summary
carries its prompts' statistics (``workers.stats``), so fleet and embedded runs give the same stats file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from schemas import Candidate, GeneratedShard, Generation, JobSpec, Message, OutputRow, ShardSummary
from schemas.records import fingerprint
from workers.exports import FORMATS, Line
from workers.stats import histograms, prompt_stats

ORM_WEIGHT = 10.0


def _normalised(values: list[float | None]) -> list[float]:
    """swift's normalize_rewards: min-max within the prompt; a constant is kept (capped at 1); absent -> 1.

    Any finite scores: two more than the float range apart are halved first (same order, no overflow)."""
    if any(v is None for v in values):
        return [1.0] * len(values)
    low, high = min(values), max(values)
    if low == high:
        return [min(1.0, low)] * len(values)
    span = high - low
    if math.isinf(span):
        values, low, span = [v / 2 for v in values], low / 2, high / 2 - low / 2
    return [(v - low) / (span + 1e-5) for v in values]


def _row(gen: Generation, cand: Candidate, rejected: str | None, spec: JobSpec) -> OutputRow:
    return OutputRow(messages=[*gen.prompt.messages, Message(role="assistant", content=cand.text)],
                     id=gen.prompt.id, rejected_response=rejected, extra=gen.prompt.extra,
                     scores=cand.scores if spec.write_scores else None)


def _distinct(cands: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    return [c for c in cands if not (c.text in seen or seen.add(c.text))]


@dataclass(frozen=True)
class Selection:
    """A prompt's distinct candidates ranked: which pass, the order, the rejected one and the chosen n best."""

    cands: list[Candidate]
    passed: list[bool]
    order: list[int]
    rejected: int
    chosen: list[int]


def select(spec: JobSpec, gen: Generation) -> Selection | str:
    """The ranking of a scored prompt, or why it is left out before any ranking (unscorable, too easy)."""
    cands = _distinct(gen.candidates)
    if not cands or any(c.scores is None for c in cands):
        return "unscorable: no reference answer for the reward model"
    orm = [c.scores.orm for c in cands]
    prm = [c.scores.prm for c in cands]
    use_orm, use_prm = spec.orm_model is not None, spec.prm_model is not None
    passed = [(not use_orm or c.scores.orm_pass) and (not use_prm or p > spec.prm_threshold)
              for c, p in zip(cands, prm)]
    if use_orm and spec.easy_query_threshold is not None:  # over every sample, duplicates included
        sampled = [c.scores.orm_pass for c in gen.candidates if not c.reference]
        if sampled and sum(sampled) / len(sampled) >= spec.easy_query_threshold:
            return f"too easy: {sum(sampled)}/{len(sampled)} candidates pass the ORM"
    rank = [p + ORM_WEIGHT * o for p, o in zip(_normalised(prm), _normalised(orm))]
    # swift's blend first; where rounding makes it tie (scores far apart in magnitude), the raw ORM, then PRM
    # score decides, so the order is exactly the scores' order; stable: true ties keep sampling order
    order = sorted(range(len(cands)), key=lambda i: (-rank[i], -(orm[i] or 0.0), -(prm[i] or 0.0)))
    failing = [i for i in order if use_orm and not cands[i].scores.orm_pass]
    pool = failing or order  # ties at the bottom: one that states a wrong answer over one that states none
    tied = [i for i in pool if (orm[i], prm[i]) == (orm[pool[-1]], prm[pool[-1]])]
    rejected = ([i for i in tied if cands[i].scores.answer_read] or tied)[-1]
    chosen = [i for i in order if passed[i] and i != rejected][: spec.n_best]
    return Selection(cands, passed, order, rejected, chosen)


def choose(spec: JobSpec, gen: Generation) -> tuple[list[OutputRow | Line], str | None]:
    """The prompt's output rows, and why it got none (None when it got rows or was skipped upstream)."""
    if gen.skipped:
        return [], None
    if not spec.scored:
        return [_row(gen, c, None, spec) for c in gen.candidates], None
    sel = select(spec, gen)
    if isinstance(sel, str):
        return [], sel
    if spec.output_format != "swift":
        return FORMATS[spec.output_format](spec, gen, sel)
    if not any(sel.passed):
        return [], "no candidate passed the reward model(s)"
    if not sel.chosen:
        return [], "no preference pair: a single distinct candidate"
    rejected = sel.cands[sel.rejected].text
    return [_row(gen, sel.cands[i], rejected, spec) for i in sel.chosen], None


def shard_rows(spec: JobSpec, shard: GeneratedShard) -> tuple[list[OutputRow | Line], dict[int, str]]:
    """Every row of the shard, and the prompts (by row) that got none with the reason."""
    rows: list[OutputRow | Line] = []
    dropped: dict[int, str] = {}
    for gen in shard.generations:
        chosen, reason = choose(spec, gen)
        rows += chosen
        if reason:
            dropped[gen.prompt.row] = reason
    return rows, dropped


def summarise(spec: JobSpec, shard: GeneratedShard, rows: int, dropped: dict[int, str],
              stopped: dict[int, str] | None = None) -> ShardSummary:
    """The shard's done-marker: counts, reasons, and (with an ORM) its prompts' stats lines.

    ``stopped``: prompt row -> why adaptive sampling stopped it early.
    """
    stopped = stopped or {}
    gens = shard.generations
    n = spec.sampling.num_return_sequences
    lines = [prompt_stats(spec, g, stopped.get(g.prompt.row)) for g in gens] if spec.orm_model else []
    # the manifest names a left-out prompt by file, line and id, so it can be found (and joined on id)
    named = {g.prompt.row: f"{g.prompt.source} (id {g.prompt.id})" for g in gens}
    return ShardSummary(job_id=shard.job_id, index=shard.index, prompts=len(gens), rows=rows,
                        candidates=sum(len(g.candidates) for g in gens),
                        tokens=sum(c.tokens for g in gens for c in g.candidates),
                        skipped={g.prompt.row: f"{named[g.prompt.row]}: {g.skipped}" for g in gens if g.skipped},
                        dropped={row: f"{named[row]}: {why}" for row, why in dropped.items()},
                        short={g.prompt.row: len(g.candidates) for g in gens  # adaptive stops are no shortfall
                               if not g.skipped and len(g.candidates) < n and g.prompt.row not in stopped},
                        seconds=round(shard.seconds, 3), fingerprint=fingerprint(g.prompt for g in gens),
                        stats=lines,
                        histograms=histograms(gens))
