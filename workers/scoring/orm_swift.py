"""swift's other built-in ORMs, under swift's names: cosine, soft_overlong, react_format, toolbench.

Written from what ms-swift 4.6's ``swift/rewards/orm.py`` computes (its GRPO defaults where swift reads them
from training arguments; ``swift sample`` itself builds these with no arguments, so there cosine and
soft_overlong cannot start at all). Options come from ``--orm_kwargs`` under swift's argument names. A length
is the candidate's tokens as its engine counted them; a cached candidate (stage 2, ``--sampler_engine no``)
has no count, so its whitespace-split words are counted instead.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

from schemas.errors import ConfigError
from workers.scoring.base import ORM, InferRequest
from workers.scoring.orm_kinds import MathORM, _options, _require

if TYPE_CHECKING:
    from schemas import JobSpec


def length_of(request: InferRequest) -> int:
    """The candidate's length: its token count, or its words when its engine gave none."""
    return request.tokens if request.tokens is not None else len(request.response.split())


def _number(v: Any) -> bool:
    return math.isfinite(v)


class CosineORM(ORM):
    """swift's CosineReward (arXiv 2502.03373): a cosine of the length between two values, one pair for correct
    answers (the math ORM passes) and one for wrong ones.

    ``r(L) = hi - (hi - lo) * (1 - cos(pi * L / cosine_max_len)) / 2``: a correct answer scores from
    ``cosine_min_len_value_correct`` (1.0, at length 0) down to ``cosine_max_len_value_correct`` (0.5, at
    ``cosine_max_len``, default ``--max_new_tokens``), a wrong one from ``cosine_min_len_value_wrong`` (-0.5)
    up to ``cosine_max_len_value_wrong`` (0.0). So with the defaults a correct answer passes (> 0) and a wrong
    one fails; shorter is better when right, longer when wrong. Lengths past the maximum are not clipped (swift
    does not clip them either). The math ORM's ``timeout`` and ``workers`` options are taken too.
    """

    name: ClassVar[str] = "cosine"
    needs_ground_truth = True
    DEFAULTS: ClassVar[dict[str, float]] = {"cosine_min_len_value_wrong": -0.5, "cosine_max_len_value_wrong": 0.0,
                                            "cosine_min_len_value_correct": 1.0, "cosine_max_len_value_correct": 0.5}

    def __init__(self, accuracy: MathORM, max_len: int, values: dict[str, float]) -> None:
        self.accuracy, self.max_len = accuracy, max_len
        self.values = {**self.DEFAULTS, **values}

    @classmethod
    def from_spec(cls, spec: JobSpec) -> CosineORM:
        math_keys = ("timeout", "workers")
        opts = _options(spec, cls.name, {**cls.DEFAULTS, "cosine_max_len": spec.sampling.max_new_tokens,
                                         **{k: None for k in math_keys}})
        values = {k: _require(k, opts[k], _number, "a finite number") for k in cls.DEFAULTS}
        max_len = _require("cosine_max_len", opts["cosine_max_len"], lambda v: isinstance(v, int) and v >= 1,
                           "a whole number >= 1 (tokens)")
        accuracy = MathORM.from_spec(spec.model_copy(update={
            "orm_model": "math", "orm_kwargs": {k: opts[k] for k in math_keys if opts[k] is not None}}))
        return cls(accuracy, max_len, values)

    @staticmethod
    def cosine(length: float, max_len: float, at_zero: float, at_max: float) -> float:
        return at_zero - (at_zero - at_max) * (1 - math.cos(length * math.pi / max_len)) / 2

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        correct = self.accuracy(infer_requests, ground_truths)
        v = self.values
        out = []
        for request, score in zip(infer_requests, correct, strict=True):
            kind = "correct" if score >= 1.0 else "wrong"
            out.append(self.cosine(length_of(request), self.max_len, v[f"cosine_min_len_value_{kind}"],
                                   v[f"cosine_max_len_value_{kind}"]))
        return out

    def close(self) -> None:
        self.accuracy.close()


