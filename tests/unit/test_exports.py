"""--output_format: TRL's preference, unpaired (KTO) and stepwise-supervision rows, checked with TRL's own utilities."""
from __future__ import annotations

import json

import pytest

from conftest import read_jsonl, run_producer, write_jsonl
from schemas import Candidate, GeneratedShard, Generation, JobSpec, Prompt, Scores
from workers.aggregate import shard_rows

trl_data = pytest.importorskip("trl.data_utils", reason="trl (the test extra) is not installed")

SIMULATED = ["--model", "x", "--sampler_engine", "simulated", "--engine_kwargs", '{"shard_seconds": 0}',
             "--num_return_sequences", "6", "--max_new_tokens", "40", "--n_best_to_keep", "2"]
# passes the simulated engine's samples 0-2 ("simulated answer 0 to ...")
FORMAT_ORM = ["--orm_model", "format", "--orm_kwargs", json.dumps({"pattern": "answer [0-2] "})]
STEP_PRM = '''
from workers.scoring import PRM, prms


class Steps(PRM):
    """One score per blank-line step: 0.9, then 0.1 for a step that says 'wrong'."""

    needs_ground_truth = False

    def __call__(self, infer_requests, ground_truths, **kwargs):
        return [[0.1 if "wrong" in s else 0.9 for s in r.response.split("\\n\\n") if s.strip()] for r in infer_requests]


prms["steps"] = Steps
'''


def _spec(**extra) -> JobSpec:
    return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                   "sampling": {"num_return_sequences": 4}, "n_best_to_keep": 2, **extra})


def _shard(scored: list[tuple[str, Scores]]) -> GeneratedShard:
    prompt = Prompt(id="p1", row=0, source="t", messages=[{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "2+2?"}])
    cands = [Candidate(text=t, tokens=2, finish_reason="stop", scores=s) for t, s in scored]
    return GeneratedShard(job_id="j", index=0, generations=[Generation(prompt=prompt, candidates=cands)])


def _lines(spec: JobSpec, shard: GeneratedShard) -> tuple[list[dict], dict[int, str]]:
    rows, dropped = shard_rows(spec, shard)
    return [json.loads(r.to_json_line()) for r in rows], dropped


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def test_preference_pairs_only_a_passing_chosen_with_a_failing_rejected(tokenizer):
    spec = _spec(orm_model="accuracy", output_format="trl_preference")
    lines, dropped = _lines(spec, _shard([("4", Scores(orm=1.0)), ("four", Scores(orm=1.0)), ("5", Scores(orm=0.0))]))
    assert [(x["chosen"][0]["content"], x["rejected"][0]["content"]) for x in lines] == [("4", "5"), ("four", "5")]
    assert not dropped
    for line in lines:
        assert trl_data.is_conversational(line)
        text = trl_data.maybe_apply_chat_template(line, tokenizer)
        assert set(text) == {"prompt", "chosen", "rejected"} and "2+2?" in text["prompt"]
        assert text["chosen"].startswith(line["chosen"][0]["content"]) and "Be brief." in text["prompt"]
    # all pass: swift would pair two correct answers; no pair here, and the reason is recorded
    lines, dropped = _lines(spec, _shard([("4", Scores(orm=1.0)), ("four", Scores(orm=1.0))]))
    assert lines == [] and dropped == {0: "no preference pair: no ORM-failing candidate"}


def test_preference_with_a_prm_only_needs_the_margin():
    spec = _spec(prm_model="steps", output_format="trl_preference", pair_margin=0.3)
    lines, _ = _lines(spec, _shard([("a", Scores(prm=0.9)), ("b", Scores(prm=0.7)), ("c", Scores(prm=0.5))]))
    assert all(x["rejected"][0]["content"] == "c" for x in lines)
    assert [x["chosen"][0]["content"] for x in lines] == ["a"]  # 0.7 - 0.5 < 0.3


