"""A real SIGTERM to a real worker holding a long shard, with the default settings: it hands the shard back
and exits in seconds, another worker runs the shard at once, and the job's rows are exact.

What is measured here is asserted against the issue's targets (SIGTERM to exit <= 15 s, to the shard running
again <= 10 s) with wide margins of the defaults (budget 5 s, exit by 13 s); the soak with its figures is
bench/sigterm_soak.py.
"""
from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import redis

from conftest import run_producer, write_jsonl
from kits.fleet import Worker, Workers, run_cli, until
from workers.lifecycle.state import JobState


def simulated_job(shard_seconds: float) -> list[str]:
    return ["--model", "sim", "--sampler_engine", "simulated", "--num_return_sequences", "3", "--max_new_tokens",
            "16", "--shard_size", "2", "--seed", "7", "--engine_kwargs", json.dumps({"shard_seconds": shard_seconds})]


def holder(state: JobState, index: int, workers: Workers, stage: str = "generate") -> Worker | None:
    """The live worker running ``stage`` of shard ``index`` now, if any."""
    lease = state.leases().get(index)
    if lease and lease[0].stage == stage and lease[0].state == "running":
        worker = workers.by_name(lease[0].owner)
        return worker if worker and worker.proc.poll() is None else None
    return None


def test_sigterm_hands_a_long_shard_back_in_seconds_with_default_settings(tmp_path: Path, redis_server, workers):
    write_jsonl(tmp_path / "data.jsonl", [{"query": f"What is {i}+1?", "response": str(i + 1)} for i in range(2)])
    local = run_producer("data.jsonl", *simulated_job(0), "--output_file", "reference.jsonl", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    first, second = workers.start(wait=False), workers.start(wait=False)  # every queue, default settings
    for worker in (first, second):
        workers.wait_ready(worker)
    submitted = run_cli("submit", "data.jsonl", *simulated_job(30), "--output_file", "term.jsonl", "--no_progress",
                        broker=redis_server.url, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.split()[0]
    state = JobState(redis.Redis.from_url(redis_server.url), job_id)
    victim = until(lambda: holder(state, 0, workers), timeout=60)
    other = second if victim is first else first
    time.sleep(1.0)  # well into the 30 s shard

    victim.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    again = until(lambda: holder(state, 0, workers) is other, timeout=30, every=0.02) and time.monotonic() - sent
    code = victim.proc.wait(30)
    exited = time.monotonic() - sent

    log = victim.log.read_text()
    assert code == 0, log[-3000:]
    assert exited <= 15, (exited, log[-3000:])
    assert again <= 10, again
    assert "handed back and sent again" in log and "succeeded" in log, log[-3000:]

    waited = run_cli("wait", job_id, "--no_progress", broker=redis_server.url, cwd=tmp_path, timeout=120)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    expected = Counter((tmp_path / "sample_output" / "reference.jsonl").read_text().splitlines())
    written = Counter((tmp_path / "sample_output" / "term.jsonl").read_text().splitlines())
    assert written == expected and sum(written.values()) == 6  # 0 lost, 0 duplicated
    record = state.record()
    assert record.requeues == 1 and record.status == "done"
    deliveries = {k.decode(): int(v) for k, v in state.db.hgetall(state.keys.deliveries).items()}
    assert deliveries == {"generate:0": 1, "aggregate:0": 1}, deliveries  # the handed-back delivery not counted
