"""producer.datasets: the --dataset grammar, #N sampling, seeded shuffle, --data_range parts, bad rows, file types;
plus producer.submit.cut_shards / job_id."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import write_jsonl

from producer.datasets import PromptStream
from producer.submit import cut_shards, job_id
from schemas import DatasetSpec, JobSpec, SamplingParams
from schemas.errors import DataError


def qa_rows(n: int, tag: str = "q") -> list[dict]:
    return [{"query": f"{tag}{i}", "response": str(i)} for i in range(n)]


@pytest.fixture
def ten(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "ten.jsonl", qa_rows(10))


def job(*datasets: str | Path, **kw) -> JobSpec:
    return JobSpec(model="m", output_file="x.jsonl", datasets=[DatasetSpec.parse(str(d)) for d in datasets], **kw)


def queries(spec: JobSpec) -> list[str]:
    """The job's prompts (whole job, or its --data_range part) by their user text."""
    stream = PromptStream(spec)
    return [p.messages[-1].content for p in stream.iterate(stream.count())]


FILE_ORDER = [f"q{i}" for i in range(10)]


# --- DatasetSpec.parse ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, source, subset, n", [
    ("data.jsonl", "data.jsonl", None, None),
    ("data.jsonl#5", "data.jsonl", None, 5),
    ("dir/data.jsonl#12", "dir/data.jsonl", None, 12),
    ("id:subset#3", "id", "subset", 3),
    ("org/name:subset", "org/name", "subset", None),
    ("org/name", "org/name", None, None),
])
def test_parse(text, source, subset, n):
    assert DatasetSpec.parse(text) == DatasetSpec(source=source, subset=subset, n=n)


@pytest.mark.parametrize("text", ["data.jsonl#abc", "data.jsonl#0", "data.jsonl#-1", "data.jsonl#", "#5",
                                  "data.jsonl#1.5"])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="dataset"):
        DatasetSpec.parse(text)


def test_parse_keeps_colon_of_existing_path(tmp_path):
    path = write_jsonl(tmp_path / "a:b.jsonl", qa_rows(1))
    assert DatasetSpec.parse(f"{path}#2") == DatasetSpec(source=str(path), subset=None, n=2)


@pytest.mark.parametrize("text", ["data.jsonl", "data.jsonl#5", "id:subset#3"])
def test_str_round_trips(text):
    assert str(DatasetSpec.parse(text)) == text


# --- #N sampling ----------------------------------------------------------------------------------------------

def test_whole_dataset_each_row_once(ten):
    assert sorted(queries(job(ten))) == sorted(FILE_ORDER)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n", [1, 4, 9, 10])
def test_n_up_to_size_picks_distinct_rows(ten, n, shuffle):
    got = queries(job(f"{ten}#{n}", dataset_shuffle=shuffle))
    assert len(got) == n == len(set(got))
    assert set(got) <= set(FILE_ORDER)


def test_n_below_size_without_shuffle_keeps_file_order(ten):
    got = queries(job(f"{ten}#4", dataset_shuffle=False))
    assert got == sorted(got, key=FILE_ORDER.index)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n, low, high", [(25, 2, 3), (20, 2, 2), (13, 1, 2)])
def test_n_above_size_repeats_every_row_and_tops_up(ten, n, low, high, shuffle):
    counts = Counter(queries(job(f"{ten}#{n}", dataset_shuffle=shuffle)))
    assert sum(counts.values()) == n
    assert set(counts) == set(FILE_ORDER)
    assert all(low <= c <= high for c in counts.values())


def test_n_sample_depends_on_seed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(50))
    def pick(seed: int) -> list[str]:
        return queries(job(f"{path}#5", dataset_shuffle=False, data_seed=seed))

    assert pick(1) == pick(1)
    assert pick(1) != pick(2)


# --- shuffle --------------------------------------------------------------------------------------------------

def test_no_shuffle_keeps_file_order(ten):
    assert queries(job(ten, dataset_shuffle=False)) == FILE_ORDER


def test_same_seed_same_order(ten):
    assert queries(job(ten, data_seed=7)) == queries(job(ten, data_seed=7))


