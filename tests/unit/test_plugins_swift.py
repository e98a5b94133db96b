"""Plugin files written the way swift's users write them load unchanged, and stay inside their job.

Each file below is written for these tests in the style of the reference's documentation and examples
(not copied from it): plain classes, swift's base classes imported from ``swift.rewards`` / ``swift.plugin``,
``args=None, **kwargs`` constructors, ``infer`` instead of ``__call__``, chat-completion-shaped results,
module-level ``orms = {...}`` / ``prms = {...}`` dicts, GRPO reward functions with dataset columns.
"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import write_jsonl
from schemas import Candidate, GeneratedShard, Generation, JobSpec, Message, Prompt
from schemas.errors import ConfigError, PluginError
from workers.score import Scorer
from workers.scoring import orms as builtin_orms
from workers.scoring.plugins import load_plugins

PLAIN_NO_BASE = '''
from swift.plugin import orms


class CustomORM:
    """No base class at all: a no-argument constructor and __call__, the README's own description."""

    def __call__(self, infer_requests, ground_truths, **kwargs):
        return [float(gt in r["messages"][-1]["content"]) for r, gt in zip(infer_requests, ground_truths)]


orms["contains"] = CustomORM
'''

CURRENT_REWARDS = '''
import re
from typing import List

from swift.rewards import ORM, AsyncORM, orms


class BoxedMatch(ORM):
    """The current reference style: args=None, **kwargs, super().__init__(args), GRPO's completions + solution."""

    def __init__(self, args=None, **kwargs):
        super().__init__(args)
        self.pattern = re.compile(r"\\\\boxed\\{([^}]*)\\}")

    def __call__(self, completions, solution, **kwargs) -> List[float]:
        out = []
        for text, sol in zip(completions, solution):
            found = self.pattern.search(text)
            out.append(1.0 if found and found.group(1).strip() == sol.strip() else 0.0)
        return out


class LongEnough(AsyncORM):
    needs_ground_truth = False

    async def __call__(self, completions, **kwargs) -> List[float]:
        return [float(len(c) >= 5) for c in completions]


orms["boxed_match"] = BoxedMatch
orms["long_enough"] = LongEnough
'''

DOCUMENTED_PRM = '''
from swift.plugin import PRM


class _Message:
    def __init__(self, content):
        self.content = content


class _Choice:
    def __init__(self, content):
        self.message = _Message(content)


class _Response:
    """Shaped like a chat completion: choices[0].message.content holds the score."""

    def __init__(self, content):
        self.choices = [_Choice(content)]


class CustomPRM(PRM):

    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)

    def infer(self, infer_requests, ground_truths, **kwargs):
        out = []
        for request, truth in zip(infer_requests, ground_truths):
            answer = request["messages"][-1]["content"]
            out.append(_Response("[0.5, %s]" % (1.0 if truth in answer else 0.1)))
        return out


class NumberPRM:
    def infer(self, infer_requests, **kwargs):
        return [{"choices": [{"message": {"content": str(len(r.messages[-1]["content"]))}}]} for r in infer_requests]


prms = {"custom": CustomPRM, "number": NumberPRM}
'''

MODULE_DICTS = '''
import numpy as np


class Steps:
    needs_ground_truth = False

    def __call__(self, infer_requests, ground_truths=None, **kwargs):
        return [[0.9, 0.2 + i / 10] for i, _ in enumerate(infer_requests)]


class Vector:
    needs_ground_truth = False

    def __call__(self, infer_requests, **kwargs):
        return np.ones(len(infer_requests)) * 0.5


orms = {"vector": Vector}
prms = {"steps": Steps}
'''

GRPO_COLUMNS = '''
from swift.rewards import ORM, orms


class LevelAware(ORM):
    """GRPO style: the dataset's columns come as keyword lists, one value per completion."""

    def __call__(self, completions, solution, level, **kwargs):
        assert len(completions) == len(solution) == len(level)
        return [float(s in c) * lv for c, s, lv in zip(completions, solution, level)]


