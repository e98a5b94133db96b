"""workers.output.JobOutput: per-shard parts, idempotent re-writes, resume checks, final jsonl + manifest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_jsonl

from schemas import DatasetSpec, JobSpec, Message, OutputRow, SamplingParams, ShardSummary
from schemas.errors import OutputError
from workers.output import JobOutput


def spec(out: Path, **kw) -> JobSpec:
    fields = {"model": "m", "output_file": "run.jsonl", "output_dir": str(out),
              "datasets": [DatasetSpec.parse("d.jsonl")]}
    return JobSpec(**{**fields, **kw})


def rows(index: int, n: int = 2) -> list[OutputRow]:
    return [OutputRow(messages=[Message(role="user", content=f"s{index}p{k}"),
                                Message(role="assistant", content=f"answer {k}")],
                      id=f"id-{index}-{k}", extra={"shard": index}) for k in range(n)]


def summary(index: int, n: int = 2) -> ShardSummary:
    return ShardSummary(job_id="j", index=index, prompts=n, rows=n, candidates=n, tokens=10 * n, seconds=0.5)


def write(output: JobOutput, index: int, n: int = 2) -> None:
    output.write_shard(rows(index, n), summary(index, n))


def prompts_of(path: Path) -> list[str]:
    return [line["messages"][0]["content"] for line in read_jsonl(path)]


def changed_part(err: Exception) -> str:
    """The part of a resume error after the (test-named, so misleading) parts path."""
    return str(err).partition("had different")[2]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


# --- a fresh run ------------------------------------------------------------------------------------------------

def test_open_creates_parts_and_reports_nothing_done(out):
    output = JobOutput(spec(out))
    assert output.open() == set()
    assert (out / output.parts).is_dir()
    assert json.loads((out / output.parts / "job.json").read_text()) == spec(out).resume_key()


def test_shards_concatenated_in_shard_order(out):
    output = JobOutput(spec(out))
    output.open()
    for index in (2, 0, 1):  # shards finish in any order
        write(output, index)
    final = output.finalise({"rows": 6})
    assert final == str(out / "run.jsonl")
    assert prompts_of(final) == ["s0p0", "s0p1", "s1p0", "s1p1", "s2p0", "s2p1"]


def test_output_line_layout(out):
    output = JobOutput(spec(out))
    output.open()
    output.write_shard([OutputRow(messages=[Message(role="user", content="q"), Message(role="assistant", content="a")],
                                  id="abc", rejected_response="bad", extra={"level": 3})], summary(0, 1))
    (line,) = read_jsonl(output.finalise({}))
    assert list(line) == ["messages", "rejected_response", "id", "level"]
    assert line["messages"][-1] == {"role": "assistant", "content": "a"}


def test_manifest_written_and_parts_removed(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    output.finalise({"rows": 2, "config": {"model": "m"}})
    assert json.loads((out / "run.manifest.json").read_text()) == {"rows": 2, "config": {"model": "m"}}
    assert (out / output.parts).exists()  # kept until the caller has recorded the job as finished
    output.drop_parts()
    assert not (out / output.parts).exists()


def test_no_final_file_before_finalise(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    assert not (out / output.final).exists()


def test_rewriting_a_shard_overwrites_it(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0, n=3)
    write(output, 1)
    write(output, 0, n=3)  # re-delivered shard
    assert [s.index for s in output.summaries()] == [0, 1]
    assert prompts_of(output.finalise({})) == ["s0p0", "s0p1", "s0p2", "s1p0", "s1p1"]


def test_part_without_done_marker_is_not_done(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    (out / output.parts / "shard-000001.jsonl").write_text('{"partial": true}\n')
    assert [s.index for s in output.summaries()] == [0]
    assert prompts_of(output.finalise({})) == ["s0p0", "s0p1"]


# --- refusing to clobber ------------------------------------------------------------------------------------------

def test_existing_final_file_needs_override(out):
    out.mkdir()
    (out / "run.jsonl").write_text("old\n")
    with pytest.raises(OutputError, match="--override_exist_file"):
        JobOutput(spec(out)).open()
    assert (out / "run.jsonl").read_text() == "old\n"


def test_override_replaces_existing_final_file(out):
    out.mkdir()
    (out / "run.jsonl").write_text("old\n")
    output = JobOutput(spec(out, override_exist_file=True))
    output.open()
    write(output, 0)
    assert prompts_of(output.finalise({})) == ["s0p0", "s0p1"]


def test_resume_of_complete_run_is_refused(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    output.finalise({})
    output.drop_parts()
    with pytest.raises(OutputError, match="nothing to resume"):
        JobOutput(spec(out, resume=True)).open()


def test_leftover_parts_need_resume(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    with pytest.raises(OutputError, match="--resume"):
        JobOutput(spec(out)).open()


def test_override_starts_over_from_leftover_parts(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    assert JobOutput(spec(out, override_exist_file=True)).open() == set()


# --- resume -------------------------------------------------------------------------------------------------------

def test_resume_returns_done_shards(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    write(output, 2)
    resumed = JobOutput(spec(out, resume=True))
    assert resumed.open() == {0, 2}
    write(resumed, 1)
    assert prompts_of(resumed.finalise({})) == ["s0p0", "s0p1", "s1p0", "s1p1", "s2p0", "s2p1"]


def test_resume_of_fresh_output_starts_empty(out):
    assert JobOutput(spec(out, resume=True)).open() == set()


@pytest.mark.parametrize("changed, field", [
    ({"data_seed": 1}, "data_seed"),
    ({"model": "other"}, "model"),
    ({"shard_size": 5}, "shard_size"),
    ({"datasets": [DatasetSpec.parse("d.jsonl#3")]}, "datasets"),
    ({"sampling": SamplingParams(temperature=0.5)}, "temperature"),
])
def test_resume_with_other_options_names_the_field(out, changed, field):
    JobOutput(spec(out)).open()
    with pytest.raises(OutputError, match="--resume") as err:
        JobOutput(spec(out, resume=True, **changed)).open()
    assert field in changed_part(err.value)


def test_resume_with_other_seed_names_seed(out):
    JobOutput(spec(out)).open()
    with pytest.raises(OutputError) as err:
        JobOutput(spec(out, resume=True, sampling=SamplingParams(seed=1))).open()
    assert "seed" in changed_part(err.value)


def test_resume_may_change_resume_and_override_flags(out):
    output = JobOutput(spec(out))
    output.open()
    write(output, 0)
    assert JobOutput(spec(out, resume=True, override_exist_file=True)).open() == {0}


def test_resume_of_parts_without_job_json(out):
    (out / ".run.jsonl.parts").mkdir(parents=True)
    (out / ".run.jsonl.parts" / "shard-000000.jsonl").write_text("{}\n")
    with pytest.raises(OutputError):
        JobOutput(spec(out, resume=True)).open()