def test_different_seed_different_order(ten):
    assert queries(job(ten, data_seed=7)) != queries(job(ten, data_seed=8))


def test_shuffle_changes_file_order(ten):
    got = queries(job(ten))
    assert got != FILE_ORDER and sorted(got) == sorted(FILE_ORDER)


@pytest.mark.parametrize("buffer", [1, 3, 10, 100])
def test_small_shuffle_buffer_still_yields_every_row_once(ten, buffer):
    assert sorted(queries(job(ten, shuffle_buffer=buffer))) == sorted(FILE_ORDER)


def test_rows_numbered_in_job_order(ten):
    stream = PromptStream(job(ten))
    assert [p.row for p in stream.iterate(stream.count())] == list(range(10))


def test_stream_can_be_iterated_twice_with_same_result(ten):
    stream = PromptStream(job(f"{ten}#7"))
    first = [p.model_dump() for p in stream.iterate(stream.count())]
    assert first == [p.model_dump() for p in stream.iterate(stream.count())]


# --- several datasets -----------------------------------------------------------------------------------------

def test_datasets_chained_in_order(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows(3, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(2, "b"))
    assert queries(job(a, b, dataset_shuffle=False)) == ["a0", "a1", "a2", "b0", "b1"]


def test_datasets_chained_each_with_own_n(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows(3, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(10, "b"))
    got = Counter(q[0] for q in queries(job(f"{a}#5", f"{b}#4")))
    assert got == {"a": 5, "b": 4}


def test_system_option_applied_to_stream(ten):
    stream = PromptStream(job(ten, system="SYS"))
    assert all(p.messages[0].content == "SYS" for p in stream.iterate(stream.count()))


# --- --data_range -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total, parts", [(10, 3), (10, 4), (10, 1), (7, 7), (3, 5)])
def test_data_range_parts_cover_every_prompt_once(tmp_path, total, parts):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(total))
    whole = queries(job(path))
    pieces = [queries(job(path, data_range=(i, parts))) for i in range(parts)]
    assert [q for piece in pieces for q in piece] == whole
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_data_range_rows_renumbered_from_zero(ten):
    stream = PromptStream(job(ten, data_range=(2, 3)))
    assert [p.row for p in stream.iterate(stream.count())] == [0, 1, 2, 3]


# --- bad input ------------------------------------------------------------------------------------------------

@pytest.fixture
def with_bad_line(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q0"}\n{"query": "q1"}\n{"query": oops}\n{"query": "q3"}\n', encoding="utf-8")
    return path


def test_malformed_line_names_file_and_line(with_bad_line):
    with pytest.raises(DataError, match=r"bad\.jsonl line 3") as err:
        queries(job(with_bad_line))
    assert "not valid JSON" in str(err.value)


def test_bad_row_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"query": "q0"}, {"text": "no prompt"}])
    with pytest.raises(DataError, match=r"rows\.jsonl line 2"):
        queries(job(path))


def test_skip_bad_rows_skips_and_records(with_bad_line, tmp_path):
    spec = job(with_bad_line, skip_bad_rows=True, dataset_shuffle=False)
    stream = PromptStream(spec)
    assert stream.count() == 3
    assert len(stream.bad_rows) == 1 and "line 3" in stream.bad_rows[0]
    assert [p.messages[-1].content for p in stream.iterate(3)] == ["q0", "q1", "q3"]
    assert [p.row for p in stream.iterate(3)] == [0, 1, 2]


def test_skip_bad_rows_also_skips_rows_that_are_not_prompts(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"query": "q0"}, {"text": "x"}, {"messages": []}, {"query": "q3"}])
    stream = PromptStream(job(path, skip_bad_rows=True))
    assert stream.count() == 2
    assert len(stream.bad_rows) == 2


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text('{"query": "q0"}\n\n   \n{"query": "q1"}\n', encoding="utf-8")
    assert queries(job(path, dataset_shuffle=False)) == ["q0", "q1"]


def test_missing_jsonl_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        queries(job(tmp_path / "missing.jsonl"))


def test_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        queries(job(tmp_path))


