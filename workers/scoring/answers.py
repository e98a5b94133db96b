"""Final answers: where a candidate states its answer, how answers are normalised, and symbolic equivalence.

Extraction and normalisation are plain text work and run in the scoring process. ``check`` imports
sympy (through math-verify) on first use and can take unbounded time on a hostile expression, so it is
meant for a checker process that can be killed (see ``workers.scoring.orm_kinds.MathORM``).

Two readings of a candidate: ``extract_answer`` is the strict one (the last marked answer: a box, a
``# Answer`` line, an ``<answer>`` tag, a ``####`` line); ``final_answers`` reads like a careful reader: every
answer the text states, marked or not ("The answer is 7.", "**Answer:** 7", a last line that is only the
answer), so that a grader can refuse a text whose stated answers disagree.
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

# --- unmarked answers: a stated phrase, or a last line that is only the answer ----------------------------------
#: "the answer is", "Final answer:", "**Answer:**", "Answer =" (markdown stars allowed around the colon)
_PHRASE = re.compile(r"\banswer[\s*]*(?:is\b\s*:?|:|=)[ \t*]*", re.IGNORECASE)
#: where a stated answer ends: a line end, a sentence end (a dot not inside a number), or a clause after a comma
_STATEMENT_END = re.compile(r"\n|(?<!\d)\.|\.(?!\d)|[?!;]|,\s+(?=[A-Za-z]{2})|\s+(?:because|since|as|so)\b",
                            re.IGNORECASE)
_MATH_DELIMITERS = re.compile(r"(?<!\\)\$|\\[()\[\]]")
#: prose: a word of three letters or more, or a two-letter English word (not a LaTeX command's name; "xy", "cm"
#: and the like are math)
_PROSE = re.compile(r"(?<![A-Za-z\\])(?:[A-Za-z]{3,}|(?:am|an|as|at|be|by|do|go|he|if|in|is|it|me|my|no|of|on|or"
                    r"|so|to|up|us|we)(?![A-Za-z]))", re.IGNORECASE)
#: unit words after an answer ("5 cm", "12 square meters", "4 cm^2"), dropped before it is checked
_UNITS = re.compile(r"(?<=[\d})\]%])(?:\s+[A-Za-z]{2,}(?:\^\{?\d+\}?)?){1,2}$")
_HEDGES = frozenset({"or", "and", "not", "but", "no", "maybe", "perhaps", "probably", "either"})
_NUMBER_LINE = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
#: how far after an answer phrase its answer may run (an answer is short; this keeps the reading linear)
STATEMENT_CHARS = 1000


def _boxes(text: str) -> list[str | None]:
    """The content of every ``\\boxed{}`` / ``\\fbox{}`` in order, nested braces included; None for an unbalanced
    one. One pass over the text, however many boxes (a looping model may write thousands, unclosed)."""
    opened = {box.end(): n for n, box in enumerate(_BOX.finditer(text))}  # where a box's content starts -> box
    if not opened:
        return []
    contents: list[str | None] = [None] * len(opened)
    stack: list[int] = []  # the content start of each open brace
    i = min(opened) - 1  # the first box's opening brace
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character (\{ \} \\) never opens or closes a group
            continue
        if char == "{":
            stack.append(i + 1)
        elif char == "}" and stack:
            start = stack.pop()
            if start in opened:
                contents[opened[start]] = text[start:i]
        i += 1
    return contents


def _marked(text: str) -> list[str | None]:
    """Every marked answer, by kind, strongest first: boxes, else ``# Answer`` sections, else <answer> tags,
    else ``####`` lines (a marked answer that holds a box is that box)."""
    if boxes := _boxes(text):
        return boxes
    if lines := list(_ANSWER_LINE.finditer(text)):
        ends = [line.start() for line in lines[1:]] + [len(text)]
        return [text[line.end():end] for line, end in zip(lines, ends)]
    return _ANSWER_TAG.findall(text) or _GSM8K_LINE.findall(text)


