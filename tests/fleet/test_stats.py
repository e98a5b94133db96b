"""Per-prompt statistics: unbiased pass@k, majority vote, distinct answers, the stats file and the manifest means."""
from __future__ import annotations

import itertools
import json
import math

import pytest

from conftest import read_jsonl, run_producer, write_jsonl
from kits.fleet import run_cli
from schemas import Candidate, Generation, JobSpec, Prompt, Scores
from workers.stats import answer_key, dataset_stats, pass_at_k, prompt_stats

# The simulated engine's candidates read "simulated answer {i} to ...": this pattern passes samples 0-2.
SIMULATED = ["--model", "x", "--sampler_engine", "simulated", "--engine_kwargs", '{"shard_seconds": 0}',
             "--num_return_sequences", "6", "--max_new_tokens", "40", "--shard_size", "3", "--orm_model", "format",
             "--orm_kwargs", json.dumps({"pattern": "answer [0-2] "})]


def _spec(**extra) -> JobSpec:
    return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                   "orm_model": "math", **extra})


def _gen(texts_scores: list[tuple[str, float]]) -> Generation:
    prompt = Prompt(id="p", row=0, source="t", messages=[{"role": "user", "content": "q"}], ground_truth="1/2")
    return Generation(prompt=prompt, candidates=[Candidate(text=t, tokens=3, finish_reason="stop",
                                                           scores=Scores(orm=s)) for t, s in texts_scores])


def test_pass_at_k_is_the_unbiased_estimator():
    """Against its definition: the share of k-subsets of the n samples that hold at least one correct one."""
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert math.isclose(pass_at_k(n, c, k), expected, abs_tol=1e-12), (n, c, k)


def test_default_ks_are_one_n_and_the_powers_of_two_between():
    assert _spec(sampling={"num_return_sequences": 12}).stats_ks == [1, 2, 4, 8, 12]
    assert _spec(sampling={"num_return_sequences": 1}).stats_ks == [1]
    assert _spec(sampling={"num_return_sequences": 8}, pass_at_k=[4, 1]).stats_ks == [1, 4]
    with pytest.raises(ValueError, match="--pass_at_k"):
        _spec(sampling={"num_return_sequences": 4}, pass_at_k=[8])


def test_majority_vote_compares_answers_as_the_math_orm_does():
    """0.5, 1/2 and \\frac{1}{2} are one (passing) answer; 3 and 3.0 are one wrong answer; a tie is shared."""
    spec = _spec(sampling={"num_return_sequences": 6})
    key = answer_key(spec)
    assert key(r"so \boxed{0.5}") == key(r"\boxed{1/2}") == key(r"\boxed{\frac{1}{2}}") == "1/2"
    assert key(r"\boxed{3.0}") == key(r"\boxed{ 3 }") and key("no answer here") is None
    gen = _gen([(r"\boxed{0.5}", 1.0), (r"\boxed{\frac{1}{2}}", 1.0), (r"\boxed{3}", 0.0), (r"\boxed{3.0}", 0.0),
                (r"\boxed{3}", 0.0), ("rambling", 0.0)])
    stats = prompt_stats(spec, gen)
    assert (stats.samples, stats.correct, stats.distinct_answers, stats.maj_at_n) == (6, 2, 2, 0.0)
    assert stats.pass_at_k == {1: round(2 / 6, 6), 2: 0.6, 4: round(1 - 1 / 15, 6), 6: 1.0}
    tie = prompt_stats(spec, _gen([(r"\boxed{0.5}", 1.0), (r"\boxed{7}", 0.0)]))
    assert tie.maj_at_n == 0.5 and tie.distinct_answers == 2


def test_several_orms_pass_only_together_and_unscored_prompts_have_no_counts():
    spec = _spec(orm_model="math,format", sampling={"num_return_sequences": 2})
    both = Scores(orm=0.5, orms={"math": 1.0, "format": 0.0})
    assert not both.orm_pass and Scores(orm=1.0, orms={"math": 1.0, "format": 1.0}).orm_pass
    prompt = Prompt(id="p", row=0, source="t", messages=[{"role": "user", "content": "q"}])
    unscored = prompt_stats(spec, Generation(prompt=prompt, candidates=[
        Candidate(text="a", tokens=1, finish_reason="stop")]))
    assert unscored.correct is None and unscored.pass_at_k == {} and unscored.samples == 1


def test_dataset_means_carry_a_seeded_bootstrap_interval():
    spec = _spec(sampling={"num_return_sequences": 4})
    lines = [prompt_stats(spec, _gen([(r"\boxed{1/2}", float(i < c)) for i in range(4)])) for c in (0, 1, 2, 4, 4)]
    out = dataset_stats(spec, lines)
    assert out["mean"]["pass_rate"] == round((0 + 0.25 + 0.5 + 1 + 1) / 5, 6)
    low, high = out["ci95"]["pass@1"]
    assert low <= out["mean"]["pass@1"] <= high and low < high
    assert dataset_stats(spec, lines) == out  # deterministic with the job's seed


