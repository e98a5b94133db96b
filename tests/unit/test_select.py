"""The selection rule on hand-built scored candidates (no model): swift's rule, minus swift's faults."""
from __future__ import annotations

import pytest

from schemas import Candidate, GeneratedShard, Generation, JobSpec, Message, Prompt, Scores
from workers.aggregate import choose, shard_rows, summarise


def spec(**kw) -> JobSpec:
    base = {"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl", "orm_model": "math",
            "sampling": {"num_return_sequences": 4}, "n_best_to_keep": 2}
    return JobSpec.model_validate({**base, **kw})


def gen(*scored: tuple[str, float | None, float | None], truth: str | None = "42", row: int = 0) -> Generation:
    prompt = Prompt(id="p", row=row, source="t", messages=[Message(role="user", content="q")], ground_truth=truth,
                    extra={"level": 1})
    return Generation(prompt=prompt, candidates=[
        Candidate(text=t, tokens=1, finish_reason="stop", scores=Scores(orm=o, prm=p)) for t, o, p in scored])


def texts(rows) -> list[str]:
    return [r.messages[-1].content for r in rows]


def test_without_reward_models_every_candidate_is_a_row():
    rows, reason = choose(spec(orm_model=None), gen(("a", None, None), ("b", None, None), ("a", None, None)))
    assert texts(rows) == ["a", "b", "a"] and reason is None
    assert all(r.rejected_response is None for r in rows)


def test_orm_passers_ranked_first_and_rejected_is_an_orm_failure():
    rows, _ = choose(spec(), gen(("wrong1", 0.0, None), ("right1", 1.0, None), ("wrong2", 0.0, None),
                                 ("right2", 1.0, None)))
    assert texts(rows) == ["right1", "right2"]
    assert {r.rejected_response for r in rows} == {"wrong2"}  # lowest ranked failing one (ties: last)


def test_n_best_caps_rows_and_prm_orders_them():
    s = spec(orm_model=None, prm_model="embedding", n_best_to_keep=2)
    rows, _ = choose(s, gen(("c", None, 0.3), ("a", None, 0.9), ("b", None, 0.5), ("d", None, 0.1)))
    assert texts(rows) == ["a", "b"] and rows[0].rejected_response == "d"


def test_prm_threshold_filters_and_orm_weighs_ten_times():
    s = spec(prm_model="embedding", prm_threshold=0.2, n_best_to_keep=3)
    rows, _ = choose(s, gen(("orm-ok-low-prm", 1.0, 0.25), ("orm-ok-high-prm", 1.0, 0.9), ("orm-bad", 0.0, 0.99),
                            ("below-threshold", 1.0, 0.1)))
    assert texts(rows) == ["orm-ok-high-prm", "orm-ok-low-prm"]
    assert rows[0].rejected_response == "orm-bad"


def test_no_passing_candidate_is_dropped_with_reason():
    rows, reason = choose(spec(), gen(("x", 0.0, None), ("y", 0.0, None)))
    assert rows == [] and "no candidate passed" in reason


def test_identical_candidates_count_once():
    rows, _ = choose(spec(n_best_to_keep=3), gen(("same", 1.0, None), ("same", 1.0, None), ("same", 1.0, None),
                                                 ("other", 0.0, None)))
    assert texts(rows) == ["same"] and rows[0].rejected_response == "other"


def test_single_distinct_candidate_makes_no_pair():
    rows, reason = choose(spec(), gen(("only", 1.0, None), ("only", 1.0, None)))
    assert rows == [] and "single distinct" in reason


def test_all_correct_rejects_the_lowest_ranked():
    s = spec(prm_model="embedding", n_best_to_keep=4)
    rows, _ = choose(s, gen(("a", 1.0, 0.9), ("b", 1.0, 0.5), ("c", 1.0, 0.7)))
    assert texts(rows) == ["a", "c"] and rows[0].rejected_response == "b"


@pytest.mark.parametrize("threshold,dropped", [(0.5, True), (0.75, False)])
def test_easy_query_threshold(threshold, dropped):
    g = gen(("r1", 1.0, None), ("r2", 1.0, None), ("w1", 0.0, None), ("w2", 0.0, None))
    rows, reason = choose(spec(easy_query_threshold=threshold), g)
    assert (rows == []) is dropped and (reason is not None and "too easy" in reason) is dropped


def test_unscored_prompt_is_reported_unscorable():
    g = gen(("a", 1.0, None)).model_copy(update={"candidates": [Candidate(text="a", tokens=1, finish_reason="stop")]})
    rows, reason = choose(spec(), g)
    assert rows == [] and "unscorable" in reason


def test_reference_candidate_does_not_count_for_easiness():
    g = gen(("r", 1.0, None), ("w1", 0.0, None), ("w2", 0.0, None))
    ref = Candidate(text="42", tokens=0, finish_reason="stop", reference=True, scores=Scores(orm=1.0))
    rows, reason = choose(spec(easy_query_threshold=0.5), g.model_copy(update={"candidates": [*g.candidates, ref]}))
    assert reason is None and texts(rows) == ["r", "42"]


def test_rows_keep_columns_id_and_optionally_scores():
    rows, _ = choose(spec(write_scores=True), gen(("right", 1.0, None), ("wrong", 0.0, None)))
    line = rows[0].to_json_line()
    assert '"rejected_response": "wrong"' in line and '"level": 1' in line and '"scores": {"orm": 1.0' in line
    rows, _ = choose(spec(), gen(("right", 1.0, None), ("wrong", 0.0, None)))
    assert "scores" not in rows[0].to_json_line()


def test_shard_summary_reports_dropped_and_short():
    shard = GeneratedShard(job_id="j", index=0, generations=[
        gen(("a", 1.0, None), ("b", 0.0, None), row=0), gen(("x", 0.0, None), row=1)])
    s = spec()
    rows, dropped = shard_rows(s, shard)
    summary = summarise(s, shard, len(rows), dropped)
    # named by file, line and id in the manifest
    assert summary.rows == 1 and summary.dropped == {1: "t (id p): no candidate passed the reward model(s)"}
    assert summary.short == {0: 2, 1: 1}
