"""swift's other built-in ORMs (cosine, soft_overlong, react_format, toolbench) give the reference's verdicts.

The differential tests run ms-swift 4.6's own classes on the same inputs in the reference's environment
(``../shared/anchor/setup.sh`` builds it at ~/.cache/samplefleet-anchor/venv-swift); where it is missing they
skip and say so. The other tests run everywhere.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from schemas import JobSpec
from schemas.errors import ConfigError
from workers.scoring import InferRequest, orms
from workers.scoring.orm_swift import CosineORM, ReactFormatORM, SoftOverlongORM, ToolBenchORM, parse_action

SWIFT_PY = next(iter(sorted(Path.home().glob(".cache/samplefleet-anchor/venv-swift/bin/python"))), None)


def req(text: str, tokens: int | None = None) -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
                        tokens=tokens)


def spec(orm: str, max_new_tokens: int = 100, **orm_kwargs) -> JobSpec:
    return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                   "orm_model": orm, "orm_kwargs": orm_kwargs,
                                   "sampling": {"max_new_tokens": max_new_tokens}})


def reference(script: str) -> list:
    """What ms-swift's own code returns for ``script`` (which prints one JSON value), run in its venv."""
    if SWIFT_PY is None:
        pytest.skip("REFERENCE NOT INSTALLED: ../shared/anchor/setup.sh builds ms-swift 4.6's venv")
    out = subprocess.run([str(SWIFT_PY), "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


REACT_TEXTS = [
    "<think>look it up</think>\nAction: search\nAction Input: {\"q\": \"paris\"}",
    "<think>x</think>Action: a Action Input: b",
    "<think>x</think>\n\nAction: a\nAction Input:",
    "no think\nAction: a\nAction Input: {}",
    "<think>x</think>\nAction Input: {} Action: a",
    " <think>x</think>\nAction: a\nAction Input: {}",
    "<think>multi\nline</think>\nAction: a\nmore\nAction Input: {}\ntrailing\nlines",
    "<think>x</think>\nFinal Answer: 3",
    "",
]

TOOL_PAIRS = [  # (candidate, reference)
    ('Action: search\nAction Input: {"q": "paris", "n": 3}', 'Action: search\nAction Input: {"n": 3, "q": "paris"}'),
    ('Action: search\nAction Input: {"q": "paris"}', 'Action: search\nAction Input: {"q": "paris", "n": 3}'),
    ('Action: search\nAction Input: {"q": "rome"}', 'Action: search\nAction Input: {"q": "paris"}'),
    ('Action: lookup\nAction Input: {"q": "paris"}', 'Action: search\nAction Input: {"q": "paris"}'),
    ('Action: search\nAction Input: {}', 'Action: search\nAction Input: {}'),
    ('Action: search\nAction Input: {"a": 1}', 'Action: search\nAction Input: {}'),
    ('Action: search', 'Action: search\nAction Input: {}'),
    ('Action: say\nAction Input: the weather in paris today', 'Action: say\nAction Input: weather in paris'),
    ('Action: say\nAction Input: something else entirely here', 'Action: say\nAction Input: weather in paris'),
    ('Action: say\nAction Input: paris a b c d e f g h', 'Action: say\nAction Input: paris q r s t u v w x y'),
    ('Action: say\nAction Input: not json', 'Action: say\nAction Input: {"q": 1}'),
    ('Action: say\nAction Input: [1, 2]', 'Action: say\nAction Input: [1, 2]'),
    ('Action: search\nAction Input: {"q": "paris"}\nObservation:', 'Action: search\nAction Input: {"q": "paris"}'),
    ('Action: search\nAction Input: {"q": "paris"}<|im_end|>', 'Action: search\nAction Input: {"q": "paris"}'),
    ('Thought: t\nAction: a\nAction Input: {"x": 1}\nAction: b\nAction Input: {"y": 2}', 'Action: b\nAction Input: {"y": 2}'),
    ('nothing here', 'nothing there'),
    ('Action: say\nAction Input: ', 'Action: say\nAction Input: hello'),
]


def test_react_format_matches_the_reference():
    texts = json.dumps(REACT_TEXTS)
    theirs = reference(f"import json\nfrom swift.rewards.orm import orms\n"
                       f"print(json.dumps(orms['react_format']()(json.loads({texts!r}))))")
    ours = orms.create("react_format", spec("react_format"))([req(t) for t in REACT_TEXTS], [None] * len(REACT_TEXTS))
    assert ours == theirs and 0 < sum(ours) < len(ours)


def test_toolbench_matches_the_reference():
    pairs = json.dumps(TOOL_PAIRS)
    theirs = reference(
        "import json\nfrom swift.rewards.orm import orms\n"
        f"pairs = json.loads({pairs!r})\n"
        "reqs = [{'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': c}]} "
        "for c, _ in pairs]\n"
        "print(json.dumps(orms['toolbench']()(reqs, [r for _, r in pairs])))")
    ours = orms.create("toolbench", spec("toolbench"))([req(c) for c, _ in TOOL_PAIRS], [r for _, r in TOOL_PAIRS])
    assert ours == theirs and 0 < sum(ours) < len(ours)


LENGTHS = [0, 1, 25, 50, 79, 80, 81, 90, 99, 100, 101, 150, 400]


def test_cosine_and_soft_overlong_match_the_reference():
    theirs = reference(
        "import json\nfrom types import SimpleNamespace\nfrom swift.rewards.orm import orms\n"
        "args = SimpleNamespace(cosine_min_len_value_wrong=-0.5, cosine_max_len_value_wrong=0.0, "
        "cosine_min_len_value_correct=1.0, cosine_max_len_value_correct=0.5, cosine_max_len=100, "
        "soft_max_length=100, soft_cache_length=20)\n"
        f"lengths = {LENGTHS!r}\n"
        "ids = [[7] * n for n in lengths]\n"
        "out = {}\n"
        "for correct in (0.0, 1.0):\n"
        "    orm = orms['cosine'](args, accuracy_orm=lambda completions, solution, **kw: [correct] * len(completions))\n"
        "    out[str(correct)] = orm(['x'] * len(ids), ['x'] * len(ids), response_token_ids=ids)\n"
        "out['soft'] = orms['soft_overlong'](args)(['x'] * len(ids), response_token_ids=ids)\n"
        "print(json.dumps(out))")
    requests = [req("x", tokens=n) for n in LENGTHS]
    for correct in (0.0, 1.0):
        cosine = CosineORM(lambda r, g, c=correct: [c] * len(r), max_len=100, values={})
        assert cosine(requests, ["x"] * len(requests)) == pytest.approx(theirs[str(correct)], abs=1e-12)
    soft = orms.create("soft_overlong", spec("soft_overlong", soft_cache_length=20))
    assert soft(requests, [None] * len(requests)) == pytest.approx([1.0 + v for v in theirs["soft"]], abs=1e-12)


def test_cosine_grades_with_the_math_orm_and_rewards_short_right_answers():
    cosine = orms.create("cosine", spec("cosine", max_new_tokens=100))
    try:
        scores = cosine([req(r"so \boxed{7}", tokens=10), req(r"so \boxed{7}", tokens=90),
                         req(r"\boxed{8}", tokens=10), req(r"\boxed{8}", tokens=90)], ["7"] * 4)
    finally:
        cosine.close()
    right_short, right_long, wrong_short, wrong_long = scores
    assert 1.0 >= right_short > right_long >= 0.5 and -0.5 <= wrong_short < wrong_long <= 0.0


def test_lengths_are_the_engines_tokens_else_words():
    soft = SoftOverlongORM(soft_max_length=10, soft_cache_length=4)
    assert soft([req("a b c", tokens=12), req("a b c d e f g h")], [None, None]) == [1.0 - 6 / 4, 1.0 - 2 / 4]


@pytest.mark.parametrize("orm, kwargs, message", [
    ("soft_overlong", {}, "needs --orm_kwargs '{\"soft_cache_length\": N}'"),
    ("soft_overlong", {"soft_cache_length": 100}, "soft_cache_length=100: must be less than soft_max_length (100)"),
    ("soft_overlong", {"soft_cache_length": 2.5}, "soft_cache_length=2.5: must be a whole number"),
    ("cosine", {"cosine_max_len": 0}, "cosine_max_len=0: must be a whole number >= 1"),
    ("cosine", {"cosine_min_len_value_wrong": "low"}, "cosine_min_len_value_wrong='low': must be a finite number"),
    ("cosine", {"length": 3}, "--orm_kwargs 'length': not an option of --orm_model cosine"),
    ("react_format", {"pattern": "x"}, "not an option of --orm_model react_format; allowed: none"),
    ("toolbench", {"x": 1}, "not an option of --orm_model toolbench"),
])
def test_bad_options_name_the_key(orm, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        orms.create(orm, spec(orm, **kwargs))


def test_parse_action_takes_the_last_step():
    assert parse_action("Action: a\nAction Input: {}\nAction: b\nAction Input: 2") == ("b", "2")
    assert parse_action("plain text") == ("none", "{}")


def test_classes_need_no_arguments_of_their_own_beyond_the_spec():
    assert ReactFormatORM.from_spec(spec("react_format"))([req("<think></think> Action: a Action Input: b")], [None]) == [1.0]
    assert ToolBenchORM.matches("Action: a\nAction Input: {}", "Action: a\nAction Input: {}")
