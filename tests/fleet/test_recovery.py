"""One test per defect of the recovery issue: settings on both sides, safe resume, jobs kept apart on a
warm worker, checks before anything is enqueued, stage time limits, the stuck shard made visible.

Real redis-server and Celery worker processes; the generator is the `simulated` engine (or the client
engine against a small OpenAI-compatible endpoint started here), so each test takes seconds.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from conftest import read_jsonl, run_producer, write_jsonl
from kits.fleet import RedisServer, Workers, run_cli, until
from workers.lifecycle.keys import Keys
from workers.lifecycle.state import JobState
from workers.storage import LocalStorage

SIM = ["--model", "sim", "--sampler_engine", "simulated", "--num_return_sequences", "2", "--max_new_tokens", "8",
       "--shard_size", "2", "--seed", "1"]


def data(path: Path, n: int = 8, offset: int = 0) -> Path:
    return write_jsonl(path, [{"query": f"q{i + offset}", "response": str(i)} for i in range(n)])


def submit(broker: str, cwd: Path, *args: str, **env: str):
    return run_cli("submit", *args, "--no_progress", broker=broker, cwd=cwd, **env)


def test_state_and_result_urls_are_honoured_on_both_sides(tmp_path, redis_server):
    """Broker on one Redis, job state and Celery results on another: the job runs, and its state lives only there."""
    other = RedisServer(tmp_path / "state").start()
    env = {"SAMPLEFLEET_STATE_URL": other.url, "SAMPLEFLEET_RESULT_URL": other.url.replace("/0", "/1")}
    pool = Workers(redis_server.url, tmp_path)
    try:
        pool.start(**env)
        data(tmp_path / "d.jsonl")
        done = submit(redis_server.url, tmp_path, "d.jsonl", *SIM, "--output_file", "o.jsonl", "--wait", **env)
        assert done.returncode == 0, done.stdout + done.stderr
        job_id = done.stdout.split()[0]
        assert redis.Redis.from_url(other.url).exists(Keys(job_id).job)
        assert not redis.Redis.from_url(redis_server.url).exists(Keys(job_id).job)
        assert len(read_jsonl(tmp_path / "sample_output" / "o.jsonl")) == 16
        status = run_cli("status", job_id, broker=redis_server.url, cwd=tmp_path, **env)
        assert "done" in status.stdout, status.stdout + status.stderr
    finally:
        pool.stop_all()
        other.stop()


def cancelled_job(broker: str, workers: Workers, cwd: Path) -> str:
    """A job submitted from ``cwd`` with a relative dataset path, cancelled before any shard ran."""
    workers.start("score,aggregate,control")
    job_id = submit(broker, cwd, "d.jsonl", *SIM, "--output_file", "r.jsonl").stdout.split()[0]
    assert run_cli("cancel", job_id, broker=broker, cwd=cwd).returncode == 0
    return job_id


def test_resume_from_another_directory_reads_the_same_data(tmp_path, redis_server, workers):
    (tmp_path / "sub").mkdir()
    data(tmp_path / "sub" / "d.jsonl")
    job_id = cancelled_job(redis_server.url, workers, tmp_path / "sub")
    workers.start("generate")  # takes the cancelled job's shards and skips them
    db = redis.Redis.from_url(redis_server.url)
    until(lambda: db.llen("generate.sim") == 0)
    resumed = run_cli("resume", job_id, "--wait", "--no_progress", broker=redis_server.url, cwd=tmp_path)
    assert resumed.returncode == 0 and "4 shards re-enqueued" in resumed.stdout, resumed.stdout + resumed.stderr
    assert len(read_jsonl(tmp_path / "sub" / "sample_output" / "r.jsonl")) == 16


def test_resume_over_an_edited_dataset_is_refused_naming_the_shard(tmp_path, redis_server, workers):
    data(tmp_path / "d.jsonl")
    job_id = cancelled_job(redis_server.url, workers, tmp_path)
    rows = (tmp_path / "d.jsonl").read_text().splitlines()
    rows[5] = json.dumps({"query": "an edited row", "response": "0"})
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    resumed = run_cli("resume", job_id, broker=redis_server.url, cwd=tmp_path)
    assert resumed.returncode == 1 and "the data changed since the run began: shard" in resumed.stderr, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert JobState(redis.Redis.from_url(redis_server.url), job_id).status().value == "cancelled"  # nothing sent
    (tmp_path / "d.jsonl").write_text("\n".join(rows[:7]) + "\n")
    fewer = run_cli("resume", job_id, broker=redis_server.url, cwd=tmp_path)
    assert fewer.returncode == 1 and "8 prompts read then, 7 now" in fewer.stderr, fewer.stderr


def test_local_resume_over_an_edited_dataset_is_refused(tmp_path):
    """A local run killed mid-way (its finished shards kept) resumed over changed data: refused before anything runs."""
    data(tmp_path / "d.jsonl")
    args = ["d.jsonl", *SIM, "--dataset_shuffle", "false", "--output_file", "l.jsonl"]
    killed = run_producer(*args, "--engine_kwargs", '{"exit_on": "q5"}', cwd=tmp_path)  # dies in shard 2
    parts = tmp_path / "sample_output" / ".l.jsonl.parts"
    assert killed.returncode == 17 and len(list(parts.glob("*.done.json"))) == 2, killed.stderr[-2000:]
    data(tmp_path / "d.jsonl", offset=100)
    resumed = run_producer(*args, "--engine_kwargs", '{"exit_on": "q5"}', "--resume", "true", cwd=tmp_path)
    assert resumed.returncode == 1 and "the data changed since the run began: shard 0" in resumed.stderr, \
        resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr and len(list(parts.glob("*.done.json"))) == 2


def test_two_writers_with_the_same_pid_do_not_collide(tmp_path):
    """Every solo worker in a container is PID 1: temp files are unique per write, not per process."""
    storage, errors = LocalStorage(str(tmp_path)), []

    def write(tag: str) -> None:
        try:
            for _ in range(200):
                storage.write("parts/shard.json", (tag * 5000).encode())
        except OSError as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert errors == []
    assert storage.read("parts/shard.json") in (b"a" * 5000, b"b" * 5000)
    assert storage.list("parts/") == ["parts/shard.json"]  # no temp file left behind


def test_a_bad_prm_model_is_refused_before_anything_is_enqueued(tmp_path, redis_server, workers):
    workers.start("control")
    data(tmp_path / "d.jsonl")
    proc = submit(redis_server.url, tmp_path, "d.jsonl", *SIM, "--output_file", "p.jsonl",
                  "--prm_model", str(tmp_path / "no-such-prm"))
    assert proc.returncode != 0 and "--prm_model" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not redis.Redis.from_url(redis_server.url).zrange(Keys.jobs, 0, -1)


class _Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers with its own name, so rows tell which one made them."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = int(body.get("n") or 1)
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": i, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f"from {self.server.label}"}}
                             for i in range(n)],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 2 * n, "total_tokens": 3 + 2 * n}}
        raw = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoints():
    servers = []
    for label in ("alpha", "beta"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
        server.label = label
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"http://127.0.0.1:{s.server_address[1]}/v1" for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_two_jobs_with_different_endpoints_on_one_warm_worker(tmp_path, redis_server, workers, endpoints):
    workers.start()
    data(tmp_path / "d.jsonl", n=2)
    for url, name in zip(endpoints, ("a.jsonl", "b.jsonl")):
        proc = submit(redis_server.url, tmp_path, "d.jsonl", "--model", "served", "--sampler_engine", "client",
                      "--base_url", url, "--num_return_sequences", "2", "--output_file", name, "--wait",
                      OPENAI_API_KEY="test")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    texts = {name: {r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "sample_output" / name)}
             for name in ("a.jsonl", "b.jsonl")}
    assert texts == {"a.jsonl": {"from alpha"}, "b.jsonl": {"from beta"}}


def test_a_stage_past_its_time_limit_fails_with_a_clear_error(tmp_path, redis_server, workers):
    env = {"SAMPLEFLEET_STAGE_TIME_LIMIT": "2", "SAMPLEFLEET_MAX_ATTEMPTS": "1"}
    workers.start(**env)
    data(tmp_path / "d.jsonl", n=2)
    proc = submit(redis_server.url, tmp_path, "d.jsonl", *SIM, "--output_file", "t.jsonl", "--wait",
                  "--engine_kwargs", '{"shard_seconds": 30}', **env)
    assert proc.returncode == 1 and "FAILED" in proc.stderr and "no output file was written" in proc.stderr
    assert "ran past SAMPLEFLEET_STAGE_TIME_LIMIT=2s" in proc.stdout, proc.stdout
    assert not (tmp_path / "sample_output" / "t.jsonl").exists()


def test_status_shows_the_shard_in_flight_with_its_worker_and_lease(tmp_path, redis_server, workers):
    worker = workers.start()
    data(tmp_path / "d.jsonl", n=2)
    job_id = submit(redis_server.url, tmp_path, "d.jsonl", *SIM, "--output_file", "s.jsonl",
                    "--engine_kwargs", '{"shard_seconds": 8}').stdout.split()[0]
    db = redis.Redis.from_url(redis_server.url)
    until(lambda: JobState(db, job_id).leases())
    time.sleep(1.5)
    status = run_cli("status", job_id, broker=redis_server.url, cwd=tmp_path)
    assert f"shard 0: generate on {worker.name}, for " in status.stdout, status.stdout
    assert "lease expires in" in status.stdout and "in flight 1" in status.stdout


def test_a_second_fleet_job_on_a_running_jobs_output_is_refused(tmp_path, redis_server, workers):
    workers.start("control")  # no generator: the first job stays running
    data(tmp_path / "d.jsonl", n=2)
    first = submit(redis_server.url, tmp_path, "d.jsonl", *SIM, "--output_file", "same.jsonl")
    assert first.returncode == 0, first.stderr
    second = submit(redis_server.url, tmp_path, "d.jsonl", *SIM, "--output_file", "same.jsonl",
                    "--override_exist_file", "true")
    job_id = first.stdout.split()[0]
    assert second.returncode == 1 and f"is being written by running job {job_id}" in second.stderr, second.stderr
    assert (tmp_path / "sample_output" / ".same.jsonl.parts" / "job.json").exists()  # the first job's parts stay