def test_kto_labels_passing_true_and_failing_false_and_trl_unpairs_the_same_way(tokenizer):
    from datasets import Dataset

    spec = _spec(orm_model="accuracy", output_format="trl_kto")
    lines, _ = _lines(spec, _shard([("4", Scores(orm=1.0)), ("5", Scores(orm=0.0)), ("6", Scores(orm=0.0))]))
    assert [(x["completion"][0]["content"], x["label"]) for x in lines] == [("4", True), ("6", False), ("5", False)]
    for line in lines:
        assert trl_data.is_conversational(line)
        assert set(trl_data.maybe_apply_chat_template(line, tokenizer)) == {"prompt", "completion", "label"}
    # TRL's own unpairing of our preference pair gives the same kind of rows as our KTO export
    pref, _ = _lines(_spec(orm_model="accuracy", output_format="trl_preference"),
                     _shard([("4", Scores(orm=1.0)), ("5", Scores(orm=0.0))]))
    unpaired = trl_data.maybe_unpair_preference_dataset(Dataset.from_list(pref)).to_list()
    assert {(u["completion"][0]["content"], u["label"]) for u in unpaired} == {("4", True), ("5", False)}
    assert set(unpaired[0]) - {"id"} == set(lines[0]) - {"id"}
    # none passing: KTO still gets the failing ones, labelled false
    lines, dropped = _lines(spec, _shard([("5", Scores(orm=0.0)), ("6", Scores(orm=0.0))]))
    assert [x["label"] for x in lines] == [False, False] and not dropped


def test_stepwise_rows_label_each_step_by_the_threshold():
    from datasets import Dataset

    spec = _spec(prm_model="steps", output_format="trl_stepwise", prm_threshold=0.5)
    text_ok, text_bad = "2+2 is 4.\n\nSo 4.", "2+2 is 5, wrong.\n\nSo 5."
    lines, _ = _lines(spec, _shard([(text_ok, Scores(prm=0.9, prm_steps=[0.9, 0.9])),
                                    (text_bad, Scores(prm=0.1, prm_steps=[0.1, 0.9]))]))
    assert lines[0] == {"prompt": "2+2?", "completions": ["2+2 is 4.", "So 4."], "labels": [True, True], "id": "p1"}
    assert lines[1]["labels"] == [False, True]
    ds = Dataset.from_list(lines)  # TRL's stepwise-supervision type: prompt str, completions [str], labels [bool]
    assert not trl_data.is_conversational(lines[0])
    assert str(ds.features["completions"].feature.dtype) == "string"
    assert str(ds.features["labels"].feature.dtype) == "bool"


def test_exports_need_the_reward_models_they_read():
    with pytest.raises(ValueError, match="trl_preference makes pairs"):
        _spec(output_format="trl_preference")
    with pytest.raises(ValueError, match="trl_stepwise needs a step PRM"):
        _spec(orm_model="math", output_format="trl_stepwise")


@pytest.mark.parametrize("fmt", ["trl_preference", "trl_kto", "trl_stepwise"])
def test_a_run_writes_the_format_that_trl_reads(tmp_path, fmt, tokenizer):
    """A real run (simulated engine, real scorers and plugin loading), read back with datasets and TRL."""
    from datasets import load_dataset

    (tmp_path / "steps.py").write_text(STEP_PRM)
    data = write_jsonl(tmp_path / "q.jsonl", [{"query": f"question {i}"} for i in range(3)])
    rms = (["--prm_model", "steps", "--external_plugins", "steps.py"] if fmt == "trl_stepwise" else FORMAT_ORM)
    proc = run_producer(str(data), *SIMULATED, *rms, "--output_format", fmt, "--output_file", "out.jsonl",
                        cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp_path / "sample_output" / "out.jsonl"
    rows = read_jsonl(path)
    ds = load_dataset("json", data_files=str(path), split="train")
    assert len(ds) == len(rows) > 0
    if fmt == "trl_stepwise":
        assert set(ds.column_names) == {"prompt", "completions", "labels", "id"}
        return
    for row in ds:
        assert trl_data.is_conversational(row)
        trl_data.maybe_apply_chat_template({k: v for k, v in row.items() if k != "id"}, tokenizer)
    if fmt == "trl_preference":
        assert len(rows) == 3 * 2 and all("answer 0 " in r["chosen"][0]["content"] or "answer 1 " in
                                          r["chosen"][0]["content"] for r in rows)
