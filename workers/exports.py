"""Training-ready rows: TRL's preference, unpaired (KTO) and stepwise-supervision formats (``--output_format``).

The aggregate stage ranks a prompt's candidates once (``workers.aggregate.Selection``); each format here
turns that ranking into lines. A pair is made only when it teaches something: the chosen candidate passes
and the rejected one fails the ORM(s), or, with a PRM and no ORM, their PRM scores differ by at least
``--pair_margin``. Formats (TRL's dataset-format names; prompts in the conversational form):

- ``trl_preference``: ``{"prompt": [turns], "chosen": [assistant], "rejected": [assistant], "id"}``
- ``trl_kto``: ``{"prompt": [turns], "completion": [assistant], "label": bool, "id"}``: the n best passing
  candidates labelled true, the n lowest ranked failing ones false (a prompt with none passing still
  gives its false rows)
- ``trl_stepwise``: ``{"prompt": str, "completions": [steps], "labels": [bool], "id"}``: every distinct
  candidate the step PRM scored, steps split as the PRM split them, a step labelled true when its score
  is above ``--prm_threshold``
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas import Generation, JobSpec
from workers.scoring.prm_common import last_user_turn

if TYPE_CHECKING:
    from workers.aggregate import Selection

DEFAULT_STEP_SPLIT = "\n\n"  # the built-in step PRM's default --prm_kwargs step_split


@dataclass(frozen=True)
class Line:
    """One exported jsonl line (written like an OutputRow, through ``to_json_line``)."""

    data: dict[str, Any]

    def to_json_line(self) -> str:
        return json.dumps(self.data, ensure_ascii=False) + "\n"


def _prompt(gen: Generation) -> list[dict[str, str]]:
    return [m.model_dump() for m in gen.prompt.messages]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _pair_ok(spec: JobSpec, sel: Selection, chosen: int, rejected: int) -> bool:
    if spec.orm_model:
        return sel.passed[chosen] and not sel.passed[rejected]
    prm = [c.scores.prm for c in sel.cands]
    return prm[chosen] - prm[rejected] >= spec.pair_margin and prm[chosen] > prm[rejected]


def preference(spec: JobSpec, gen: Generation, sel: Selection) -> tuple[list[Line], str | None]:
    pairs = [i for i in sel.chosen if _pair_ok(spec, sel, i, sel.rejected)]
    if not pairs:
        why = "no ORM-failing candidate" if spec.orm_model else f"no PRM margin >= {spec.pair_margin:g}"
        return [], f"no preference pair: {why}" if any(sel.passed) else "no candidate passed the reward model(s)"
    return [Line({"prompt": _prompt(gen), "chosen": _assistant(sel.cands[i].text),
                  "rejected": _assistant(sel.cands[sel.rejected].text), "id": gen.prompt.id}) for i in pairs], None


def kto(spec: JobSpec, gen: Generation, sel: Selection) -> tuple[list[Line], str | None]:
    failing = [i for i in reversed(sel.order) if not sel.passed[i]][: spec.n_best]
    labelled = [(i, True) for i in sel.chosen] + [(i, False) for i in failing]
    if not labelled:
        return [], "no candidate to label: a single distinct candidate"
    return [Line({"prompt": _prompt(gen), "completion": _assistant(sel.cands[i].text), "label": label,
                  "id": gen.prompt.id}) for i, label in labelled], None


def stepwise(spec: JobSpec, gen: Generation, sel: Selection) -> tuple[list[Line], str | None]:
    split = spec.prm_kwargs.get("step_split", DEFAULT_STEP_SPLIT)
    question = last_user_turn([*_prompt(gen), {}])
    lines = []
    for i in sel.order:
        cand = sel.cands[i]
        steps = [s.strip() for s in cand.text.split(split) if s.strip()]
        scores = cand.scores.prm_steps
        if scores and len(steps) == len(scores):  # else the PRM split differently (a plugin): no step texts
            lines.append(Line({"prompt": question, "completions": steps,
                               "labels": [s > spec.prm_threshold for s in scores], "id": gen.prompt.id}))
    return lines, None if lines else "no step scores: the PRM gave no per-step scores matching the steps"


FORMATS: dict[str, Callable[[JobSpec, Generation, "Selection"], tuple[list[Line], str | None]]] = {
    "trl_preference": preference, "trl_kto": kto, "trl_stepwise": stepwise,
}
