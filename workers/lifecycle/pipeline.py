"""What comes after each step of a shard, written once.

A shard's steps: generate -> score (when the job is scored) -> with adaptive sampling, the next wave's generate
while prompts are still open -> aggregate -> the job is finalised once every shard is settled. The embedded
loop (``workers.embedded``) and the fleet's tasks (``workers.tasks``) both ask ``after`` what to do next, and
``Step.rank`` orders the steps for the Lua ``begin`` (a task of an earlier step than a live lease's is skipped).
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.fleet import QUEUE_AGGREGATE, QUEUE_SCORE
from schemas.job import JobSpec
from schemas.jobstate import Stage

WAVE = (Stage.GENERATE, Stage.SCORE)  # one wave's steps, in order; aggregate comes after the last wave
LAST = 2**31 - 1  # aggregate's rank: after every wave


@dataclass(frozen=True)
class Step:
    stage: Stage
    wave: int = 0  # adaptive sampling's wave (generate and score run once per wave)

    @property
    def rank(self) -> int:
        """Its place in the shard's life: wave 0's generate, score, wave 1's generate, ..., aggregate."""
        return LAST if self.stage is Stage.AGGREGATE else self.wave * len(WAVE) + WAVE.index(self.stage)

    @property
    def name(self) -> str:
        """What its deliveries and attempts are counted under: the stage, ``score.wave2`` after the first wave."""
        return f"{self.stage.value}.wave{self.wave}" if self.wave else self.stage.value

    def queue(self, model_queue: str) -> str:
        """The queue its task goes to (``model_queue``: the job's ``generate.<model>``)."""
        return {Stage.GENERATE: model_queue, Stage.SCORE: QUEUE_SCORE, Stage.AGGREGATE: QUEUE_AGGREGATE}[self.stage]


FIRST = Step(Stage.GENERATE)


def after(spec: JobSpec, step: Step, *, open_prompts: bool = False) -> Step | None:
    """The step after ``step``; None after aggregate: the shard is settled (the job is finalised once all are).
    ``open_prompts``: the wave just scored left prompts that need more samples (adaptive sampling)."""
    if step.stage is Stage.GENERATE:
        return Step(Stage.SCORE, step.wave) if spec.scored else Step(Stage.AGGREGATE)
    if step.stage is Stage.SCORE:
        adaptive = spec.target_correct is not None
        return Step(Stage.GENERATE, step.wave + 1) if adaptive and open_prompts else Step(Stage.AGGREGATE)
    return None
