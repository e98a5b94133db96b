"""Adaptive sampling (--target_correct): waves per prompt until it has what the selection needs."""
from __future__ import annotations

import json
import time

import pytest
import redis

from conftest import DIGIT_PLUGIN, read_jsonl, run_producer, write_jsonl
from kits.fleet import run_cli
from workers.lifecycle.keys import Keys

# The simulated engine's candidates end with the reference's box at each prompt's pass_rate (accuracy grades it).
SIMULATED = ["--model", "x", "--sampler_engine", "simulated", "--engine_kwargs",
             json.dumps({"shard_seconds": 0, "pass_rate_column": "pass_rate"}), "--orm_model", "accuracy",
             "--num_return_sequences", "16", "--max_new_tokens", "20", "--shard_size", "3", "--n_best_to_keep", "2",
             "--dataset_shuffle", "false", "--seed", "3"]
RATES = [0.5, 0.3, 0.0, 1.0, 0.8]  # with --seed 3: the 0.8 prompt meets a failure within 16 samples (p = 0.97)


def _data(tmp_path):
    return write_jsonl(tmp_path / "q.jsonl", [{"query": f"q{i}", "response": str(i), "pass_rate": p}
                                              for i, p in enumerate(RATES)])


def _run(tmp_path, name, *extra):
    proc = run_producer(str(_data(tmp_path)), *SIMULATED, *extra, "--output_file", name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "sample_output"
    return (read_jsonl(out / name), read_jsonl(out / name.replace(".jsonl", ".stats.jsonl")),
            json.loads((out / name.replace(".jsonl", ".manifest.json")).read_text()))


def test_adaptive_stops_each_prompt_once_it_has_k_correct_and_a_failing_one(tmp_path):
    rows, stats, manifest = _run(tmp_path, "adaptive.jsonl", "--target_correct", "2", "--wave_size", "4")
    fixed_rows, fixed_stats, _ = _run(tmp_path, "fixed.jsonl")
    by_rate = dict(zip(RATES, stats))
    assert by_rate[0.5]["samples"] < 16 and by_rate[0.8]["samples"] < 16  # K=2 and a failure come early
    assert by_rate[0.0]["samples"] == 16 and by_rate[1.0]["samples"] == 16  # never a pair: sampled to the cap
    assert all(s["samples"] % 4 == 0 for s in stats)
    for s in stats:
        if s["stopped"] == "target reached":
            assert s["correct"] >= 2 and s["samples"] - s["correct"] >= 1
    assert manifest["adaptive"]["samples"] == sum(s["samples"] for s in stats) < sum(s["samples"] for s in fixed_stats)
    assert manifest["adaptive"]["samples_per_prompt"] == [s["samples"] for s in stats]
    assert manifest["counts"]["short_prompts"] == 0  # stopping early is not a shortfall
    # every prompt that has a pair in the fixed run has one here too
    assert {r["id"] for r in fixed_rows if r.get("rejected_response")} <= {r["id"] for r in rows}
    again, _, _ = _run(tmp_path, "again.jsonl", "--target_correct", "2", "--wave_size", "4")
    assert again == rows  # deterministic with --seed


def test_drop_settled_stops_all_correct_and_all_wrong_first_waves(tmp_path):
    _, stats, manifest = _run(tmp_path, "settled.jsonl", "--target_correct", "2", "--wave_size", "4",
                              "--drop_settled", "true")
    by_rate = dict(zip(RATES, stats))
    assert by_rate[0.0]["samples"] == 4 and by_rate[0.0]["stopped"] == "settled: first wave all wrong"
    assert by_rate[1.0]["samples"] == 4 and by_rate[1.0]["stopped"] == "settled: first wave all correct"
    assert manifest["adaptive"]["stopped"]["settled: first wave all wrong"] >= 1


def test_a_fleet_job_samples_wave_by_wave_and_writes_what_the_local_run_writes(tmp_path, redis_server, workers):
    """Each wave of a shard is its own generate task (its deliveries are counted per wave); the rows, the stats
    file and the manifest's adaptive section are those of the in-process run."""
    workers.start()
    adaptive = ("--target_correct", "2", "--wave_size", "4")
    rows, stats, manifest = _run(tmp_path, "local.jsonl", *adaptive)
    fleet = run_cli("submit", str(_data(tmp_path)), *SIMULATED, *adaptive, "--output_file", "fleet.jsonl", "--wait",
                    "--no_progress", broker=redis_server.url, cwd=tmp_path)
    assert fleet.returncode == 0, fleet.stderr[-2000:] + fleet.stdout
    out = tmp_path / "sample_output"
    assert read_jsonl(out / "fleet.jsonl") == rows
    assert (out / "fleet.stats.jsonl").read_text() == (out / "local.stats.jsonl").read_text()
    assert json.loads((out / "fleet.manifest.json").read_text())["adaptive"] == manifest["adaptive"]
    assert max(s["samples"] for s in stats) == 16 and min(s["samples"] for s in stats) <= 8  # 4 waves, or fewer
    deliveries = redis.Redis.from_url(redis_server.url).hgetall(Keys(fleet.stdout.split()[0]).deliveries)
    assert b"generate.wave1:0" in deliveries and b"score.wave1:0" in deliveries, deliveries


def test_a_fleet_job_cancelled_between_waves_resumes_from_its_stored_waves(tmp_path, redis_server, workers):
    """Cancelled once a shard is in its second wave, then resumed: each shard replays the waves in storage and
    goes on where it stopped; the output is the in-process run's."""
    slow = json.dumps({"shard_seconds": 0.6, "pass_rate_column": "pass_rate"})
    job = [*SIMULATED, "--engine_kwargs", slow, "--target_correct", "2", "--wave_size", "4"]
    local = run_producer(str(_data(tmp_path)), *job, "--output_file", "local.jsonl", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    workers.start()
    submitted = run_cli("submit", "q.jsonl", *job, "--output_file", "fleet.jsonl", "--no_progress",
                        broker=redis_server.url, cwd=tmp_path)
    job_id = submitted.stdout.split()[0]
    db = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 60
    while b"generate.wave1:0" not in db.hgetall(Keys(job_id).deliveries) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_cli("cancel", job_id, broker=redis_server.url, cwd=tmp_path).returncode == 0
    resumed = run_cli("resume", job_id, "--wait", "--no_progress", broker=redis_server.url, cwd=tmp_path)
    assert resumed.returncode == 0 and "re-enqueued" in resumed.stdout, resumed.stdout + resumed.stderr
    out = tmp_path / "sample_output"
    assert read_jsonl(out / "fleet.jsonl") == read_jsonl(out / "local.jsonl")
    assert (out / "fleet.stats.jsonl").read_text() == (out / "local.stats.jsonl").read_text()


def test_adaptive_options_are_checked():
    from schemas import JobSpec

    base = {"model": "m", "datasets": [{"source": "d"}], "output_file": "o.jsonl"}
    with pytest.raises(ValueError, match="--target_correct counts ORM-passing candidates"):
        JobSpec.model_validate({**base, "target_correct": 2})
    with pytest.raises(ValueError, match="--wave_size and --drop_settled belong to adaptive sampling"):
        JobSpec.model_validate({**base, "orm_model": "math", "wave_size": 4})
    assert JobSpec.model_validate({**base, "orm_model": "math", "target_correct": 1}).adaptive_wave == 8


@pytest.mark.model
def test_adaptive_on_the_real_model(tmp_path, arithmetic):
    """The transformers engine takes waves of any size; the run ends with rows and a stats line per prompt."""
    (tmp_path / "digit.py").write_text(DIGIT_PLUGIN)
    proc = run_producer(str(arithmetic), "--model", "smollm2-135m-instruct", "--max_new_tokens", "8",
                        "--num_return_sequences", "6", "--target_correct", "1", "--wave_size", "2",
                        "--orm_model", "has_digit", "--external_plugins", "digit.py", "--n_best_to_keep", "1",
                        "--output_file", "real.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = read_jsonl(tmp_path / "sample_output" / "real.stats.jsonl")
    assert len(stats) == 5 and all(s["samples"] in (2, 4, 6) and s["stopped"] for s in stats)
