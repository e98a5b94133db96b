"""The score stage, plugins and the `no` engine (cache files), with plugin reward models: no model needed."""
from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import write_jsonl
from schemas import Candidate, GeneratedShard, Generation, JobSpec, Message, Prompt, SamplingParams
from schemas.errors import ConfigError, DataError, PermanentError
from workers.aggregate import shard_rows, summarise
from workers.engines.cache import CacheEngine
from workers.score import Scorer

PLUGIN = '''
from workers.scoring import ORM, PRM, orms, prms

CALLS = []


class ContainsAnswer(ORM):
    """swift-style: reads request.messages and the ground truths."""

    def __init__(self, args=None, **kwargs):
        super().__init__()

    def __call__(self, infer_requests, ground_truths, **kwargs):
        CALLS.append(len(infer_requests))
        return [float(gt in r.messages[-1]["content"]) for r, gt in zip(infer_requests, ground_truths)]


class Steps(PRM):
    needs_ground_truth = False

    def __call__(self, infer_requests, ground_truths, **kwargs):
        return [[len(r["messages"][-1]["content"]) / 10, 0.9] for r in infer_requests]


orms["{name}"] = ContainsAnswer
prms["{name}_prm"] = Steps
'''


def plugin(tmp_path: Path, body: str = PLUGIN) -> tuple[str, str]:
    name = "p" + uuid.uuid4().hex[:8]
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body).replace("{name}", name))
    return str(path), name


def spec(**kw) -> JobSpec:
    base = {"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
            "sampling": {"num_return_sequences": 3}, "n_best_to_keep": 1}
    return JobSpec.model_validate({**base, **kw})


def shard(*gens: tuple[str | None, list[str]]) -> GeneratedShard:
    out = []
    for row, (truth, texts) in enumerate(gens):
        prompt = Prompt(id=f"id{row}", row=row, source="t", messages=[Message(role="user", content=f"q{row}")],
                        ground_truth=truth)
        out.append(Generation(prompt=prompt, candidates=[Candidate(text=t, tokens=1, finish_reason="stop")
                                                         for t in texts]))
    return GeneratedShard(job_id="j", index=0, generations=out)


def test_plugin_orm_scores_distinct_texts_once_in_one_call(tmp_path):
    path, name = plugin(tmp_path)
    scorer = Scorer(spec(external_plugins=[path], orm_model=name))
    scored = scorer.score(shard(("42", ["it is 42", "it is 41", "it is 42"]), ("7", ["7", "8"])))
    module = next(m for k, m in list(sys.modules.items())
                  if k.startswith("samplefleet_plugin_") and m.__file__ == path)
    assert module.CALLS == [4]  # 2 + 2 distinct candidates, one call for the whole shard
    assert [c.scores.orm for c in scored.generations[0].candidates] == [1.0, 0.0, 1.0]
    rows, dropped = shard_rows(scorer.spec, scored)
    assert [(r.messages[-1].content, r.rejected_response) for r in rows] == [("it is 42", "it is 41"), ("7", "8")]


def test_step_prm_keeps_steps_and_uses_their_minimum(tmp_path):
    path, name = plugin(tmp_path)
    scored = Scorer(spec(external_plugins=[path], prm_model=f"{name}_prm", write_scores=True)).score(
        shard((None, ["abcd", "ab"])))
    first = scored.generations[0].candidates[0].scores
    assert first.prm_steps == [0.4, 0.9] and first.prm == 0.4


def test_missing_ground_truth_is_unscorable_and_the_shard_goes_on(tmp_path):
    path, name = plugin(tmp_path)
    s = spec(external_plugins=[path], orm_model=name)
    scored = Scorer(s).score(shard((None, ["a", "b"]), ("b", ["a", "b"])))
    rows, dropped = shard_rows(s, scored)
    assert dropped == {0: "unscorable: no reference answer for the reward model"}
    assert [r.messages[-1].content for r in rows] == ["b"]


def test_include_ground_truth_adds_the_reference_as_a_candidate(tmp_path):
    path, name = plugin(tmp_path)
    s = spec(external_plugins=[path], orm_model=name, include_ground_truth=True)
    rows, _ = shard_rows(s, Scorer(s).score(shard(("42", ["no", "nope"]))))
    assert [(r.messages[-1].content, r.rejected_response) for r in rows] == [("42", "nope")]
    rows, dropped = shard_rows(spec(external_plugins=[path], orm_model=name),
                               Scorer(spec(external_plugins=[path], orm_model=name)).score(shard(("42", ["no"]))))
    assert rows == [] and dropped


