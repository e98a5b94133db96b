"""How hard each prompt is for the policy: unbiased pass@k, majority vote, distinct answers.

Computed per prompt in the aggregate stage (so a fleet's aggregator and the embedded run give the same
lines), stored with the shard's done-marker, concatenated into ``<output name>.stats.jsonl`` by the
finaliser; the manifest gets the dataset means with bootstrap confidence intervals and fixed-bin
histograms of lengths and rewards (for ``producer report``): ``TOKEN_BINS`` and ``SCORE_BINS``, where any finite
score has a bin (tenths of [-1, 1], a bin per decade beyond, under- and overflow bins past +-1e308).

Answers are compared the way the ORM compares them: every passing candidate matches the reference, so
all passing candidates are one answer; the others are grouped by their final answer (``math``: the
answers it reads, ``answers.final_answers``, normalised, numbers by value, so 0.5 = 1/2 = \\frac{1}{2};
``accuracy``: normalised, case-folded). With ORMs that read no final answer (format, length, plugins), a
candidate with no marked answer counts its whole stripped text as its answer.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

from schemas import Candidate, Generation, JobSpec, PromptStats, ShardSummary
from workers.score import one_orm
from workers.scoring.answers import extract_answer, final_answers, normalize

#: ORMs that grade a final answer against the reference; the rest do not read one.
ANSWER_ORMS = ("math", "accuracy", "cosine")
BOOTSTRAP_RESAMPLES = 1000
_FRAC = re.compile(r"^\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_PASS = "\0passes"  # the group of every passing candidate


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a stable product."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _number(answer: str) -> str | None:
    """A plain number's value as a canonical fraction ("0.5", "1/2", "\\frac{1}{2}" -> "1/2"), else None."""
    frac = _FRAC.match(answer)
    try:
        value = Fraction(int(frac[1]), int(frac[2])) if frac else Fraction(answer.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return str(value)


def answer_key(spec: JobSpec) -> Callable[[str], str | None]:
    """How the job's ORM(s) tell answers apart: a candidate text -> its answer's key (None: no answer)."""
    names = spec.orm_names
    if "math" in names or "cosine" in names:  # cosine grades with the math ORM
        strict = "math" in names and one_orm(spec, "math").orm_kwargs.get("strict_format") is True

        def key(text: str) -> str | None:  # every answer the math ORM reads in the text (several: one key)
            answers = final_answers(text, strict=strict)
            return None if answers is None else "\n".join(sorted({_number(normalize(a)) or normalize(a)
                                                                    for a in answers}))
    elif "accuracy" in names:
        def key(text: str) -> str | None:
            answer = extract_answer(text)
            return None if answer is None else normalize(answer).casefold()
    else:
        def key(text: str) -> str | None:
            answer = extract_answer(text)
            return normalize(answer) if answer is not None else (text.strip() or None)
    return key


def _majority(samples: list[Candidate], key: Callable[[str], str | None], collapse: bool) -> tuple[float, int]:
    """(maj@n, distinct answers): the most frequent answer passes? (a tie: the share of tied ones that pass)."""
    groups: Counter[str] = Counter()
    passing: set[str] = set()
    for cand in samples:
        ok = cand.scores is not None and cand.scores.orm_pass
        answer = _PASS if ok and collapse else key(cand.text)
        if answer is None:
            continue
        groups[answer] += 1
        if ok:
            passing.add(answer)
    if not groups:
        return 0.0, 0
    top = max(groups.values())
    tied = [a for a, count in groups.items() if count == top]
    return sum(a in passing for a in tied) / len(tied), len(groups)


def prompt_stats(spec: JobSpec, gen: Generation, stopped: str | None = None) -> PromptStats:
    """One prompt's line of the stats file; ``correct`` is None when its candidates were not scored."""
    samples = [c for c in gen.candidates if not c.reference]
    n = len(samples)
    if not samples or any(c.scores is None for c in samples):
        return PromptStats(id=gen.prompt.id, samples=n, correct=None, stopped=stopped)
    c = sum(cand.scores.orm_pass for cand in samples)
    collapse = any(name in ANSWER_ORMS for name in spec.orm_names)
    maj, distinct = _majority(samples, answer_key(spec), collapse)
    failures = Counter(cand.scores.verdict for cand in samples if cand.scores.verdict and not cand.scores.orm_pass)
    return PromptStats(id=gen.prompt.id, samples=n, correct=c, maj_at_n=maj, distinct_answers=distinct,
                       pass_at_k={k: round(pass_at_k(n, c, k), 6) for k in spec.stats_ks if k <= n}, stopped=stopped,
                       failures=dict(failures.most_common()))


class BinScheme:
    """A fixed, documented set of histogram bins: every finite value falls in exactly one, shards' counts add up
    by label, and labels are ordered by their position in the scheme (a label is never parsed back)."""

    def __init__(self, labels: list[str], which: Callable[[float], int]) -> None:
        self.labels, self._which = labels, which
        self._order = {label: i for i, label in enumerate(labels)}

    def label(self, value: float) -> str:
        return self.labels[self._which(value)]

    def counts(self, values: Iterable[float]) -> dict[str, int]:
        return dict(Counter(self.label(v) for v in values))

    def ordered(self, counts: dict[str, int]) -> dict[str, int]:
        """In the scheme's order; a label it does not know (a done-marker of an older version) goes last."""
        return dict(sorted(counts.items(), key=lambda kv: (self._order.get(kv[0], len(self._order)), kv[0])))


TOKEN_POWERS = 64


def _token_index(tokens: float) -> int:
    return min(TOKEN_POWERS - 1, max(0, math.ceil(math.log2(max(tokens, 1)))))


#: Lengths: up to a power of two, labelled by the bin's upper edge ("1", "2", "4", ...).
TOKEN_BINS = BinScheme([str(1 << k) for k in range(TOKEN_POWERS)], _token_index)

DECADES = 308  # 1e308 is the largest power of ten below the float maximum (~1.8e308)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _score_labels() -> list[str]:
    """From the most negative to the most positive: an underflow bin below -1e308, a bin per decade
    [-10^(k+1), -10^k) down to [-10, -1), tenths of [-1, 0), tenths of [0, 1] (1.0 in the last), a bin per
    decade (10^k, 10^(k+1)] from (1, 10] up, and an overflow bin above 1e308."""
    negative = [f"[{_fmt(-10.0 ** (k + 1))}, {_fmt(-10.0 ** k)})" for k in reversed(range(DECADES))]
    minus_tenths = [f"[-{(t + 1) / 10:.1f}, {'-' if t else ''}{t / 10:.1f})" for t in reversed(range(10))]
    tenths = [f"[{t / 10:.1f}, {(t + 1) / 10:.1f}{']' if t == 9 else ')'}" for t in range(10)]
    positive = [f"({_fmt(10.0 ** k)}, {_fmt(10.0 ** (k + 1))}]" for k in range(DECADES)]
    return ["< -1e+308", *negative, *minus_tenths, *tenths, *positive, "> 1e+308"]


def _decade(magnitude: float) -> int:
    """k with 10^k < magnitude <= 10^(k+1), for 1 < magnitude <= 1e308 (log10 corrected at exact powers)."""
    k = min(DECADES - 1, max(0, math.ceil(math.log10(magnitude)) - 1))
    while k > 0 and 10.0 ** k >= magnitude:
        k -= 1
    while k + 1 < DECADES and 10.0 ** (k + 1) < magnitude:
        k += 1
    return k


def _tenth(magnitude: float, upper_closed: bool) -> int:
    """t in 0..9 with magnitude in [t/10, (t+1)/10) (or (t/10, (t+1)/10] when ``upper_closed``), edges exact."""
    t = min(9, max(0, math.floor(magnitude * 10)))
    if upper_closed:
        while t > 0 and magnitude <= t / 10:
            t -= 1
        while t < 9 and magnitude > (t + 1) / 10:
            t += 1
    else:
        while t > 0 and magnitude < t / 10:
            t -= 1
        while t < 9 and magnitude >= (t + 1) / 10:
            t += 1
    return t


_NEGATIVE, _MINUS_TENTHS = 1, 1 + DECADES
_TENTHS, _POSITIVE = _MINUS_TENTHS + 10, _MINUS_TENTHS + 20


def _score_index(score: float) -> int:
    if score < -1e308:
        return 0
    if score < -1:
        return _NEGATIVE + DECADES - 1 - _decade(-score)
    if score < 0:
        return _MINUS_TENTHS + 9 - _tenth(-score, upper_closed=True)
    if score <= 1:
        return _TENTHS + _tenth(score, upper_closed=False)
    if score > 1e308:
        return _POSITIVE + DECADES
    return _POSITIVE + _decade(score)


#: Raw ORM / PRM scores: any finite value has its bin (``_score_labels``), [0, 1] in tenths.
SCORE_BINS = BinScheme(_score_labels(), _score_index)
HISTOGRAMS = {"tokens": TOKEN_BINS, "orm": SCORE_BINS, "prm": SCORE_BINS}


def histograms(gens: Iterable[Generation]) -> dict[str, dict[str, int]]:
    """Candidate lengths in tokens and raw ORM / PRM scores, counted into fixed bins (mergeable across shards)."""
    samples = [c for g in gens for c in g.candidates if not c.reference]
    out = {"tokens": TOKEN_BINS.counts(c.tokens for c in samples)}
    for name in ("orm", "prm"):
        values = [getattr(c.scores, name) for c in samples if c.scores is not None]
        if values and all(v is not None for v in values):
            out[name] = SCORE_BINS.counts(values)
    return {k: v for k, v in out.items() if v}


def merge_histograms(summaries: list[ShardSummary]) -> dict[str, dict[str, int]]:
    total: dict[str, Counter[str]] = {}
    for s in summaries:
        for name, counts in s.histograms.items():
            total.setdefault(name, Counter()).update(counts)
    return {name: HISTOGRAMS.get(name, SCORE_BINS).ordered(dict(c)) for name, c in total.items()}


def _interval(values: list[float], rng: Any) -> list[float]:
    """95% percentile bootstrap interval of the mean, resampling prompts."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    means = []
    chunk = max(1, 2_000_000 // len(data))  # bounded memory for big datasets
    for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
        draws = min(chunk, BOOTSTRAP_RESAMPLES - start)
        means.append(data[rng.integers(0, len(data), size=(draws, len(data)))].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return [round(float(low), 6), round(float(high), 6)]


def dataset_stats(spec: JobSpec, lines: list[PromptStats]) -> dict[str, Any]:
    """Means over the scored prompts, each with a seeded 95% bootstrap interval, for the manifest."""
    import numpy as np

    scored = [s for s in lines if s.correct is not None and s.samples]
    metrics: dict[str, list[float]] = {"pass_rate": [s.correct / s.samples for s in scored],
                                       "maj_at_n": [s.maj_at_n for s in scored],
                                       "distinct_answers": [float(s.distinct_answers) for s in scored]}
    for k in spec.stats_ks:
        metrics[f"pass@{k}"] = [s.pass_at_k[k] for s in scored if k in s.pass_at_k]
    rng = np.random.default_rng(spec.sampling.seed)
    out: dict[str, Any] = {"prompts": len(lines), "scored_prompts": len(scored), "bootstrap_resamples":
                           BOOTSTRAP_RESAMPLES, "mean": {}, "ci95": {}}
    for name, values in metrics.items():
        if values:
            out["mean"][name] = round(sum(values) / len(values), 6)
            out["ci95"][name] = _interval(values, rng)
    return out
