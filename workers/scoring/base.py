"""What every reward model is: a batch of requests (prompt + one candidate each) in, one score each out.

The calling convention is swift's (``swift.rewards.ORM`` / ``PRM``), so plugin files carry over: a
constructor with no required arguments (``__init__(self, args=None, **kwargs)`` is fine), and
``__call__(infer_requests, ground_truths, **kwargs)`` returning, per request, a float or a list of per-step
floats (the minimum counts): any finite value (logits, lengths, negative penalties), taken as it is. Plugin
classes need not subclass these: ``workers.scoring.plugins`` adapts other conventions (``infer``, GRPO-style
``completions``, chat-completion results).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

from schemas.errors import PermanentError


@dataclass
class InferRequest:
    """swift's request shape: plugins read ``request.messages`` (or ``request['messages']``).

    ``messages`` is the prompt's turns followed by the candidate as the last assistant turn; ``columns`` are
    the dataset row's other columns, readable as ``request['solution']`` as in swift, where a request is the row.
    ``tokens``: the candidate's length in tokens when its engine counted them (None for cached candidates).
    """

    messages: list[dict[str, str]]
    columns: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None

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

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        """Refuse bad options before any work (``workers.scoring.preflight``, on the producer): by default the
        model is built from the spec and closed again, so a built-in's ``from_spec`` must load nothing heavy (no
        weights, no processes: those start on first use); one that must load weights overrides this."""
        cls.from_spec(spec).close()  # type: ignore[attr-defined]


class ORM(RewardModel):
    """Outcome reward: > 0 means the candidate passes."""


class PRM(RewardModel):
    """Process reward: higher is better; a list of per-step scores counts by its minimum."""


def _number(v: Any) -> float:
    """One score as a float, as swift's ``float(reward)`` reads it: ints, bools, numpy scalars and numeric
    strings included; a TypeError or ValueError for anything else, an OverflowError past the float range."""
    if isinstance(v, bytes) or (hasattr(v, "shape") and getattr(v, "shape", ()) != ()):
        raise TypeError  # an array is a list of steps only when it came as a list
    return float(v.strip() if isinstance(v, str) else v)


def validate_scores(name: str, scores: Any, expected: int, *, kind: str = "PRM",
                    labels: Sequence[str] | None = None) -> list[Score]:
    """The one check of a reward model's output: ``expected`` scores, each a finite number or a non-empty list
    of finite numbers, taken as they are (any range). Returns them as plain floats; anything else is a
    PermanentError naming the model, the request (``labels[i]``: its prompt, when the caller knows it) and the
    value."""
    where = f"{kind} {name!r}"
    if not isinstance(scores, (list, tuple)):
        raise PermanentError(f"{where}: returned {type(scores).__name__}, expected a list of {expected} scores")
    if len(scores) != expected:
        raise PermanentError(f"{where}: returned {len(scores)} scores for {expected} requests")
    out: list[Score] = []
    for i, score in enumerate(scores):
        of = f" ({labels[i]})" if labels else ""  # the request's prompt
        many = isinstance(score, (list, tuple))
        if many and not score:
            raise PermanentError(f"{where}: request {i} got an empty list of step scores{of}")
        values = []
        for v in (score if many else [score]):
            try:
                f = _number(v)
            except (TypeError, ValueError):
                raise PermanentError(f"{where}: score of request {i} is not a number: {v!r}{of}") from None
            except OverflowError:
                raise PermanentError(f"{where}: score of request {i} is beyond the float range: {v!r}{of}") from None
            if math.isnan(f):
                raise PermanentError(f"{where}: score of request {i} is NaN{of}")
            if math.isinf(f):
                raise PermanentError(f"{where}: score of request {i} is not finite: {v!r}{of}")
            values.append(f)
        out.append(values if many else values[0])
    return out