def extract_answer(text: str) -> str | None:
    """A text's final answer, strictly: the last box, else what follows the last ``# Answer`` line, else the
    last <answer> tag, else the last GSM8K-style ``#### 42`` line.

    The last box decides even when it is broken (a truncated ``\\boxed{`` is no answer, not a cue to use an
    earlier box): the model's final word is what is graded. None when there is no non-empty answer.
    """
    marked = _marked(text)
    return ((marked[-1] or "").strip() or None) if marked else None


def _answer_like(text: str) -> str | None:
    """``text`` as an answer when it reads as one (math, perhaps with unit words after it), without its
    delimiters, markdown stars and units; None for prose (a word is an answer only inside a box or a mark)."""
    text = _TEXT_WRAPPER.sub(r" \1 ", _MATH_DELIMITERS.sub(" ", text)).strip(" \t*")  # markdown **7**
    text = text.removeprefix("=").strip().rstrip(".").strip(" \t*")
    if not text or _BOX.search(text):
        return None
    units = _UNITS.search(text)
    math = text[:units.start()].strip() if units else text
    if units and any(word.casefold() in _HEDGES for word in re.findall(r"[A-Za-z]+", units[0])):
        return None
    return math if math and not _PROSE.search(math) else None


def _stated(text: str) -> list[str]:
    """Every answer-like statement after an answer phrase ("The answer is 7.", "Final answer: $7$")."""
    answers = []
    for phrase in _PHRASE.finditer(text):
        rest = text[phrase.end():phrase.end() + STATEMENT_CHARS]
        end = _STATEMENT_END.search(rest)
        if (answer := _answer_like(rest[:end.start()] if end else rest)) is not None:
            answers.append(answer)
    return answers


def _last_line(text: str) -> list[str]:
    """The last line when it is only an answer, with every earlier line that is only a number (a list of
    numbers is several answers, not a final one)."""
    lines = [line for line in text.splitlines() if line.strip()]
    last = _answer_like(lines[-1]) if lines else None
    if last is None:
        return []
    numbers = [n for line in lines[:-1] if (n := _MATH_DELIMITERS.sub("", line).strip(" \t*").rstrip("."))
               and _NUMBER_LINE.fullmatch(n)]
    return [*numbers, last]


def final_answers(text: str, *, strict: bool = False) -> list[str] | None:
    """Every distinct final answer the text states (as normalised by ``normalize``, in order); None when it
    states none or its last box is broken (truncated).

    ``strict``: only ``extract_answer``'s one marked answer. Otherwise every marked answer of the strongest kind
    there is (``_marked``; a box inside a box counts once) and every answer phrase count; with neither, the last
    line when it is only an answer. A text is right only when all of them are, so "\\boxed{7} or \\boxed{8}"
    and a list of numbers never pass.
    """
    if strict:
        answer = extract_answer(text)
        return [answer] if answer else None
    marked = _marked(text)
    if marked and marked[-1] is None:
        return None
    answers = [a for content in marked if content and not _BOX.search(content)
               for a in (_stated(content) or [content.strip()])]
    answers += _stated(text)
    if not marked and not answers:
        answers = _last_line(text)
    distinct: dict[str, str] = {}
    for answer in answers:
        distinct.setdefault(normalize(answer), answer)
    distinct.pop("", None)
    return list(distinct.values()) or None


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


def check(reference: str, candidate: str) -> bool | None:
    """Whether two extracted answers are mathematically the same (0.5 = \\frac{1}{2}, x=3 = 3, {1,2} = {2,1});
    None when the candidate's answer cannot be parsed (it is wrong too, but it says nothing).

    No timeout here: math-verify's own uses SIGALRM, which cannot stop sympy stuck in C code; the caller
    bounds the time by killing the process.
    """
    from math_verify import verify

    pred = _parse(candidate)
    if not pred:
        return None
    gold = _parse(reference)
    return bool(gold and verify(list(gold), list(pred), timeout_seconds=None))
