"""The local run's counting pass in a child process, beside the model load (producer.counting, producer.submit).

Real processes throughout: the counting child is a real fork, and the end-to-end checks run `producer submit` as a
user does and read the order of its log lines: with data that takes a while to count, the model is loaded before
the count is in; with data that fails at once, no model loads at all.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_producer, write_jsonl
from producer.counting import count_aside
from producer.datasets import PromptStream
from schemas import DatasetSpec, JobSpec
from schemas.errors import DataError

BIG = 100_000  # rows: a few seconds of counting, so the count is surely still under way when the load starts


def _spec(path: Path, **kw) -> JobSpec:
    return JobSpec(model="m", datasets=[DatasetSpec(source=str(path))], output_file="o.jsonl", **kw)


def _big(tmp_path: Path) -> Path:
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for k in range(BIG):
            fh.write(json.dumps({"query": f"What is {k}+1?", "response": str(k + 1)}) + "\n")
    return path


def test_same_count_and_bad_rows_as_in_process(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"query": "a"}, {"bogus": 1}, {"query": "b"}, {"query": ""}])
    stream = PromptStream(_spec(path, skip_bad_rows=True))
    with count_aside(stream) as counting:
        total, bad = counting.result()
        assert counting.finished(0) and counting.result() == (total, bad)  # asked again: the same, no second pass
    assert (total, bad) == (stream.count(), stream.bad_rows) and total == 2 and len(bad) == 2


def test_a_bad_row_is_raised_in_the_parent_naming_the_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"query": "a"}, {"bogus": 1}])
    with count_aside(PromptStream(_spec(path))) as counting, pytest.raises(DataError, match=r"d\.jsonl line 2"):
        counting.result()


def test_the_parent_is_free_while_the_child_counts(tmp_path):
    stream = PromptStream(_spec(_big(tmp_path)))
    with count_aside(stream) as counting:
        assert counting.child is not None and counting.child.is_alive()
        assert not counting.finished(0)  # the parent goes on (loading models, in a run) while the child reads
        assert counting.result() == (BIG, [])
    assert not counting.child.is_alive()


def test_leaving_early_stops_the_child(tmp_path):
    with count_aside(PromptStream(_spec(_big(tmp_path)))) as counting:
        child = counting.child
    assert not child.is_alive()  # a run that fails during its model load does not wait for a long count


@pytest.mark.model
def test_the_model_loads_while_the_data_is_counted(tmp_path, model_path):
    done = run_producer(str(_big(tmp_path)), "--model", model_path, "--num_return_sequences", "1", "--max_new_tokens",
                        "1", "--data_range", "0", str(BIG // 4), "--output_dir", str(tmp_path / "out"),
                        "--output_file", "o.jsonl", "--log_level", "INFO", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = done.stderr
    loading, counted = log.find("workers.dtypes"), log.find(f"{BIG} prompts (4 in this part)")
    assert 0 <= loading < counted, log[-3000:]
    manifest = json.loads((tmp_path / "out" / "o.manifest.json").read_text())
    assert manifest["counts"]["planned_prompts"] == manifest["counts"]["prompts"] == 4


def test_data_that_fails_at_once_fails_before_any_model_loads(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"bogus": 1}, {"query": "a"}])
    done = run_producer(str(path), "--model", "smollm2-135m-instruct", "--output_dir", str(tmp_path / "out"),
                        "--output_file", "o.jsonl", "--log_level", "INFO", cwd=tmp_path)
    assert done.returncode != 0 and "line 1" in done.stderr and "workers.dtypes" not in done.stderr
    assert not (tmp_path / "out").exists()
