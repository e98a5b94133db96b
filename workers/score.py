"""The score stage: a shard's candidates -> the same candidates with their ORM / PRM scores.

Its own stage so that it can run on other machines than generation. Each distinct candidate text of a
prompt is scored once; the whole shard goes to each reward model in one call, so models batch freely.
A prompt whose ORM needs a reference answer it does not have is left unscored (the selection reports
it as unscorable); the rest of the shard goes on.
"""
from __future__ import annotations

import logging
import math
import time

from schemas import Candidate, GeneratedShard, Generation, JobSpec, Scores
from schemas.errors import ConfigError
from workers.models import hub_models
from workers.registry import Registry
from workers.scoring import InferRequest, RewardModel
from workers.scoring.base import validate_scores
from workers.scoring.orm_kinds import MathORM
from workers.scoring.plugins import load_plugins

log = logging.getLogger(__name__)


def load_prm(spec: JobSpec, prms: Registry[RewardModel]) -> RewardModel:
    """A registered PRM name (``prms``: the job's registry), else a model folder / hub id whose config says what
    kind it is."""
    if spec.prm_model in prms:
        return prms.create(spec.prm_model, spec)
    from workers.scoring.prm_kinds import load_prm as load_from_path

    return load_from_path(hub_models(spec, "prm_model"))


class Scorer:
    """The job's reward models, loaded once per process (plugins first, into the job's own registries)."""

    def __init__(self, spec: JobSpec) -> None:
        registries = load_plugins(spec.external_plugins)
        self.spec = spec
        # several ORMs (--orm_model math,format): each built from its own view of the spec, see one_orm
        self.orms = {name: registries.orms.create(name, one_orm(spec, name)) for name in spec.orm_names}
        self.prm = load_prm(spec, registries.prms) if spec.prm_model else None

    def close(self) -> None:
        for model in (*self.orms.values(), self.prm):
            if model is not None:
                model.close()

    def _candidates(self, gen: Generation) -> list[Candidate]:
        """The prompt's candidates, plus the dataset's answer when --include_ground_truth asks for it."""
        cands = list(gen.candidates)
        if self.spec.include_ground_truth and gen.prompt.ground_truth is not None and cands:
            cands.append(Candidate(text=gen.prompt.ground_truth, tokens=0, finish_reason="stop", reference=True))
        return cands

    def score(self, shard: GeneratedShard) -> GeneratedShard:
        """Score every distinct candidate of every scorable prompt in one call per reward model."""
        started = time.perf_counter()
        needs_truth = any(m is not None and m.needs_ground_truth for m in (*self.orms.values(), self.prm))
        todo: dict[tuple[int, str], int] = {}  # (generation, text) -> request index
        requests: list[InferRequest] = []
        truths: list[str | None] = []
        labels: list[str] = []  # each request's prompt, for a bad score's message
        scorable: set[int] = set()
        for g, gen in enumerate(shard.generations):
            if gen.skipped or (needs_truth and gen.prompt.ground_truth is None):
                continue
            scorable.add(g)
            turns = [m.model_dump() for m in gen.prompt.messages]
            for cand in self._candidates(gen):
                if (g, cand.text) not in todo:
                    todo[(g, cand.text)] = len(requests)
                    requests.append(InferRequest(messages=[*turns, {"role": "assistant", "content": cand.text}],
                                                 columns=gen.prompt.extra, tokens=cand.tokens or None))
                    truths.append(gen.prompt.ground_truth)
                    labels.append(f"prompt {gen.prompt.id!r}, {gen.prompt.source}")
        parts: dict[str, list] = {}
        read: list[bool] | None = None  # the math ORM's "a final answer was found and parsed", per request
        for name, model in self.orms.items():
            if isinstance(model, MathORM) and requests:
                parts[name], read = model.grade(requests, truths)
            else:
                parts[name] = self._run(model, name, requests, truths, labels)
        orm = _weighted(self.spec, parts, len(requests))
        verdicts = next((v for m in self.orms.values() if len(v := getattr(m, "last_verdicts", [])) == len(requests)),
                        None)  # an ORM that runs tests says why each candidate passed or failed
        prm = self._run(self.prm, self.spec.prm_model, requests, truths, labels)
        generations = []
        for g, gen in enumerate(shard.generations):
            if g not in scorable:
                generations.append(gen)
                continue
            scored = []
            for cand in self._candidates(gen):
                k = todo[(g, cand.text)]
                steps = prm[k] if prm and isinstance(prm[k], list) else None
                scores = Scores(orm=orm[k] if orm else None,
                                orms={n: v[k] for n, v in parts.items()} if len(parts) > 1 else None,
                                prm=(min(steps) if steps else prm[k]) if prm else None, prm_steps=steps,
                                answer_read=read[k] if read else None, verdict=verdicts[k] if verdicts else None)
                scored.append(cand.model_copy(update={"scores": scores}))
            generations.append(gen.model_copy(update={"candidates": scored}))
        log.info("job %s shard %d: scored %d distinct candidates", shard.job_id, shard.index, len(requests))
        return shard.model_copy(update={"generations": generations,
                                        "seconds": shard.seconds + time.perf_counter() - started})

    @staticmethod
    def _run(model: RewardModel | None, name: str | None, requests: list[InferRequest],
             truths: list[str | None], labels: list[str]) -> list[float | list[float]]:
        if model is None or not requests:
            return []
        return validate_scores(str(name), model(requests, truths), len(requests), kind="reward model", labels=labels)


def one_orm(spec: JobSpec, name: str) -> JobSpec:
    """The spec as one of several ORMs sees it: its own name, and its own ``--orm_kwargs`` entry
    (``{"math": {"timeout": 5}, "format": {"pattern": "..."}}``) when there are several."""
    if len(spec.orm_names) == 1:
        return spec
    for key, value in spec.orm_kwargs.items():
        if key not in spec.orm_names or not isinstance(value, dict):
            raise ConfigError(f"--orm_kwargs {key!r}: with several ORMs, give each one's options under its name, "
                              f'e.g. {{"{spec.orm_names[0]}": {{...}}}} (ORMs: {", ".join(spec.orm_names)})')
    return spec.model_copy(update={"orm_model": name, "orm_kwargs": spec.orm_kwargs.get(name, {})})


def _weighted(spec: JobSpec, parts: dict[str, list], count: int) -> list[float]:
    """The ORM score that ranks: the one ORM's, or the weighted mean of several (--orm_weights, default equal).

    Summed as shares of the total weight (``fsum``), so the mean of finite scores stays finite at any magnitude."""
    if len(parts) <= 1:
        return next(iter(parts.values()), [])
    weights = spec.orm_weights or [1.0] * len(parts)
    relative = [w / max(weights) for w in weights]
    shares = [w / math.fsum(relative) for w in relative]
    return [math.fsum(w * scores[k] for w, scores in zip(shares, parts.values())) for k in range(count)]
