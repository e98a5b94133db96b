"""Final answers: where a candidate states its answer, how answers are normalised, and symbolic equivalence.

Extraction and normalisation are plain text work and run in the scoring process. ``equivalent`` imports
sympy (through math-verify) on first use and can take unbounded time on a hostile expression, so it is
meant for a checker process that can be killed (see ``workers.scoring.orm_kinds.MathORM``).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(r"^#\s*Answer\s*:?\s*$", re.MULTILINE | re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_GSM8K_LINE = re.compile(r"^####(.*)$", re.MULTILINE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\(?:left|right)(?![a-zA-Z])|\\[!,;: ]|\$")
_OWN_DELIMITERS = re.compile(r"(?<!\\)\$|\\\(|\\\[")


def _braced(text: str, start: int) -> str | None:
    """The text up to the brace that closes the one opened just before ``start``; None when unbalanced."""
    depth, i = 1, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character (\{ \} \\) never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` / ``\\fbox{}``, nested braces included; None when unbalanced."""
    last = None
    for last in _BOX.finditer(text):
        pass
    return _braced(text, last.end()) if last else None


def extract_answer(text: str) -> str | None:
    """A text's final answer: the last box, else what follows a ``# Answer`` line, else the last <answer> tag,
    else the last GSM8K-style ``#### 42`` line.

    The last box decides even when it is broken (a truncated ``\\boxed{`` is no answer, not a cue to use an
    earlier box): the model's final word is what is graded. None when there is no non-empty answer.
    """
    if _BOX.search(text):
        answer = _last_boxed(text)
    elif lines := list(_ANSWER_LINE.finditer(text)):
        answer = text[lines[-1].end():]
    elif tags := _ANSWER_TAG.findall(text):
        answer = tags[-1]
    elif lines := _GSM8K_LINE.findall(text):
        answer = lines[-1]
    else:
        return None
    return (answer or "").strip() or None


def reference_answer(text: str | None) -> str | None:
    """A dataset's answer: extracted like a candidate's, else the whole text (datasets often store a bare "42")."""
    if text is None:
        return None
    return extract_answer(text) or text.strip() or None


def normalize(answer: str) -> str:
    """Drop what does not change an answer's meaning: spacing, ``$``, ``\\left``/``\\right``, text wrappers,
    ``\\dfrac``, a final dot."""
    answer = _TEXT_WRAPPER.sub(r"\1", answer)
    answer = _SPACING.sub("", answer).replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    return "".join(answer.split()).rstrip(".")


@lru_cache(maxsize=4096)  # the reference is parsed once for all candidates of its prompt
def _parse(answer: str) -> tuple[Any, ...]:
    """math-verify's reading of an answer; empty when it cannot parse it (which counts as wrong)."""
    from math_verify import LatexExtractionConfig, parse  # sympy: only in processes that check

    if not _OWN_DELIMITERS.search(answer):
        answer = f"${' '.join(answer.split())}$"  # inline math is one line; the answer is all of it
    return tuple(parse(answer, extraction_config=[LatexExtractionConfig()], fallback_mode="no_fallback",
                       parsing_timeout=None))


def equivalent(reference: str, candidate: str) -> bool:
    """Whether two extracted answers are mathematically the same (0.5 = \\frac{1}{2}, x=3 = 3, {1,2} = {2,1}).

    No timeout here: math-verify's own uses SIGALRM, which cannot stop sympy stuck in C code; the caller
    bounds the time by killing the process.
    """
    from math_verify import verify

    gold, pred = _parse(reference), _parse(candidate)
    return bool(gold and pred and verify(list(gold), list(pred), timeout_seconds=None))