def test_local_and_fleet_runs_give_the_same_stats_file(tmp_path, redis_server, workers):
    """The stats lines are made in the aggregate step: the in-process run and a real fleet write the same bytes
    (with two ORMs, so the fleet's checks and scorer take the comma-separated names too)."""
    data = write_jsonl(tmp_path / "q.jsonl", [{"query": f"question {i}"} for i in range(7)])
    job = [*SIMULATED[:-4], "--orm_model", "format,length",  # length passes these short texts: format decides
           "--orm_kwargs", json.dumps({"format": {"pattern": "answer [0-2] "}}), "--write_scores", "true"]
    workers.start()
    local = run_producer(str(data), *job, "--output_file", "local.jsonl", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    fleet = run_cli("submit", str(data), *job, "--output_file", "fleet.jsonl", "--wait", "--no_progress",
                    broker=redis_server.url, cwd=tmp_path)
    assert fleet.returncode == 0, fleet.stderr[-2000:] + fleet.stdout
    out = tmp_path / "sample_output"
    stats = read_jsonl(out / "local.stats.jsonl")
    assert (out / "fleet.stats.jsonl").read_text() == (out / "local.stats.jsonl").read_text()
    assert len(stats) == 7
    assert set(stats[0]) == {"id", "samples", "correct", "pass_at_k", "maj_at_n", "distinct_answers"}
    assert all(s["samples"] == 6 and s["correct"] == 3 and s["pass_at_k"]["1"] == 0.5 for s in stats)
    local_m, fleet_m = (json.loads((out / f"{n}.manifest.json").read_text()) for n in ("local", "fleet"))
    assert local_m["stats"] == fleet_m["stats"] and local_m["stats"]["mean"]["pass@1"] == 0.5
    assert local_m["histograms"] == fleet_m["histograms"] and sum(local_m["histograms"]["tokens"].values()) == 42
    assert [s["candidates"] for s in local_m["shards"]] == [18, 18, 6]
    assert (out / "fleet.jsonl").read_text() == (out / "local.jsonl").read_text()
    assert set(read_jsonl(out / "fleet.jsonl")[0]["scores"]["orms"]) == {"format", "length"}


def test_no_stats_file_without_an_orm(tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"query": "question"}])
    proc = run_producer(str(data), *SIMULATED[:10], "--output_file", "plain.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "sample_output" / "plain.stats.jsonl").exists()


def test_several_orms_score_each_and_rank_by_their_weights(tmp_path):
    """--orm_model math,format: each score kept in scores.orms, orm is their weighted mean, passing needs both;
    each ORM reads its own --orm_kwargs entry."""
    from schemas import GeneratedShard
    from workers.aggregate import shard_rows
    from workers.score import Scorer

    spec = _spec(orm_model="math,format", orm_weights=[3, 1], write_scores=True, n_best_to_keep=1,
                 orm_kwargs={"math": {"timeout": 5}, "format": {"pattern": "^<answer>"}},
                 sampling={"num_return_sequences": 3})
    gen = _gen([(r"<answer>\boxed{0.5}</answer>", 0), (r"\boxed{1/2}", 0), (r"<answer>\boxed{2}</answer>", 0)])
    gen = gen.model_copy(update={"candidates": [c.model_copy(update={"scores": None}) for c in gen.candidates]})
    scorer = Scorer(spec)
    try:
        shard = scorer.score(GeneratedShard(job_id="j", index=0, generations=[gen]))
    finally:
        scorer.close()
    scores = [c.scores for c in shard.generations[0].candidates]
    assert [s.orms for s in scores] == [{"math": 1.0, "format": 1.0}, {"math": 1.0, "format": 0.0},
                                        {"math": 0.0, "format": 1.0}]
    assert [s.orm for s in scores] == [1.0, 0.75, 0.25] and [s.orm_pass for s in scores] == [True, False, False]
    rows, dropped = shard_rows(spec, shard)
    line = json.loads(rows[0].to_json_line())
    assert line["messages"][-1]["content"].startswith("<answer>") and line["scores"]["orms"]["format"] == 1.0
    assert line["rejected_response"] == r"<answer>\boxed{2}</answer>"  # fails, and ranks lowest
    assert prompt_stats(spec, shard.generations[0]).correct == 1


def test_orm_weights_and_names_are_checked():
    with pytest.raises(ValueError, match="--orm_weights: 1 weights for 2 ORMs"):
        _spec(orm_model="math,format", orm_weights=[1])
    with pytest.raises(ValueError, match="distinct names"):
        _spec(orm_model="math,math")
    from schemas.errors import ConfigError
    from workers.score import Scorer

    with pytest.raises(ConfigError, match="--orm_kwargs 'timeout': with several ORMs"):
        Scorer(_spec(orm_model="math,format", orm_kwargs={"timeout": 5}))
