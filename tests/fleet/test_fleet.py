"""The fleet for real: a Redis server, Celery worker processes per pool, the real model, Flower."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest
import redis

from conftest import DIGIT_PLUGIN, read_jsonl, run_producer
from kits.fleet import RedisServer, fleet_env, free_port, run_cli

pytestmark = pytest.mark.model

JOB = ["--model", "smollm2-135m-instruct", "--max_new_tokens", "8", "--num_return_sequences", "2",
       "--shard_size", "1", "--seed", "3"]
SCORING = ["--orm_model", "has_digit", "--external_plugins", "digit.py", "--n_best_to_keep", "1"]


def _submit(broker: str, tmp_path, *args: str, wait: bool = True, **env: str):
    proc = run_cli("submit", *args, *(["--wait"] if wait else []), "--no_progress", broker=broker, cwd=tmp_path,
                   **env)
    return proc


def test_fleet_job_gives_the_rows_of_the_local_run(tmp_path, arithmetic, redis_server, workers):
    """2 generators, 1 scorer, 1 aggregator: the same file, byte for byte, as the in-process run."""
    (tmp_path / "digit.py").write_text(DIGIT_PLUGIN)
    for queues in ("generate", "generate", "score", "aggregate,control"):
        workers.start(queues, wait=False)
    for worker in workers.started:
        workers.wait_ready(worker)
    local = run_producer(str(arithmetic), *JOB, *SCORING, "--output_file", "local.jsonl", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    fleet = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, *SCORING, "--output_file", "fleet.jsonl")
    assert fleet.returncode == 0, fleet.stderr[-2000:] + fleet.stdout
    job_id = fleet.stdout.split()[0]
    out = tmp_path / "sample_output"
    assert (out / "fleet.jsonl").read_text() == (out / "local.jsonl").read_text()
    assert read_jsonl(out / "fleet.jsonl")
    manifest = json.loads((out / "fleet.manifest.json").read_text())
    assert manifest["job_id"] == job_id and manifest["status"] == "done" and manifest["counts"]["shards"] == 5
    assert manifest["engine"]["engine"] == "transformers"
    status = run_cli("status", job_id, broker=redis_server.url, cwd=tmp_path)
    assert "done" in status.stdout and "generate 5/5, score 5/5, aggregate 5/5, failed 0" in status.stdout
    listing = run_cli("list", broker=redis_server.url, cwd=tmp_path)
    assert job_id in listing.stdout
    logs = [w.log.read_text() for w in workers.started]
    assert all("samplefleet.generate" in log for log in logs[:2]), "both generators should have taken shards"


def test_duplicate_deliveries_do_not_double_rows(tmp_path, arithmetic, redis_server, workers):
    """Every shard is sent twice (as a redelivery would): the output still has each row once."""
    from producer.fleet import Fleet
    from schemas import JobSpec
    from schemas.fleet import TASK_GENERATE, model_queue

    workers.start()
    spec = JobSpec.model_validate({"model": "smollm2-135m-instruct", "datasets": [{"source": str(arithmetic)}],
                                   "output_dir": str(tmp_path / "out"), "output_file": "dup.jsonl",
                                   "shard_size": 2, "sampling": {"num_return_sequences": 2, "max_new_tokens": 4}})
    fleet = Fleet(redis_server.url)
    job_id = fleet.submit(spec)
    from producer.datasets import PromptStream
    from producer.submit import cut_shards

    stream = PromptStream(spec)
    for shard in cut_shards(stream.iterate(stream.count()), job_id, spec.shard_size):
        fleet.celery.send_task(TASK_GENERATE, args=[job_id, shard.index, shard.model_dump_json()],
                               queue=model_queue(spec.model))
    status = fleet.wait(job_id, progress=False)
    assert status.status == "done"
    time.sleep(3)  # let the duplicates finish too; they must not add rows or re-finalise
    rows = read_jsonl(tmp_path / "out" / "dup.jsonl")
    assert len(rows) == 10 and len({(r["id"], r["messages"][-1]["content"]) for r in rows}) <= 10
    assert fleet.status(job_id).counters["rows"] == 10


FLAKY_PLUGIN = '''
from workers.scoring import ORM, orms


class FailsOnTwentyOne(ORM):
    """Raises (a bug, not bad input) for one prompt: that shard must be retried, then failed."""

    needs_ground_truth = False

    def __call__(self, infer_requests, ground_truths, **kwargs):
        if any("21+1" in m["content"] for r in infer_requests for m in r.messages):
            raise RuntimeError("scorer crashed on 21+1")
        return [1.0 for _ in infer_requests]


orms["flaky"] = FailsOnTwentyOne
'''


def test_failing_shard_is_retried_then_failed_and_with_allow_partial_the_job_ends_partial(
        tmp_path, arithmetic, redis_server, workers):
    """--allow_partial true: the final file is written without the failed shard (the default fails the job
    with no final file: tests/fleet/test_faults.py)."""
    (tmp_path / "flaky.py").write_text(FLAKY_PLUGIN)
    workers.start(SAMPLEFLEET_MAX_ATTEMPTS="2")
    proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--orm_model", "flaky", "--external_plugins",
                   "flaky.py", "--n_best_to_keep", "1", "--output_file", "p.jsonl", "--allow_partial", "true",
                   SAMPLEFLEET_MAX_ATTEMPTS="2")
    assert proc.returncode == 1 and "PARTIAL" in proc.stderr
    assert "failed 1" in proc.stdout and "scorer crashed on 21+1" in proc.stdout
    manifest = json.loads((tmp_path / "sample_output" / "p.manifest.json").read_text())
    assert manifest["status"] == "partial" and manifest["counts"]["shards_failed"] == 1
    assert manifest["missing_shards"] == [int(k) for k in manifest["failed_shards"]]
    rows = read_jsonl(tmp_path / "sample_output" / "p.jsonl")
    assert manifest["counts"]["prompts"] == 4  # the other 4 prompts: one row each unless reported as dropped
    assert len(rows) + manifest["counts"]["dropped_prompts"] == 4 and rows
    assert workers.started[0].log.read_text().count("attempt 1 failed") == 1  # 2 attempts: one retry, then failed


def test_resume_re_enqueues_lost_shards_and_cancel_stops_a_job(tmp_path, arithmetic, redis_server, workers):
    control = workers.start("aggregate,control")
    proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--output_file", "r.jsonl", wait=False)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[0]
    db = redis.Redis.from_url(redis_server.url)
    assert db.llen("generate.smollm2-135m-instruct") == 5  # no generator yet: all 5 shards wait
    db.delete("generate.smollm2-135m-instruct")  # the messages are lost (e.g. Redis without persistence)
    resumed = run_cli("resume", job_id, broker=redis_server.url, cwd=tmp_path)
    assert "5 shards re-enqueued" in resumed.stdout
    workers.start("generate")
    waited = run_cli("wait", job_id, "--no_progress", broker=redis_server.url, cwd=tmp_path)
    assert waited.returncode == 0 and len(read_jsonl(tmp_path / "sample_output" / "r.jsonl")) == 10

    proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--output_file", "c.jsonl", wait=False)
    job_id = proc.stdout.split()[0]
    assert run_cli("cancel", job_id, broker=redis_server.url, cwd=tmp_path).returncode == 0
    time.sleep(5)
    status = run_cli("status", job_id, broker=redis_server.url, cwd=tmp_path)
    assert "cancelled" in status.stdout
    assert control.proc.poll() is None


def test_flower_lists_workers_and_tasks(tmp_path, arithmetic, redis_server, workers):
    import subprocess
    import sys

    workers.start()
    port = free_port()
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "flower", "--address=127.0.0.1",
                               f"--port={port}"], env=fleet_env(redis_server.url, FLOWER_UNAUTHENTICATED_API="true"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path.parent)
    try:
        proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--output_file", "f.jsonl")
        assert proc.returncode == 0, proc.stderr
        deadline, names, workers_seen = time.monotonic() + 60, set(), {}
        while time.monotonic() < deadline and not ({"samplefleet.generate", "samplefleet.aggregate"} <= names
                                                   and workers_seen):
            time.sleep(1)
            try:
                tasks = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5))
                workers_seen = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=10))
            except OSError:
                continue
            names = {t.get("name") for t in tasks.values()}
        assert {"samplefleet.generate", "samplefleet.aggregate"} <= names
        assert workers.started[0].name in workers_seen
    finally:
        flower.terminate()
        flower.wait(20)


def test_bad_fleet_input_fails_clearly(tmp_path, arithmetic):
    unreachable = run_cli("submit", str(arithmetic), *JOB, "--broker", f"redis://127.0.0.1:{free_port()}/0",
                          broker="", cwd=tmp_path)
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
    server = RedisServer(tmp_path / "pw", password="right-secret").start()
    try:
        wrong = f"redis://:wrong-secret@127.0.0.1:{server.port}/0"
        refused = run_cli("submit", str(arithmetic), *JOB, "--broker", wrong, broker="", cwd=tmp_path)
        assert refused.returncode == 2 and "refused the password" in refused.stderr
        assert "wrong-secret" not in refused.stderr + refused.stdout
        unknown = run_cli("status", "no-such-job", broker=server.url, cwd=tmp_path)
        assert unknown.returncode == 2 and "job 'no-such-job': unknown" in unknown.stderr
        nobody = run_cli("submit", str(arithmetic), *JOB, broker=server.url, cwd=tmp_path,
                         SAMPLEFLEET_OPEN_TIMEOUT="3")
        assert nobody.returncode == 1 and "no worker answered" in nobody.stderr
    finally:
        server.stop()


def test_worker_for_a_model_that_cannot_load_fails_at_start(tmp_path, redis_server, workers):
    worker = workers.start("generate", wait=False, SAMPLEFLEET_PRELOAD_MODEL=str(tmp_path / "no-model"))
    assert worker.proc.wait(120) != 0
    assert "no such model folder" in worker.log.read_text()


def test_metrics_show_queue_depth_and_job_progress(tmp_path, arithmetic, redis_server, workers):
    import subprocess
    import sys

    workers.start("aggregate,control")  # no generator: the shards wait in their queue
    proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--output_file", "m.jsonl", wait=False)
    job_id = proc.stdout.split()[0]
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "producer", "metrics", "--port", str(port)],
                                env=fleet_env(redis_server.url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline and not text:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.3)
        assert 'samplefleet_queue_depth{queue="generate.smollm2-135m-instruct"} 5' in text
        assert f'samplefleet_job_shards{{job_id="{job_id}"}} 5.0' in text
        assert f'samplefleet_job_stage_shards{{job_id="{job_id}",stage="generate",state="done"}} 0.0' in text
    finally:
        exporter.terminate()
        exporter.wait(10)


def test_fleet_output_to_s3_lands_in_the_bucket_with_its_manifest(tmp_path, arithmetic, redis_server,
                                                                   workers, s3_server):
    bucket = s3_server.bucket()
    workers.start(**s3_server.env())
    proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--output_dir", f"s3://{bucket}/runs/a",
                   "--output_file", "s3.jsonl", **s3_server.env())
    assert proc.returncode == 0, proc.stderr + proc.stdout
    client = s3_server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/a/").get("Contents", []))
    assert keys == ["runs/a/s3.jsonl", "runs/a/s3.manifest.json"]  # parts removed
    body = client.get_object(Bucket=bucket, Key="runs/a/s3.jsonl")["Body"].read().decode()
    assert len(body.splitlines()) == 10
    missing = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--output_dir", "s3://no-such-bucket/x",
                      "--output_file", "s3.jsonl", **s3_server.env())
    assert missing.returncode != 0 and "no-such-bucket" in missing.stderr
    assert s3_server.secret_key not in missing.stderr


def test_unknown_reward_model_is_refused_before_the_job_is_recorded(tmp_path, arithmetic, redis_server, workers):
    """The producer does not import reward models or engines: the worker's open_job check refuses them."""
    from workers.lifecycle.keys import Keys

    workers.start("control")
    proc = _submit(redis_server.url, tmp_path, str(arithmetic), *JOB, "--orm_model", "no_such_orm",
                   "--output_file", "u.jsonl", wait=False)
    assert proc.returncode == 2 and "no_such_orm" in proc.stderr, proc.stderr[-2000:]
    assert not redis.Redis.from_url(redis_server.url).zrange(Keys.jobs, 0, -1)
