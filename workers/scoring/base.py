"""What every reward model is: a batch of requests (prompt + one candidate each) in, one score each out.

The calling convention is swift's (``swift.rewards.ORM`` / ``PRM``), so plugin files carry over: a
constructor with no required arguments (``__init__(self, args=None, **kwargs)`` is fine), and
``__call__(infer_requests, ground_truths, **kwargs)`` returning, per request, a float or a list of per-step
floats (the minimum counts). Plugin classes need not subclass these: ``workers.scoring.plugins`` adapts
other conventions (``infer``, GRPO-style ``completions``, chat-completion results).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import PermanentError


@dataclass
class InferRequest:
    """swift's request shape: plugins read ``request.messages`` (or ``request['messages']``).

    ``messages`` is the prompt's turns followed by the candidate as the last assistant turn; ``columns`` are
    the dataset row's other columns, readable as ``request['solution']`` as in swift, where a request is the row.
    """

    messages: list[dict[str, str]]
    columns: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.messages if key == "messages" else self.columns[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.messages if key == "messages" else self.columns.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key == "messages" or key in self.columns

    @property
    def response(self) -> str:
        """The candidate: the content of the last (assistant) turn."""
        return self.messages[-1]["content"]


Score = float | list[float]


class RewardModel:
    """Base of ORMs and PRMs; built once per process, called with whole shards' worth of requests."""

    #: False for checks that do not compare with a reference answer (format, length, repetition).
    needs_ground_truth: bool = True

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        """swift's reward classes call ``super().__init__(args)``; ``args`` is kept, as swift keeps it."""
        self.args = args

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Score]:
        """One score per request, in order (a subclass defines this, or swift's ``infer``)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither __call__ nor infer")

    def close(self) -> None:
        """Free processes or weights; the default holds none."""


class ORM(RewardModel):
    """Outcome reward: > 0 means the candidate passes."""


class PRM(RewardModel):
    """Process reward: higher is better; a list of per-step scores counts by its minimum."""


def validate_scores(name: str, scores: Any, expected: int, *, kind: str = "PRM") -> list[Score]:
    """The one check of a reward model's output: ``expected`` scores, each a number or a non-empty list of
    numbers, no NaN. Returns them as plain floats; anything else is a PermanentError naming the model."""
    where = f"{kind} {name!r}"
    if not isinstance(scores, (list, tuple)):
        raise PermanentError(f"{where}: returned {type(scores).__name__}, expected a list of {expected} scores")
    if len(scores) != expected:
        raise PermanentError(f"{where}: returned {len(scores)} scores for {expected} requests")
    out: list[Score] = []
    for i, score in enumerate(scores):
        many = isinstance(score, (list, tuple))
        if many and not score:
            raise PermanentError(f"{where}: request {i} got an empty list of step scores")
        values = []
        for v in (score if many else [score]):
            try:
                if isinstance(v, (bool, str, bytes)):
                    raise TypeError
                f = float(v)
            except (TypeError, ValueError):
                raise PermanentError(f"{where}: score of request {i} is not a number: {v!r}") from None
            if math.isnan(f):
                raise PermanentError(f"{where}: score of request {i} is NaN")
            values.append(f)
        out.append(values if many else values[0])
    return out