class SoftOverlongORM(ORM):
    """swift's SoftOverlong (DAPO's overlong penalty), shifted up by 1 as ``repetition`` is: ``1 + penalty``.

    swift's penalty is 0 up to ``soft_max_length - soft_cache_length`` tokens, then falls linearly to -1 at
    ``soft_max_length`` and keeps falling beyond. A pass here is a score > 0, and swift's penalty is never > 0,
    so the score is ``1 + penalty``: 1.0 within the expected length, 0.0 at ``soft_max_length``, negative past
    it. ``soft_cache_length`` is required (swift requires it too); ``soft_max_length`` defaults to
    ``--max_new_tokens`` (swift: max_completion_length).
    """

    name: ClassVar[str] = "soft_overlong"
    needs_ground_truth = False

    def __init__(self, soft_max_length: int, soft_cache_length: int) -> None:
        if not soft_cache_length < soft_max_length:
            raise ConfigError(f"--orm_kwargs soft_cache_length={soft_cache_length}: must be less than "
                              f"soft_max_length ({soft_max_length})")
        self.soft_max_length, self.soft_cache_length = soft_max_length, soft_cache_length

    @classmethod
    def from_spec(cls, spec: JobSpec) -> SoftOverlongORM:
        opts = _options(spec, cls.name, {"soft_max_length": spec.sampling.max_new_tokens, "soft_cache_length": None})
        if opts["soft_cache_length"] is None:
            raise ConfigError("--orm_model soft_overlong needs --orm_kwargs '{\"soft_cache_length\": N}': the tokens "
                              "before soft_max_length over which the penalty grows (swift requires it too)")
        whole = (lambda v: isinstance(v, int) and v >= 1)
        return cls(_require("soft_max_length", opts["soft_max_length"], whole, "a whole number >= 1 (tokens)"),
                   _require("soft_cache_length", opts["soft_cache_length"], whole, "a whole number >= 1 (tokens)"))

    def penalty(self, length: int) -> float:
        """swift's value: min(-(length - expected) / cache, 0), expected = soft_max_length - soft_cache_length."""
        exceed = length - (self.soft_max_length - self.soft_cache_length)
        return min(-exceed / self.soft_cache_length, 0.0)

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [1.0 + self.penalty(length_of(request)) for request in infer_requests]


class ReactFormatORM(ORM):
    """swift's ReActFormat: 1.0 when the candidate opens with ``<think>...</think>`` and then gives an
    ``Action:`` and an ``Action Input:`` (matched from the start, DOTALL and MULTILINE as swift does), else 0.0."""

    name: ClassVar[str] = "react_format"
    needs_ground_truth = False
    PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"^<think>.*?</think>\s*Action:.*?Action Input:.*?$",
                                                    re.DOTALL | re.MULTILINE)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> ReactFormatORM:
        _options(spec, cls.name, {})
        return cls()

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [float(self.PATTERN.match(request.response) is not None) for request in infer_requests]


def parse_action(text: str) -> tuple[str, str]:
    """(action, action input) of a ReAct step: what follows the last ``Action:`` (up to an ``Action Input:``)
    and the last ``Action Input:``; ``none`` and ``{}`` when absent."""
    head, found, tail = text.rpartition("Action Input:")
    action_input = tail.strip() if found else "{}"
    before, found, after = text.rpartition("Action:")
    action = after.split("Action Input:", 1)[0].strip() if found else "none"
    return action, action_input


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F as swift reads it: the ``rouge`` package's ``rouge-l`` ``f``; 0.0 where it cannot score (an
    empty text)."""
    from rouge import Rouge

    try:
        return float(Rouge().get_scores(hyps=[candidate], refs=[reference], avg=True)["rouge-l"]["f"])
    except (ValueError, LookupError, RecursionError):
        return 0.0


class ToolBenchORM(ORM):
    """swift's ReactORM (``toolbench``): 1.0 when the candidate calls the reference's tool with its input.

    Both texts are read as ReAct steps (``parse_action``; a candidate ending in ``Observation:`` is cut there,
    ``<|endoftext|>`` / ``<|im_end|>`` dropped). The action names must be equal; then inputs that are both JSON
    objects must hold the same keys and values (swift's key F1 of 1.0), inputs that are both not JSON must
    overlap with ROUGE-L F >= 0.2 (the ``rouge`` package, as swift uses; swift scores a rouge-l 'f' in [0.1, 0.2) as 0.1, which is not a pass
    either); one JSON and one not, or JSON that is not an object, scores 0.0.
    """

    name: ClassVar[str] = "toolbench"
    needs_ground_truth = True
    ROUGE_PASS: ClassVar[float] = 0.2

    @classmethod
    def from_spec(cls, spec: JobSpec) -> ToolBenchORM:
        _options(spec, cls.name, {})
        if importlib.util.find_spec("rouge") is None:
            raise ConfigError("--orm_model toolbench needs the rouge package (ROUGE-L, as swift uses): "
                              "pip install 'rouge>=1.0.1' (or the project's scoring extra)")
        return cls()

    @classmethod
    def matches(cls, prediction: str, reference: str) -> bool:
        if prediction.endswith("Observation:"):
            prediction = prediction[:prediction.index("Observation:")].strip()
        prediction = prediction.replace("<|endoftext|>", "").replace("<|im_end|>", "").strip()
        ref_action, ref_input = parse_action(reference)
        action, given = parse_action(prediction)
        ref_is_json, ref_value = _json(ref_input)
        is_json, value = _json(given)
        if action != ref_action or ref_is_json != is_json:
            return False
        if not is_json:
            return rouge_l(given, ref_input) >= cls.ROUGE_PASS
        return isinstance(value, dict) and isinstance(ref_value, dict) and value == ref_value

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        return [float(truth is not None and self.matches(request.response, truth))
                for request, truth in zip(infer_requests, ground_truths, strict=True)]
