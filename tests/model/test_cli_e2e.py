"""`producer submit` end to end, as a user runs it: a real process, the real model, real files."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import DIGIT_PLUGIN, OFFLINE, ROOT, read_jsonl, run_producer, write_jsonl

pytestmark = pytest.mark.model

SMALL = ["--model", "smollm2-135m-instruct", "--max_new_tokens", "16"]


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_five_prompts_five_samples_gives_25_rows(tmp_path, arithmetic):
    proc = _ok(run_producer(f"{arithmetic}", *SMALL, "--num_return_sequences", "5", "--output_file", "out.jsonl",
                            cwd=tmp_path))
    assert "Warning" not in proc.stderr, proc.stderr  # no library notices the user cannot act on
    rows = read_jsonl(tmp_path / "sample_output" / "out.jsonl")
    assert len(rows) == 25
    swift_row = lambda r: {"messages": [{"role": "user", "content": r["query"]},  # noqa: E731 - as swift holds it
                                        {"role": "assistant", "content": r["response"]}]}
    source = {hashlib.md5(json.dumps(swift_row(r), sort_keys=True).encode()).hexdigest(): r
              for r in read_jsonl(arithmetic)}
    assert Counter(r["id"] for r in rows) == {i: 5 for i in source}
    for row in rows:
        assert list(row) == ["messages", "id"]  # no rejected_response without a reward model
        user, answer = row["messages"]
        assert user == {"role": "user", "content": source[row["id"]]["query"]}
        assert answer["role"] == "assistant" and isinstance(answer["content"], str)
    manifest = json.loads((tmp_path / "sample_output" / "out.manifest.json").read_text())
    assert manifest["counts"]["rows"] == 25 and manifest["counts"]["prompts"] == 5
    assert not (tmp_path / "sample_output" / ".out.jsonl.parts").exists()


def test_swift_spelling_and_dashes_give_the_same_file_and_seed_changes_it(tmp_path, arithmetic):
    swift = ["--model", "smollm2-135m-instruct", "--sampler_engine", "pt", "--num_return_sequences", "2",
             "--max_new_tokens", "16", "--dataset", f"{arithmetic}#4", "--num_sampling_batch_size", "3"]
    dashed = ["--model", "smollm2-135m-instruct", "--sampler-engine", "transformers", "--num-return-sequences", "2",
              "--max-new-tokens", "16", f"{arithmetic}#4", "--shard-size", "3"]
    _ok(run_producer(*swift, "--output_file", "a.jsonl", cwd=tmp_path))
    _ok(run_producer(*dashed, "--output-file", "b.jsonl", cwd=tmp_path))
    _ok(run_producer(*swift, "--seed", "43", "--output_file", "c.jsonl", cwd=tmp_path))
    out = tmp_path / "sample_output"
    a, b, c = ((out / f"{x}.jsonl").read_text() for x in "abc")
    assert a == b and len(a.splitlines()) == 8
    assert a != c


def test_ten_rows_with_shard_size_three_lose_nothing(tmp_path):
    data = write_jsonl(tmp_path / "ten.jsonl", [{"messages": [{"role": "user", "content": f"Count to {i}."}],
                                                "n": i} for i in range(10)])
    _ok(run_producer(str(data), *SMALL, "--max_new_tokens", "4", "--num_return_sequences", "2", "--shard_size", "3",
                     "--output_file", "o.jsonl", cwd=tmp_path))
    rows = read_jsonl(tmp_path / "sample_output" / "o.jsonl")
    assert Counter(r["n"] for r in rows) == {i: 2 for i in range(10)}
    assert json.loads((tmp_path / "sample_output" / "o.manifest.json").read_text())["counts"]["shards"] == 4


def test_killed_run_resumes_without_missing_or_doubled_rows(tmp_path):
    rows = [{"query": f"Tell me a fact about the number {i}."} for i in range(8)]
    data = write_jsonl(tmp_path / "facts.jsonl", rows)
    args = [str(data), *SMALL, "--max_new_tokens", "12", "--num_return_sequences", "2", "--shard_size", "1"]
    _ok(run_producer(*args, "--output_dir", "whole", "--output_file", "o.jsonl", cwd=tmp_path))

    parts = tmp_path / "killed" / ".o.jsonl.parts"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "producer", "submit", "--no_progress", *args,
                             "--output_dir", "killed", "--output_file", "o.jsonl"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(parts.glob("*.done.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(list(parts.glob("*.done.json")))
    assert 3 <= done_before < 8, "the run should have been killed part way"
    assert not (tmp_path / "killed" / "o.jsonl").exists()

    refused = run_producer(*args, "--output_dir", "killed", "--output_file", "o.jsonl", cwd=tmp_path)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    _ok(run_producer(*args, "--output_dir", "killed", "--output_file", "o.jsonl", "--resume", "true", cwd=tmp_path))
    resumed = (tmp_path / "killed" / "o.jsonl").read_text()
    assert resumed == (tmp_path / "whole" / "o.jsonl").read_text()
    assert len(resumed.splitlines()) == 16


def test_existing_output_is_refused_and_kept(tmp_path, arithmetic):
    out = tmp_path / "sample_output"
    out.mkdir()
    (out / "x.jsonl").write_text("precious\n")
    proc = run_producer(str(arithmetic), *SMALL, "--output_file", "x.jsonl", cwd=tmp_path)
    assert proc.returncode != 0 and "--override_exist_file" in proc.stderr
    assert (out / "x.jsonl").read_text() == "precious\n"
    _ok(run_producer(str(arithmetic), *SMALL, "--num_return_sequences", "1", "--output_file", "x.jsonl",
                     "--override_exist_file", "true", cwd=tmp_path))
    assert len(read_jsonl(out / "x.jsonl")) == 5


def test_prompt_longer_than_context_is_recorded_not_fatal(tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", [{"query": "word " * 8300}, {"query": "Say hi."}])
    _ok(run_producer(str(data), *SMALL, "--max_new_tokens", "4", "--num_return_sequences", "1",
                     "--output_file", "o.jsonl", cwd=tmp_path))
    assert len(read_jsonl(tmp_path / "sample_output" / "o.jsonl")) == 1
    manifest = json.loads((tmp_path / "sample_output" / "o.manifest.json").read_text())
    assert manifest["counts"]["skipped_prompts"] == 1
    assert "context" in next(iter(manifest["skipped_prompts"].values()))


BAD_INPUT = [
    (["missing.jsonl"], "no such file"),
    (["{data}#abc"], "'#abc' is not a row count"),
    (["{data}#0"], "must be at least 1"),
    (["{data}", "--sampler_engine", "nope"], "--sampler_engine 'nope': unknown engine; known: client, lmdeploy, no"),
    (["{data}", "--model", "/no/such/folder"], "no such model folder"),
    (["{data}", "--num_return_sequences", "2", "--n_best_to_keep", "3"], "--n_best_to_keep 3 is greater than"),
    (["{bad}"], "bad.jsonl line 2: not valid JSON"),
    (["{no_user}"], "no_user.jsonl line 1: the prompt must end with a non-empty user turn"),
    (["{not_str}"], "not_str.jsonl line 1: messages[0].content must be a string"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_fails_clearly_before_sampling(tmp_path, arithmetic, args, message):
    files = {"data": arithmetic,
             "bad": tmp_path / "bad.jsonl",
             "no_user": write_jsonl(tmp_path / "no_user.jsonl", [{"messages": [{"role": "assistant", "content": "x"}]}]),
             "not_str": write_jsonl(tmp_path / "not_str.jsonl", [{"messages": [{"role": "user", "content": 5}]}])}
    (tmp_path / "bad.jsonl").write_text('{"query": "ok"}\n{"query": oops}\n')
    proc = run_producer(*SMALL, "--num_return_sequences", "1", *[a.format(**files) for a in args],
                        "--output_file", "o.jsonl", cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sample_output" / "o.jsonl").exists()


def test_skip_bad_rows_skips_and_counts(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "Say one."}\n{"query": oops}\n{"query": "Say two."}\n')
    proc = _ok(run_producer("bad.jsonl", *SMALL, "--max_new_tokens", "2", "--num_return_sequences", "1",
                            "--skip_bad_rows", "--output_file", "o.jsonl", cwd=tmp_path))
    assert "1 bad rows skipped" in proc.stdout
    manifest = json.loads((tmp_path / "sample_output" / "o.manifest.json").read_text())
    assert manifest["counts"]["bad_rows"] == 1 and "line 2" in manifest["bad_rows"][0]
    assert len(read_jsonl(tmp_path / "sample_output" / "o.jsonl")) == 2


def test_producer_import_stays_free_of_torch():
    code = "import sys, producer.cli, producer.submit, schemas; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)




def test_two_stage_scoring_of_a_cache_file_equals_the_one_stage_run(tmp_path, arithmetic):
    (tmp_path / "digit.py").write_text(DIGIT_PLUGIN)
    common = [str(arithmetic), *SMALL, "--num_return_sequences", "4", "--seed", "5"]
    scoring = ["--orm_model", "has_digit", "--external_plugins", "digit.py", "--n_best_to_keep", "2",
               "--write_scores", "true"]
    _ok(run_producer(*common, *scoring, "--output_file", "one.jsonl", cwd=tmp_path))
    _ok(run_producer(*common, "--output_file", "stage1.jsonl", cwd=tmp_path))
    two = _ok(run_producer(*common, *scoring, "--sampler_engine", "no", "--cache_files",
                           "sample_output/stage1.jsonl", "--output_file", "two.jsonl", cwd=tmp_path))
    out = tmp_path / "sample_output"
    one_rows = read_jsonl(out / "one.jsonl")
    assert one_rows, "the digit ORM should pass some candidates"
    assert (out / "two.jsonl").read_text() == (out / "one.jsonl").read_text()
    stage1 = read_jsonl(out / "stage1.jsonl")
    assert len(stage1) == 20
    has_digit = lambda text: any(ch.isdigit() for ch in text)  # noqa: E731
    for row in one_rows:
        failing = [r for r in stage1 if r["id"] == row["id"] and not has_digit(r["messages"][-1]["content"])]
        assert row["scores"]["orm"] == 1.0
        assert has_digit(row["rejected_response"]) == (not failing)  # an ORM failure is rejected when one exists
    manifest = json.loads((out / "two.manifest.json").read_text())
    assert manifest["engine"]["engine"] == "no"
    assert manifest["counts"]["prompts"] - manifest["counts"]["dropped_prompts"] == len({r["id"] for r in one_rows})
    assert "two.jsonl" in two.stdout


def test_the_references_stage_two_command_needs_no_model(tmp_path, arithmetic):
    """swift's documented stage 2: --sampler_engine no with the reward models and the cache, and no --model."""
    _ok(run_producer(str(arithmetic), *SMALL, "--num_return_sequences", "3", "--output_file", "stage1.jsonl",
                     cwd=tmp_path))
    stage2 = _ok(run_producer("--sampler_engine", "no", "--orm_model", "math", "--prm_model", "embedding",
                              "--cache_files", "sample_output/stage1.jsonl", "--dataset", str(arithmetic),
                              "--num_return_sequences", "3", "--n_best_to_keep", "2", "--output_file",
                              "stage2.jsonl", cwd=tmp_path))
    assert "stage2.jsonl" in stage2.stdout
    manifest = json.loads((tmp_path / "sample_output" / "stage2.manifest.json").read_text())
    assert manifest["engine"]["engine"] == "no" and manifest["spec"]["model"] is None
    assert manifest["counts"]["candidates"] == 15  # every cached candidate was matched and scored
    for row in read_jsonl(tmp_path / "sample_output" / "stage2.jsonl"):
        assert "rejected_response" in row