BAD_PLUGINS = [
    ("syntax error here(", "failed to import: SyntaxError"),
    ("raise RuntimeError('boom')", "failed to import: RuntimeError: boom"),
    ("from workers.scoring import orms\norms['x'] = lambda r, g: [1.0]", "register a class"),
    ("from workers.scoring import ORM, orms\nclass A(ORM):\n    def __init__(self, path):\n        pass\n"
     "    def __call__(self, r, g):\n        return []\norms['x'] = A", "no arguments; it requires path"),
    ("from workers.scoring import ORM, orms\nclass A(ORM):\n    def __call__(self):\n        return []\n"
     "orms['x'] = A", "must take the requests: (infer_requests, ground_truths"),
]


@pytest.mark.parametrize("body,message", BAD_PLUGINS, ids=[m for _, m in BAD_PLUGINS])
def test_bad_plugin_names_file_and_problem(tmp_path, body, message):
    path, _ = plugin(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        Scorer(spec(external_plugins=[path], orm_model="math"))
    assert path in str(err.value) and message in str(err.value)


def test_missing_plugin_file_and_unknown_names(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        Scorer(spec(external_plugins=[str(tmp_path / "nope.py")], orm_model="math"))
    with pytest.raises(ConfigError, match=r"--orm_model 'nope': unknown ORM; known: accuracy, .*cosine, .*toolbench"):
        Scorer(spec(orm_model="nope"))


@pytest.mark.parametrize("result,message", [("[1.0]", "returned 1 scores for 2 requests"),
                                            ("[1.0, float('nan')]", "score of request 1 is NaN"),
                                            ("[1.0, 'x']", "score of request 1 is not a number")])
def test_bad_scores_are_permanent_errors(tmp_path, result, message):
    body = ("from workers.scoring import ORM, orms\nclass A(ORM):\n    def __call__(self, r, g, **k):\n"
            f"        return {result}\norms['{{name}}'] = A")
    path, name = plugin(tmp_path, body)
    with pytest.raises(PermanentError, match=message):
        Scorer(spec(external_plugins=[path], orm_model=name)).score(shard(("1", ["a", "b"])))


def test_cache_engine_matches_ours_by_id_and_swifts_by_turns(tmp_path):
    ours = write_jsonl(tmp_path / "ours.jsonl", [
        {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": t}], "id": "id0"}
        for t in ("a", "b")])
    swift = write_jsonl(tmp_path / "swift.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "c"}], "id": "swift-md5"}])
    engine = CacheEngine([str(ours), str(swift)])
    prompts = [g.prompt for g in shard((None, []), (None, []), (None, [])).generations]
    gens = engine.generate(prompts, SamplingParams(num_return_sequences=3), seed=0)
    assert [[c.text for c in g.candidates] for g in gens] == [["a", "b"], ["c"], []]
    assert "no candidates" in gens[2].skipped
    s = spec(sampler_engine="no", cache_files=[str(ours)])
    generated = GeneratedShard(job_id="j", index=0, generations=gens)
    rows, dropped = shard_rows(s, generated)
    assert summarise(s, generated, len(rows), dropped).short == {0: 2, 1: 1}


@pytest.mark.parametrize("line,message", [('{"messages": [', "line 2: not valid JSON"),
                                          ('{"messages": [{"role": "user", "content": "q"}]}', "line 2: no candidate"),
                                          ('{"id": "x"}', "line 2: no candidate")])
def test_bad_cache_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        CacheEngine([str(path)])


def test_cache_files_need_the_no_engine_and_vice_versa():
    with pytest.raises(ValueError, match="give them with --cache_files"):
        spec(sampler_engine="no")
    with pytest.raises(ValueError, match="only with --sampler_engine no"):
        spec(cache_files=["c.jsonl"])


def test_registries_survive_loading_the_built_in_models():
    """Importing the modules behind the registries must not shadow the registries (a plugin registers later)."""
    import workers.scoring as scoring
    from workers.registry import Registry

    scoring.orms.factory("math")
    scoring.prms.factory("embedding")
    assert isinstance(scoring.orms, Registry) and isinstance(scoring.prms, Registry)