orms["level_aware"] = LevelAware
'''


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return str(path)


def spec(**kw) -> JobSpec:
    base = {"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
            "sampling": {"num_return_sequences": 3}, "n_best_to_keep": 1, "write_scores": True}
    return JobSpec.model_validate({**base, **kw})


def shard(*gens: tuple[str | None, list[str]], extra: list[dict] | None = None) -> GeneratedShard:
    out = []
    for row, (truth, texts) in enumerate(gens):
        prompt = Prompt(id=f"id{row}", row=row, source=f"t line {row + 1}",
                        messages=[Message(role="user", content=f"q{row}")], ground_truth=truth,
                        extra=(extra or [{}] * len(gens))[row])
        out.append(Generation(prompt=prompt, candidates=[Candidate(text=t, tokens=1, finish_reason="stop")
                                                         for t in texts]))
    return GeneratedShard(job_id="j", index=0, generations=out)


def scores(scored: GeneratedShard, kind: str = "orm") -> list[list]:
    return [[getattr(c.scores, kind) for c in g.candidates] for g in scored.generations]


def test_plain_class_from_the_old_swift_plugin_module(tmp_path):
    path = write(tmp_path, "plain", PLAIN_NO_BASE)
    scorer = Scorer(spec(external_plugins=[path], orm_model="contains"))
    assert scores(scorer.score(shard(("42", ["it is 42", "no"])))) == [[1.0, 0.0]]
    scorer.close()  # a class without close() is fine
    assert "swift" not in sys.modules and "swift.plugin" not in sys.modules  # the shim leaves nothing behind


def test_current_rewards_style_with_args_constructor_grpo_call_and_async(tmp_path):
    path = write(tmp_path, "current", CURRENT_REWARDS)
    scored = Scorer(spec(external_plugins=[path], orm_model="boxed_match")).score(
        shard(("7", [r"so \boxed{7}", r"\boxed{8}"])))
    assert scores(scored) == [[1.0, 0.0]]
    scored = Scorer(spec(external_plugins=[path], orm_model="long_enough")).score(shard((None, ["tiny", "longer"])))
    assert scores(scored) == [[0.0, 1.0]]  # async __call__, no reference answer needed


def test_documented_prm_with_infer_chat_completions_and_a_prms_dict(tmp_path):
    path = write(tmp_path, "prm", DOCUMENTED_PRM)
    scored = Scorer(spec(external_plugins=[path], prm_model="custom")).score(shard(("ok", ["ok!", "bad"])))
    steps = [[c.scores.prm_steps for c in g.candidates] for g in scored.generations]
    assert steps == [[[0.5, 1.0], [0.5, 0.1]]] and scores(scored, "prm") == [[0.5, 0.1]]
    scored = Scorer(spec(external_plugins=[path], prm_model="number")).score(shard(("x", ["ab", "abcd"])))
    assert scores(scored, "prm") == [[2.0, 4.0]]


def test_module_level_dicts_step_lists_and_arrays(tmp_path):
    path = write(tmp_path, "dicts", MODULE_DICTS)
    scored = Scorer(spec(external_plugins=[path], prm_model="steps", orm_model="vector")).score(
        shard((None, ["a", "b"])))
    assert scores(scored, "prm") == [[0.2, pytest.approx(0.3)]] and scores(scored) == [[0.5, 0.5]]


def test_grpo_reward_gets_the_dataset_columns_as_keyword_lists(tmp_path):
    path = write(tmp_path, "grpo", GRPO_COLUMNS)
    scored = Scorer(spec(external_plugins=[path], orm_model="level_aware")).score(
        shard(("5", ["5", "6"]), ("9", ["9"]), extra=[{"level": 2}, {"level": 3}]))
    assert scores(scored) == [[2.0, 0.0], [3.0]]


def test_a_plugin_cannot_replace_a_built_in_unless_it_says_so(tmp_path):
    quiet = write(tmp_path, "quiet", "from swift.rewards import orms\n\nclass M:\n    def __call__(self, r, g):\n"
                  "        return [9.0] * len(r)\n\norms['math'] = M\n")
    with pytest.raises(ConfigError, match=r"quiet.py: ORM 'math' is built in: .*orms.replace\('math'"):
        load_plugins([quiet])
    loud = write(tmp_path, "loud", "from swift.rewards import orms\n\nclass M:\n    def __call__(self, r, g):\n"
                 "        return [9.0] * len(r)\n\norms.replace('math', M)\n")
    mine = load_plugins([loud])
    assert type(mine.orms.create("math", spec()).model).__name__ == "M"
    other_job = load_plugins([])
    assert other_job.orms.factory("math").__qualname__ == "MathORM.from_spec"  # the built-in, for every other job


def test_registries_are_per_job_and_a_changed_file_is_imported_again(tmp_path):
    one = write(tmp_path, "one", "from swift.rewards import orms\n\nclass A:\n    def __call__(self, r, g):\n"
                "        return [1.0] * len(r)\n\norms['mine'] = A\n")
    two_dir = tmp_path / "other"
    two_dir.mkdir()
    two = write(two_dir, "one", "from swift.rewards import orms\n\nclass B:\n    def __call__(self, r, g):\n"
                "        return [2.0] * len(r)\n\norms['mine'] = B\n")
    job_a, job_b = load_plugins([one]), load_plugins([two])
    assert job_a.orms.create("mine").model.__class__.__name__ == "A"
    assert job_b.orms.create("mine").model.__class__.__name__ == "B"  # job B's entry did not replace job A's
    assert "mine" not in builtin_orms and "mine" not in load_plugins([]).orms
    with pytest.raises(ConfigError, match="'mine' is registered twice"):
        load_plugins([one, two])
    Path(one).write_text(Path(one).read_text().replace("[1.0]", "[3.0]"))
    scored = Scorer(spec(external_plugins=[one], orm_model="mine")).score(shard(("x", ["a"])))
    assert scores(scored) == [[3.0]]  # the edited file, not the module imported before


def test_a_real_ms_swift_is_left_alone(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "swift"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "rewards.py").write_text("orms = {}\n\nclass ORM:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = write(tmp_path, "uses_real", "import swift\nfrom swift.rewards import orms\nassert swift.REAL\n"
                 "class X:\n    def __call__(self, r, g):\n        return [1.0] * len(r)\n\norms['x'] = X\n")
    try:
        job = load_plugins([path])  # ms-swift's own registry is used; what the file added to it is taken
        assert type(job.orms.create("x").model).__name__ == "X"
        assert sys.modules["swift"].REAL
    finally:
        for name in [n for n in sys.modules if n == "swift" or n.startswith("swift.")]:
            del sys.modules[name]


def test_a_plugin_that_raises_fails_the_shard_with_its_name(tmp_path):
    path = write(tmp_path, "boom", "from swift.rewards import orms\n\nclass Boom:\n    def __call__(self, r, g):\n"
                 "        raise KeyError('solution')\n\norms['boom'] = Boom\n")
    with pytest.raises(PluginError, match=r"reward model 'boom' \(boom_.*:Boom\) raised KeyError: 'solution'"):
        Scorer(spec(external_plugins=[path], orm_model="boom")).score(shard(("1", ["a"])))


def test_a_plugin_that_raises_mid_run_keeps_the_finished_shards(tmp_path, monkeypatch, capsys):
    from producer.cli import main

    rows = [{"query": f"q{i}", "response": str(i)} for i in range(3)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    write_jsonl(tmp_path / "cache.jsonl", [{"messages": [{"role": "user", "content": r["query"]},
                                                         {"role": "assistant", "content": a}]}
                                           for r in rows for a in (r["response"], "x")])
    write(tmp_path, "late", "from swift.rewards import orms\n\nclass Late:\n    def __call__(self, r, g):\n"
          "        if any(t == '2' for t in g):\n            raise ValueError('cannot score 2')\n"
          "        return [float(x['messages'][-1]['content'] == t) for x, t in zip(r, g)]\n\norms['late'] = Late\n")
    monkeypatch.chdir(tmp_path)
    code = main(["submit", "--no_progress", "d.jsonl", "--dataset_shuffle", "false", "--sampler_engine", "no",
                 "--cache_files", "cache.jsonl", "--external_plugins", "late.py", "--orm_model", "late",
                 "--num_return_sequences", "2", "--shard_size", "1", "--output_file", "o.jsonl"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "shard 2 [rows: d.jsonl line 3]: reward model 'late'" in err and "ValueError: cannot score 2" in err
    assert "Traceback" not in err
    parts = tmp_path / "sample_output" / ".o.jsonl.parts"
    assert sorted(p.name for p in parts.glob("*.done.json")) == ["shard-000000.done.json", "shard-000001.done.json"]
    assert "--resume true --output_file o.jsonl" in err
    assert json.loads((parts / "job.json").read_text())["orm_model"] == "late"