def test_ctrl_c_names_the_exact_output_file_to_resume(tmp_path):
    # enough shards that the run is still going when the first one is done (bf16 makes each one short)
    data = write_jsonl(tmp_path / "facts.jsonl", [{"query": f"Tell me a fact about {i}."} for i in range(40)])
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "producer", "submit", "--no_progress", str(data), *SMALL,
                             "--num_return_sequences", "2", "--shard_size", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`make test &`) ignores SIGINT, and so would
                            # the child: give it the terminal's default, as a user's Ctrl-C finds it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out = tmp_path / "sample_output"
        deadline = time.monotonic() + 300
        while not list(out.glob(".*.parts/*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    name = next(out.glob(".*.parts")).name[1:-len(".parts")]  # the timestamped default name
    assert f"--resume true --output_file {name}" in err and "Traceback" not in err


def _full_disk() -> None:
    """In the child: files may not grow past 4 KB, as on a disk that fills up (EFBIG instead of a signal)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("debug", [False, True])
def test_a_disk_that_fills_up_mid_run_gives_one_line_or_the_traceback_with_debug(tmp_path, debug):
    rows = [{"query": f"q{i}", "response": "r"} for i in range(4)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    write_jsonl(tmp_path / "cache.jsonl", [{"messages": [{"role": "user", "content": r["query"]},
                                                         {"role": "assistant", "content": "x" * 3000}]}
                                           for r in rows])
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "producer", "submit", "--no_progress", str(data), "--sampler_engine",
                           "no", "--cache_files", "cache.jsonl", "--num_return_sequences", "1", "--shard_size", "1",
                           "--output_file", "o.jsonl", *(["--debug"] if debug else [])], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=_full_disk)
    assert proc.returncode == 1, proc.stderr
    assert "producer: error: OSError: [Errno 27] File too large" in proc.stderr
    assert ("Traceback" in proc.stderr) == debug
    assert ("run with --debug for the traceback" in proc.stderr) != debug


def test_a_long_shard_shows_tokens_and_samples_while_it_runs(tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", [{"query": f"Write a long story about a dragon called {n}."}
                                                 for n in ("Ada", "Bo")])
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "producer", "submit", str(data), "--model", "smollm2-135m-instruct",
                           "--max_new_tokens", "96", "--num_return_sequences", "2", "--output_file", "o.jsonl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"this shard: \d+ samples done, [1-9]\d* tokens", proc.stderr), proc.stderr[-2000:]