def test_empty_file_with_n(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        queries(job(f"{path}#3"))


# --- other file types (through the datasets library) ------------------------------------------------------------

@pytest.fixture
def hf_datasets(monkeypatch):
    """The datasets library, kept from importing torch (its streaming datasets do so whenever torch is installed,
    which costs seconds and is not what these tests are about)."""
    import datasets

    monkeypatch.setattr(datasets.config, "TORCH_AVAILABLE", False)
    return datasets


def write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def write_csv(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa.table(columns), path)
    return path


def test_csv_file(tmp_path, hf_datasets):
    path = write_csv(tmp_path / "d.csv", {"query": ["q0", "q1", "q2"], "response": ["a", "b", "c"]})
    stream = PromptStream(job(path, dataset_shuffle=False))
    got = list(stream.iterate(stream.count()))
    assert [(p.messages[-1].content, p.ground_truth) for p in got] == [("q0", "a"), ("q1", "b"), ("q2", "c")]
    assert got[0].source == f"{path} row 1"


def test_parquet_file_with_n_and_extra_columns(tmp_path, hf_datasets):
    path = write_parquet(tmp_path / "d.parquet", {"problem": [f"p{i}" for i in range(6)],
                                                  "answer": [str(i) for i in range(6)], "level": list(range(6))})
    stream = PromptStream(job(f"{path}#4", dataset_shuffle=False))
    got = list(stream.iterate(stream.count()))
    assert len(got) == 4 == len({p.id for p in got})
    assert all(p.ground_truth == p.messages[-1].content[1:] == str(p.extra["level"]) for p in got)


def test_parquet_messages_column(tmp_path, hf_datasets):
    path = write_parquet(tmp_path / "m.parquet", {"messages": [[{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "yo"}]]})
    (prompt,) = PromptStream(job(path)).iterate(1)
    assert [m.content for m in prompt.messages] == ["hi"] and prompt.ground_truth == "yo"


def test_csv_with_numeric_answers(tmp_path, hf_datasets):
    path = write_csv(tmp_path / "n.csv", {"query": ["What is 2+3?", "What is 1+1?"], "response": [5, 2]})
    stream = PromptStream(job(path, dataset_shuffle=False))
    assert [p.ground_truth for p in stream.iterate(stream.count())] == ["5", "2"]


def test_unknown_file_type(tmp_path, hf_datasets):
    path = tmp_path / "d.xyz"
    path.write_text("whatever", encoding="utf-8")
    with pytest.raises(DataError, match="unknown file type"):
        queries(job(path))


@pytest.mark.parametrize("name", ["some-org/no-such-dataset", "some-org/no-such-dataset:sub#3", "missing.csv"])
def test_hub_id_or_missing_non_jsonl_file_is_data_error(name, hf_datasets):
    with pytest.raises(DataError, match="hub id"):
        queries(job(name))


# --- cut_shards / job_id ----------------------------------------------------------------------------------------

def _prompts(tmp_path: Path, n: int):
    path = write_jsonl(tmp_path / "p.jsonl", qa_rows(n))
    stream = PromptStream(job(path, dataset_shuffle=False))
    return list(stream.iterate(stream.count()))


@pytest.mark.parametrize("n, size, sizes", [(10, 3, [3, 3, 3, 1]), (9, 3, [3, 3, 3]), (2, 5, [2]), (4, 1, [1] * 4)])
def test_cut_shards_keeps_remainder(tmp_path, n, size, sizes):
    prompts = _prompts(tmp_path, n)
    shards = list(cut_shards(prompts, "job-1", size))
    assert [len(s.prompts) for s in shards] == sizes
    assert [s.index for s in shards] == list(range(len(sizes)))
    assert {s.job_id for s in shards} == {"job-1"}
    assert [p for s in shards for p in s.prompts] == prompts


def test_cut_shards_of_nothing():
    assert list(cut_shards([], "j", 3)) == []


def test_job_id_stable_and_option_sensitive():
    base = job("d.jsonl")
    assert job_id(base) == job_id(job("d.jsonl"))
    assert job_id(base) == job_id(job("d.jsonl", resume=True, override_exist_file=True))
    assert job_id(base) != job_id(job("d.jsonl", data_seed=1))
    assert job_id(base) != job_id(job("d.jsonl", sampling=SamplingParams(seed=1)))
