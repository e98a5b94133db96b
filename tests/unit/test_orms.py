"""The built-in ORMs (workers.scoring.orm_kinds): answer extraction, math equivalence, timeouts, the string and shape
checks, and their --orm_kwargs. Fast: no language model; the math checks run in a real checker pool."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from schemas import Candidate, DatasetSpec, GeneratedShard, Generation, JobSpec, Message, Prompt
from schemas.errors import ConfigError
from workers.score import Scorer
from workers.scoring import InferRequest, orms
from workers.scoring.answers import extract_answer, normalize, reference_answer
from workers.scoring.orm_kinds import AccuracyORM, FormatORM, LengthORM, MathORM, RepetitionORM
from workers.scoring.plugins import check_plugin

POWER_TOWER = r"\boxed{9^{9^{9^{9^{9}}}}}"  # math-verify compares it with 1 for hours (checked: > 20 s unbounded)


def req(candidate: str) -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": "Solve it."},
                                  {"role": "assistant", "content": candidate}])


def spec(orm: str, **orm_kwargs) -> JobSpec:
    return JobSpec(model="m", datasets=[DatasetSpec(source="d.jsonl")], output_file="o.jsonl", orm_model=orm,
                   orm_kwargs=orm_kwargs)


@pytest.fixture(scope="module")
def math_orm() -> Iterator[MathORM]:
    orm = orms.create("math", spec("math"))
    yield orm
    orm.close()


# --- math: (candidate, reference, expected), each checked by hand ------------------------------------------------

MATH_CASES = [
    # integers and negatives
    (r"So the total is \boxed{42}.", "42", 1),
    (r"\boxed{42}", "43", 0),
    (r"\boxed{-7}", "-7", 1),
    (r"\boxed{-7}", "7", 0),
    (r"\boxed{1,000}", "1000", 1),
    (r"\boxed{2^{10}}", "1024", 1),
    # fractions and decimals
    (r"\boxed{0.5}", r"\frac{1}{2}", 1),
    (r"\boxed{\frac{1}{2}}", "0.5", 1),
    (r"\boxed{1/2}", r"\frac{1}{2}", 1),
    (r"\boxed{\dfrac{1}{2}}", "1/2", 1),
    (r"\boxed{\frac12}", "0.5", 1),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", 1),
    (r"\boxed{\frac{1}{3}}", "0.5", 0),
    (r"\boxed{0.3}", r"\frac{1}{3}", 0),
    # nested braces are kept whole
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}", 0),
    (r"\boxed{\frac{a}{b}}", "a/b", 1),
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1),
    # the last box decides or, read carefully, two different boxes are no answer (STRICT_ONLY); \fbox too
    (r"First \boxed{3}, but correcting the sign: \boxed{4}", "3", 0),
    (r"\fbox{12}", "12", 1),
    # '# Answer' lines and <answer> tags
    ("Adding the parts gives 17.\n\n# Answer\n\n17", "17", 1),
    ("# Answer\n\n\\frac{3}{4}", "0.75", 1),
    ("# Answer\n\n18", "17", 0),
    ("<think>5/2 it is</think>\n<answer>2.5</answer>", r"\frac{5}{2}", 1),
    ("<answer>3</answer>", "<answer>3</answer>", 1),
    # references written as solutions
    (r"\boxed{0.75}", r"Dividing, we get $\boxed{\frac{3}{4}}$.", 1),
    (r"\boxed{0.7}", r"Dividing, we get $\boxed{\frac{3}{4}}$.", 0),
    (r"\boxed{1200}", "She earns 12 * 100 = 1,200 dollars.\n#### 1,200", 1),
    # units and percentages
    (r"\boxed{5\text{ cm}}", "5", 1),
    (r"\boxed{5\text{ cm}}", "6", 0),
    (r"\boxed{50\%}", "50", 1),
    (r"\boxed{25\%}", "0.25", 1),
    (r"\boxed{25\%}", "0.5", 0),
    # sets and intervals
    (r"\boxed{\{1,2\}}", r"\{2,1\}", 1),
    (r"\boxed{\{1,2\}}", r"\{1,3\}", 0),
    (r"\boxed{(1,2]}", "(1, 2]", 1),
    (r"\boxed{[1,2)}", "(1,2]", 0),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3)", 1),
    (r"\boxed{\left(1, 2\right)}", "(1,2)", 1),
    # equations against values
    (r"\boxed{x = 3}", "3", 1),
    (r"\boxed{3}", "x=3", 1),
    (r"\boxed{x = 4}", "3", 0),
    # pi
    (r"\boxed{2\pi}", r"\pi \cdot 2", 1),
    (r"\boxed{\frac{\pi}{2}}", r"\frac{1}{2}\pi", 1),
    (r"\boxed{3.14}", r"\pi", 0),
    # garbage and missing answers: never right
    (r"The answer is \boxed{", "1", 0),
    (r"\boxed{\frac{1}{2}", "0.5", 0),
    (r"\boxed{}", "0", 0),
    (r"\boxed{)(}", "1", 0),
    (r"\boxed{\frac{}{}}", "1", 0),
    ("I think it is 42.", "42", 0),
    ("", "42", 0),
    (r"\boxed{42}", "", 0),
    (r"\boxed{42}", None, 0),
]


#: Passes only with --orm_kwargs '{"strict_format": true}' (the last marked answer decides); the default reading
#: refuses a candidate whose answers disagree (tests/unit/test_math_reference.py has the default's own table).
STRICT_ONLY = [
    (r"First \boxed{3}, but correcting the sign: \boxed{4}", "4"),
    ("<answer>1</answer> no wait <answer>2</answer>", "2"),
]


@pytest.fixture(scope="module")
def strict_orm() -> Iterator[MathORM]:
    orm = orms.create("math", spec("math", strict_format=True, workers=1))
    yield orm
    orm.close()


def test_strict_format_keeps_the_strict_reading(strict_orm: MathORM, math_orm: MathORM) -> None:
    """Every case of the table scores the same strictly; the strict-only cases pass strictly and fail by default."""
    cases = MATH_CASES + [(c, r, 1) for c, r in STRICT_ONLY]
    assert strict_orm([req(c) for c, _, _ in cases], [r for _, r, _ in cases]) == [float(e) for _, _, e in cases]
    assert math_orm([req(c) for c, _ in STRICT_ONLY], [r for _, r in STRICT_ONLY]) == [0.0] * len(STRICT_ONLY)


def test_the_table_is_big_enough() -> None:
    assert len(MATH_CASES) >= 40
    assert {e for _, _, e in MATH_CASES} == {0, 1}


@pytest.mark.parametrize("candidate,reference,expected", MATH_CASES)
def test_math_case(math_orm: MathORM, candidate: str, reference: str | None, expected: int) -> None:
    assert math_orm([req(candidate)], [reference]) == [float(expected)]


def test_math_scores_a_whole_batch_in_order(math_orm: MathORM) -> None:
    """One call with every case (and each twice, so duplicates are checked once and both get the score)."""
    cases = MATH_CASES + MATH_CASES
    scores = math_orm([req(c) for c, _, _ in cases], [r for _, r, _ in cases])
    assert scores == [float(e) for _, _, e in cases]


def test_math_needs_ground_truth_and_checks_lengths(math_orm: MathORM) -> None:
    assert math_orm.needs_ground_truth
    assert math_orm([], []) == []
    with pytest.raises(ValueError):
        math_orm([req(r"\boxed{1}")], [])


def test_math_overrun_scores_zero_and_the_rest_go_on(caplog: pytest.LogCaptureFixture) -> None:
    orm = orms.create("math", spec("math", timeout=1.0, workers=2))
    try:
        batch = [(r"\boxed{\frac{1}{2}}", "0.5", 1.0), (POWER_TOWER, "1", 0.0), (r"\boxed{3}", "4", 0.0)] + [
            (rf"\boxed{{{n}/2}}", f"{n / 2}", 1.0) for n in range(1, 40)]
        start = time.monotonic()
        scores = orm([req(c) for c, _, _ in batch], [r for _, r, _ in batch])
        elapsed = time.monotonic() - start
        assert scores == [e for _, _, e in batch]
        assert elapsed < 20, f"took {elapsed:.1f} s"
        assert "took over 1 s" in caplog.text and "9^{9^{9^{9^{9}}}}" in caplog.text
        assert orm([req(r"\boxed{0.25}")], [r"\frac14"]) == [1.0]  # the replaced checker works
    finally:
        orm.close()


def test_math_through_the_score_stage() -> None:
    """Registered name + job spec + the real score stage: each distinct candidate scored, in place."""
    prompt = Prompt(id="p", row=0, source="t", messages=[Message(role="user", content="Half of 1?")],
                    ground_truth=r"The answer is $\boxed{\frac{1}{2}}$.")
    texts = [r"So \boxed{0.5}.", r"\boxed{2}", r"So \boxed{0.5}.", "# Answer\n\n1/2"]
    generated = GeneratedShard(job_id="j", index=0, generations=[Generation(
        prompt=prompt, candidates=[Candidate(text=t, tokens=1, finish_reason="stop") for t in texts])])
    scorer = Scorer(spec("math"))
    try:
        scored = scorer.score(generated)
    finally:
        scorer.close()
    assert [c.scores.orm for c in scored.generations[0].candidates] == [1.0, 0.0, 1.0, 1.0]


def test_math_check_whose_process_dies_scores_zero_and_the_rest_go_on(caplog: pytest.LogCaptureFixture) -> None:
    orm = MathORM(timeout=60.0, workers=1)
    try:
        orm([req(r"\boxed{1}")], ["1.0"])  # starts the pool
        killer = threading.Timer(1.0, lambda: orm._pool._checkers[0].process.kill())
        killer.start()
        start = time.monotonic()
        scores = orm([req(POWER_TOWER), req(r"\boxed{0.5}"), req(r"\boxed{2}")], ["1", "1/2", "3"])
        killer.join()
        assert scores == [0.0, 1.0, 0.0]
        assert time.monotonic() - start < 20
        assert "ended its process (exit code -9)" in caplog.text
    finally:
        orm.close()


def test_math_replaces_a_checker_that_died_between_calls() -> None:
    orm = MathORM(timeout=5.0, workers=1)
    try:
        assert orm([req(r"\boxed{0.5}")], ["1/2"]) == [1.0]
        dead = orm._pool._checkers[0].process
        dead.kill()
        dead.join()
        assert orm([req(r"\boxed{0.5}"), req(r"\boxed{2}")], ["1/2", "3"]) == [1.0, 0.0]
        assert orm._pool._checkers[0].process.is_alive()
    finally:
        orm.close()
    assert orm._pool is None


def test_math_close_ends_its_processes() -> None:
    orm = MathORM(workers=2)
    orm([req(r"\boxed{0.5}")], ["1/2"])
    processes = [c.process for c in orm._pool._checkers]
    orm.close()
    assert not any(p.is_alive() for p in processes)
    orm.close()  # twice is fine


# --- extraction and normalisation ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,answer", [
    (r"\boxed{\frac{a}{b}}", r"\frac{a}{b}"),
    (r"x \boxed{1} y \boxed{\{1, 2\}} z", r"\{1, 2\}"),
    (r"\boxed { 7 }", "7"),
    (r"\boxed{3} and later \boxed{4", None),
    (r"\boxed{  }", None),
    ("Work.\n# Answer\n\n  12  \n", "12"),
    ("<answer> 5 </answer>", "5"),
    ("So 3 + 4 = 7.\n#### 7\n", "7"),
    (r"<answer>\boxed{6}</answer> # Answer", "6"),
    ("just prose, 42", None),
])
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def test_reference_answer_falls_back_to_the_whole_text() -> None:
    assert reference_answer(" 42 ") == "42"
    assert reference_answer(r"so $\boxed{7}$") == "7"
    assert reference_answer("   ") is None and reference_answer(None) is None


def test_normalize() -> None:
    assert normalize(r" $\left( 1,\! 2 \right)$. ") == "(1,2)"
    assert normalize(r"5\text{ cm}") == "5cm"
    assert normalize(r"\dfrac{1}{2}") == r"\frac{1}{2}"
    assert normalize(r"\rightarrow") == r"\rightarrow"


# --- accuracy ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("candidate,reference,expected", [
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 0.0),  # no sympy: equal values in other forms do not match
    (r"\boxed{\text{Yes}}", "yes", 1.0),
    ("<answer>$42$.</answer>", "42", 1.0),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", 1.0),
    (r"\boxed{1\!000}", "1000", 1.0),
    ("42", "42", 0.0),  # no extractable answer in the candidate
    (r"\boxed{42}", None, 0.0),
    (r"\boxed{$}", "$", 0.0),  # both normalise to nothing: not a match
])
def test_accuracy(candidate: str, reference: str | None, expected: float) -> None:
    orm = orms.create("accuracy", spec("accuracy"))
    assert orm.needs_ground_truth
    assert orm([req(candidate)], [reference]) == [expected]


# --- format, repetition, length -----------------------------------------------------------------------------------

def test_format_default_pattern() -> None:
    orm = orms.create("format", spec("format"))
    assert not orm.needs_ground_truth
    texts = ["<think>a\nb</think>\n<answer>4</answer>", "<think>a</think><answer>4</answer> and more",
             "<answer>4</answer>", "no tags"]
    assert orm([req(t) for t in texts], [None] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_format_custom_pattern() -> None:
    orm = orms.create("format", spec("format", pattern=r"\\boxed\{"))
    assert orm([req(r"so \boxed{1}"), req("so 1")], [None, None]) == [1.0, 0.0]


def test_repetition() -> None:
    orm = orms.create("repetition", spec("repetition"))
    assert not orm.needs_ground_truth
    # 9 words -> 7 trigrams, 3 distinct: swift's penalty -(1 - 3/7) = -4/7, so 1 - 4/7
    texts = ["a b c A B C a b c", "every word here is new", "too short", ""]
    assert orm([req(t) for t in texts], [None] * 4) == pytest.approx([3 / 7, 1.0, 1.0, 1.0])
    half = orms.create("repetition", spec("repetition", ngram_size=1, max_penalty=-0.5))
    assert half([req("x x x x")], [None]) == pytest.approx([1 - 0.5 * 0.75])


def test_length() -> None:
    orm = orms.create("length", spec("length", max_words=10, buffer_words=4))
    assert not orm.needs_ground_truth
    texts = [" ".join(["w"] * n) for n in (0, 6, 7, 8, 10, 12)]
    assert orm([req(t) for t in texts], [None] * 6) == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.0, 0.0])
    default = orms.create("length", spec("length"))
    assert default([req("w " * 768), req("w " * 896)], [None, None]) == pytest.approx([1.0, 0.5])


# --- options ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,allowed", [
    ("math", "timeout, workers, strict_format"), ("accuracy", "none"), ("format", "pattern"),
    ("repetition", "ngram_size, max_penalty"), ("length", "max_words, buffer_words"),
])
def test_unknown_orm_kwargs_are_refused(name: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match="--orm_kwargs 'tiemout'") as err:
        orms.create(name, spec(name, tiemout=3))
    assert f"--orm_model {name}" in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("name,kwargs,named", [
    ("math", {"timeout": 0}, "timeout"),
    ("math", {"timeout": "5"}, "timeout"),
    ("math", {"timeout": True}, "timeout"),
    ("math", {"workers": 0}, "workers"),
    ("math", {"workers": 1.5}, "workers"),
    ("math", {"strict_format": "yes"}, "strict_format"),
    ("format", {"pattern": "(unclosed"}, "pattern"),
    ("format", {"pattern": 5}, "pattern"),
    ("repetition", {"ngram_size": 0}, "ngram_size"),
    ("repetition", {"max_penalty": -2}, "max_penalty"),
    ("repetition", {"max_penalty": 0.5}, "max_penalty"),
    ("length", {"max_words": "many"}, "max_words"),
    ("length", {"buffer_words": 0}, "buffer_words"),
    ("length", {"max_words": 10, "buffer_words": 11}, "buffer_words"),
])
def test_bad_orm_kwargs_values(name: str, kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"--orm_kwargs {named}"):
        orms.create(name, spec(name, **kwargs))


def test_options_reach_the_orm() -> None:
    orm = orms.create("math", spec("math", timeout=2.5, workers=1))
    assert (orm.timeout, orm.workers) == (2.5, 1)
    assert orms.create("math", spec("math")).workers == min(2, os.cpu_count() or 1)


@pytest.mark.parametrize("cls", [MathORM, AccuracyORM, FormatORM, RepetitionORM, LengthORM])
def test_classes_follow_swifts_plugin_convention(cls: type) -> None:
    check_plugin(cls.name, cls)  # constructible with no arguments, called with (requests, ground_truths)
