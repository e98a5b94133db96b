"""Faults injected for real into a running fleet: workers killed (SIGKILL, SIGTERM) mid-shard, Redis
restarted with and without persistence, S3 stopped, a poison shard, redelivered messages, racing
finalisers. Every job must end with exactly the rows of an undisturbed run: none lost, none doubled.

The generator is the `simulated` engine (deterministic candidates per shard seed, a sleep instead of a
model), so that workers can be killed and replaced many times in a few seconds; the pipeline around it
(Celery, Redis, storage, scoring plug-in, aggregation, finalisation) is the real one. The model's own
fleet runs are in test_fleet.py. ``SAMPLEFLEET_FAULT_TRIALS`` sets the kill trials of the slow soak;
``SAMPLEFLEET_FAULT_LOG`` (a path) collects one JSON line per trial for RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from conftest import OFFLINE, ROOT, run_producer, write_jsonl
from kits.fleet import RedisServer, Workers, fleet_env, run_cli, until
from workers.lifecycle.keys import Keys
from workers.lifecycle.state import JobState

SLOW_DIGIT_PLUGIN = '''
import time

from workers.scoring import ORM, orms


class SlowHasDigit(ORM):
    """Passes a candidate with a digit; takes 0.3 s a shard, so that a scorer can be killed mid-shard."""

    needs_ground_truth = False

    def __call__(self, infer_requests, ground_truths, **kwargs):
        time.sleep(0.3)
        return [float(any(ch.isdigit() for ch in r.messages[-1]["content"])) for r in infer_requests]


orms["slow_digit"] = SlowHasDigit
'''
SHARDS = 12
ROLES = {"generate": "generate", "score": "score", "aggregate": "aggregate,control"}


def job_args(shard_seconds: float = 0.4, **engine: object) -> list[str]:
    return ["--model", "sim", "--sampler_engine", "simulated", "--num_return_sequences", "3",
            "--max_new_tokens", "16", "--shard_size", "2", "--seed", "5", "--orm_model", "slow_digit",
            "--external_plugins", "slow_digit.py", "--n_best_to_keep", "2",
            "--engine_kwargs", json.dumps({"shard_seconds": shard_seconds, **engine})]


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A dataset of 2 x SHARDS prompts, the plug-in, and the reference output of an undisturbed local run."""
    write_jsonl(tmp_path / "data.jsonl", [{"query": f"What is {i}+{i + 1}?", "response": str(2 * i + 1)}
                                          for i in range(2 * SHARDS)])
    (tmp_path / "slow_digit.py").write_text(SLOW_DIGIT_PLUGIN)
    local = run_producer("data.jsonl", *job_args(0), "--output_file", "reference.jsonl", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    return tmp_path


def reference(job_dir: Path) -> list[str]:
    return (job_dir / "sample_output" / "reference.jsonl").read_text().splitlines()


def tally(job_dir: Path, name: str, fault: str, **extra: object) -> dict:
    """Rows expected / written / lost / duplicated (as whole lines), and the manifest's counts."""
    expected = Counter(reference(job_dir))
    path = job_dir / "sample_output" / name
    written = Counter(path.read_text().splitlines()) if path.exists() else Counter()
    manifest_path = path.with_name(name.removesuffix(".jsonl") + ".manifest.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    result = {"fault": fault, "expected": sum(expected.values()), "written": sum(written.values()),
              "lost": sum((expected - written).values()), "duplicated": sum((written - expected).values()),
              "manifest_rows": manifest.get("counts", {}).get("rows"), "status": manifest.get("status"), **extra}
    if os.environ.get("SAMPLEFLEET_FAULT_LOG"):
        with open(os.environ["SAMPLEFLEET_FAULT_LOG"], "a") as log:
            log.write(json.dumps(result) + "\n")
    return result


def assert_exact(result: dict) -> None:
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["written"] == result["expected"] == result["manifest_rows"] and result["status"] == "done", result


def submit(broker: str, job_dir: Path, name: str, *extra: str, shard_seconds: float = 0.4,
           engine: dict | None = None, wait: bool = False, **env: str):
    proc = run_cli("submit", "data.jsonl", *job_args(shard_seconds, **(engine or {})), *extra, "--output_file", name,
                   "--no_progress",
                   *(["--wait"] if wait else []), broker=broker, cwd=job_dir, **env)
    assert wait or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def wait_job(broker: str, job_dir: Path, job_id: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("wait", job_id, "--no_progress", broker=broker, cwd=job_dir, timeout=timeout)


def start_pool(workers: Workers, generators: int = 2, **env: str) -> None:
    for stage, queues in ROLES.items():
        for _ in range(generators if stage == "generate" else 1):
            workers.start(queues, wait=False, **env)
    for worker in workers.started:
        workers.wait_ready(worker)


# --- 1. workers killed ------------------------------------------------------------------------------------
# With the default settings a user gets (lease renewed every 5 s, expired after 30 s, reaper every 5 s; the
# visibility timeout left at 6 h): nothing here shortens a timeout.

def held(db: redis.Redis, job_id: str, stage: str, workers: Workers):
    """(shard, worker) of a lease of ``stage`` that a live worker holds now, else None."""
    for index, (lease, _, _) in JobState(db, job_id).leases().items():
        worker = workers.by_name(lease.owner)
        if lease.stage == stage and lease.state == "running" and worker and worker.proc.poll() is None:
            return index, worker
    return None


def recovered(db: redis.Redis, job_id: str, index: int, victim: str, killed: float, out: list) -> None:
    """Seconds from the kill until another worker holds the shard (or it is settled), appended to ``out``."""
    state = JobState(db, job_id)
    while time.monotonic() - killed < 300:
        lease = state.leases().get(index)
        if (lease and lease[0].owner not in (victim, "reaper") and lease[0].state == "running") \
                or index in state.aggregated():
            out.append(round(time.monotonic() - killed, 2))
            return
        time.sleep(0.05)


def kill_trial(job_dir: Path, redis_url: str, workers: Workers, trial: int) -> dict:
    """SIGKILL a generator, a scorer and an aggregator (plus one more at random), each at a random point
    while it holds a shard when it can be caught doing so; a replacement starts at once."""
    rng = random.Random(trial)
    start_pool(workers)
    name = f"kill-{trial}.jsonl"
    job_id = submit(redis_url, job_dir, name, shard_seconds=1.0).stdout.split()[0]
    db = redis.Redis.from_url(redis_url)
    plan = ["generate", "score", "aggregate"]
    rng.shuffle(plan)
    plan.append(rng.choice(plan))
    kills, recovery, watchers = [], [], []
    for stage in plan:
        time.sleep(rng.uniform(0, 0.6))
        try:
            index, victim = until(lambda: held(db, job_id, stage, workers), timeout=8, every=0.01)
        except TimeoutError:  # nothing of this stage in flight now: kill one of its workers anyway
            index = None
            victim = rng.choice([w for w in workers.started if w.queues == ROLES[stage] and w.proc.poll() is None])
        victim.kill()
        killed = time.monotonic()
        lease = JobState(db, job_id).leases().get(index) if index is not None else None
        mid_task = bool(lease and lease[0].owner == victim.name)
        kills.append({"stage": stage, "mid_task": mid_task})
        if mid_task:
            watcher = threading.Thread(target=recovered, args=(db, job_id, index, victim.name, killed, recovery))
            watcher.start()
            watchers.append(watcher)
        workers.replace(victim, wait=False)
    waited = wait_job(redis_url, job_dir, job_id)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    for watcher in watchers:
        watcher.join()
    return tally(job_dir, name, "SIGKILL generator/scorer/aggregator (default settings)", trial=trial, kills=kills,
                 recovery_seconds=recovery, requeues=JobState(db, job_id).record().requeues)


def test_killed_workers_lose_and_double_nothing_and_recover_within_a_minute(job_dir, redis_server, workers):
    result = kill_trial(job_dir, redis_server.url, workers, 1)
    assert_exact(result)
    assert any(k["mid_task"] for k in result["kills"]), result["kills"]
    assert len(result["recovery_seconds"]) == sum(k["mid_task"] for k in result["kills"])
    assert max(result["recovery_seconds"]) < 60, result


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_kill_soak(job_dir, redis_server, tmp_path):
    """Many kill trials on one Redis (SAMPLEFLEET_FAULT_TRIALS, default 20), default settings; every one exact."""
    for trial in range(100, 100 + int(os.environ.get("SAMPLEFLEET_FAULT_TRIALS", 20))):
        pool = Workers(redis_server.url, tmp_path / f"logs-{trial}")
        pool.logdir.mkdir()
        try:
            result = kill_trial(job_dir, redis_server.url, pool, trial)
            assert_exact(result)
            assert max(result["recovery_seconds"], default=0) < 60, result
        finally:
            pool.stop_all()


def test_a_slow_but_alive_worker_keeps_its_shard(job_dir, redis_server, workers):
    """Shards that run longer than the lease's expiry (40 s against 30 s) are renewed, never re-queued, and
    nothing is done twice."""
    start_pool(workers, generators=1)
    job_id = submit(redis_server.url, job_dir, "slow.jsonl", "--data_range", "0", "12",
                    shard_seconds=40).stdout.split()[0]  # one shard of 2 prompts
    waited = wait_job(redis_server.url, job_dir, job_id)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    db = redis.Redis.from_url(redis_server.url)
    state = JobState(db, job_id)
    assert state.record().requeues == 0 and state.requeued() == {}
    deliveries = {k.decode(): int(v) for k, v in db.hgetall(state.keys.deliveries).items()}
    assert deliveries == {"generate:0": 1, "score:0": 1, "aggregate:0": 1}, deliveries
    lines = (job_dir / "sample_output" / "slow.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) and set(lines) <= set(reference(job_dir))


def test_sigterm_lets_the_shard_in_flight_finish(job_dir, redis_server, workers):
    """Warm shutdown: the generator finishes the shard it holds, then exits; a replacement does the rest."""
    start_pool(workers, generators=1)
    job_id = submit(redis_server.url, job_dir, "term.jsonl", shard_seconds=1.5).stdout.split()[0]
    db, keys = redis.Redis.from_url(redis_server.url), Keys(job_id)
    generator = workers.started[0]
    until(lambda: held(db, job_id, "generate", workers))
    generator.proc.send_signal(signal.SIGTERM)
    assert generator.proc.wait(60) == 0
    log = generator.log.read_text()
    assert "samplefleet.generate" in log and "succeeded" in log, log[-2000:]
    assert db.scard(keys.stage["generate"]) == 1  # the shard it held was finished, not dropped
    workers.replace(generator)
    assert wait_job(redis_server.url, job_dir, job_id).returncode == 0
    assert_exact(tally(job_dir, "term.jsonl", "SIGTERM generator mid-shard"))


# --- 2. Redis restarted -------------------------------------------------------------------------------------

def test_redis_restart_with_aof_loses_and_doubles_nothing(job_dir, tmp_path):
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    pool = Workers(server.url, tmp_path)
    try:
        start_pool(pool)
        producer = subprocess.Popen([sys.executable, "-m", "producer", "submit", "data.jsonl", *job_args(),
                                     "--output_file", "aof.jsonl", "--no_progress", "--wait"], cwd=job_dir,
                                    env=fleet_env(server.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        db = redis.Redis.from_url(server.url)
        job_id = until(lambda: db.zrange(Keys.jobs, 0, 0), timeout=60)[0].decode()
        until(lambda: db.scard(Keys(job_id).stage["aggregate"]) >= 2, timeout=60)
        server.stop()  # mid-job: shards in every stage, the producer waiting
        time.sleep(3)
        server.start()
        out, err = producer.communicate(timeout=300)
        assert producer.returncode == 0, err[-3000:]
        assert_exact(tally(job_dir, "aof.jsonl", "Redis restarted (AOF on)"))
    finally:
        pool.stop_all()
        server.stop()


def test_redis_restart_without_persistence_then_resubmit_keeps_finished_shards(job_dir, tmp_path):
    """Redis comes back empty: the job is gone, the storage is not. Submitting it again with --resume
    redoes only what is missing: finished shards are kept, generated candidates are not generated again."""
    server = RedisServer(tmp_path / "volatile").start()
    pool = Workers(server.url, tmp_path)
    try:
        start_pool(pool, generators=1)
        first = submit(server.url, job_dir, "vol.jsonl")
        db = redis.Redis.from_url(server.url)
        keys = Keys(first.stdout.split()[0])
        until(lambda: db.scard(keys.stage["aggregate"]) >= 3, timeout=60)
        server.restart()  # no AOF: every key and queued message is lost
        lost = wait_job(server.url, job_dir, first.stdout.split()[0])
        assert lost.returncode == 2 and "--resume true" in lost.stderr
        again = submit(server.url, job_dir, "vol.jsonl", "--resume", "true", wait=True)
        assert again.returncode == 0, again.stderr[-3000:]
        reused = sum(w.log.read_text().count("not generated again") for w in pool.started)
        assert_exact(tally(job_dir, "vol.jsonl", "Redis restarted (no persistence) + resubmit --resume",
                           reused_generations=reused))
        sent_again = db.scard(Keys(again.stdout.split()[0]).stage["generate"])
        assert sent_again <= SHARDS - 3  # the shards aggregated before the restart were not sent again
    finally:
        pool.stop_all()
        server.stop()


# --- 3. storage faults ----------------------------------------------------------------------------------------

@pytest.fixture
def own_s3():
    """A SeaweedFS server of this test's own: it is stopped and restarted mid-job."""
    from kits.s3 import start_seaweedfs

    server = start_seaweedfs()
    yield server
    server.stop()


def s3_lines(server, bucket: str, key: str) -> list[str]:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()


def test_s3_outage_is_ridden_out_by_retries_with_backoff(job_dir, redis_server, workers, own_s3):
    bucket = own_s3.bucket()
    start_pool(workers, generators=1, **own_s3.env())
    job_id = submit(redis_server.url, job_dir, "s3.jsonl", "--output_dir", f"s3://{bucket}/run",
                    **own_s3.env()).stdout.split()[0]
    db, keys = redis.Redis.from_url(redis_server.url), Keys(job_id)
    until(lambda: db.scard(keys.stage["aggregate"]) >= 1)
    own_s3.halt()
    time.sleep(5)
    own_s3.restart()
    waited = wait_job(redis_server.url, job_dir, job_id)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    written = Counter(s3_lines(own_s3, bucket, "run/s3.jsonl"))
    expected = Counter(reference(job_dir))
    assert written == expected
    retried = sum(w.log.read_text().count(" failed (") for w in workers.started)
    tally_counts("S3 stopped 5 s mid-job", expected, written, task_retries=retried)


def tally_counts(fault: str, expected: Counter, written: Counter, **extra: object) -> None:
    """``tally`` for output that is not a local file."""
    result = {"fault": fault, "expected": sum(expected.values()), "written": sum(written.values()),
              "lost": sum((expected - written).values()), "duplicated": sum((written - expected).values()), **extra}
    if os.environ.get("SAMPLEFLEET_FAULT_LOG"):
        with open(os.environ["SAMPLEFLEET_FAULT_LOG"], "a") as log:
            log.write(json.dumps(result) + "\n")


def test_s3_write_that_keeps_failing_fails_its_shard_and_the_job_goes_on(job_dir, redis_server, workers, own_s3):
    """S3 down for longer than the retry budget: the shards tried meanwhile fail with the S3 error, the
    rest finish once it is back; the job ends failed (no final file, parts kept), and `resume` then completes
    it exactly."""
    bucket = own_s3.bucket()
    env = {**own_s3.env(), "SAMPLEFLEET_S3_MAX_ATTEMPTS": "1", "SAMPLEFLEET_MAX_ATTEMPTS": "2"}
    for stage, queues in ROLES.items():
        workers.start(queues, wait=stage != "generate", **env)
    job_id = submit(redis_server.url, job_dir, "s3f.jsonl", "--output_dir", f"s3://{bucket}/run",
                    **env).stdout.split()[0]
    db, keys = redis.Redis.from_url(redis_server.url), Keys(job_id)
    own_s3.halt()
    until(lambda: db.hlen(keys.failed) >= 1, timeout=120)
    own_s3.restart()
    waited = wait_job(redis_server.url, job_dir, job_id)
    assert waited.returncode == 1 and "FAILED" in waited.stderr and "no output file" in waited.stderr
    failed = {int(k): v.decode() for k, v in db.hgetall(keys.failed).items()}
    assert failed and all("s3://" in error or "S3" in error for error in failed.values()), failed
    assert len(failed) < SHARDS and db.scard(keys.stage["aggregate"]) == SHARDS - len(failed)
    manifest = json.loads(own_s3.client().get_object(Bucket=bucket, Key="run/s3f.manifest.json")["Body"].read())
    assert manifest["status"] == "failed" and manifest["counts"]["shards_failed"] == len(failed)
    assert manifest["missing_shards"] == sorted(failed)
    assert "Contents" not in own_s3.client().list_objects_v2(Bucket=bucket, Prefix="run/s3f.jsonl")  # no final file
    resumed = run_cli("resume", job_id, "--wait", "--no_progress", broker=redis_server.url, cwd=job_dir, **env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    expected, written = Counter(reference(job_dir)), Counter(s3_lines(own_s3, bucket, "run/s3f.jsonl"))
    assert written == expected
    tally_counts("S3 down past the retry budget, then resume", expected, written, shards_failed=len(failed))


def test_local_write_that_keeps_failing_fails_that_shard_only(job_dir, redis_server, workers):
    """A shard whose file cannot be written (a directory stands in its place) fails with the path in
    the error after its retries; every other shard is written, the job ends failed with no final file and its
    parts kept, and once the path is free `resume` completes it exactly."""
    for stage, queues in ROLES.items():
        if stage != "generate":
            workers.start(queues, SAMPLEFLEET_MAX_ATTEMPTS="2")
    job_id = submit(redis_server.url, job_dir, "blocked.jsonl", SAMPLEFLEET_MAX_ATTEMPTS="2").stdout.split()[0]
    (job_dir / "sample_output" / ".blocked.jsonl.parts" / "generated" / "shard-000004.json").mkdir(parents=True)
    workers.start("generate", SAMPLEFLEET_MAX_ATTEMPTS="2")
    waited = wait_job(redis_server.url, job_dir, job_id)
    assert waited.returncode == 1 and "FAILED" in waited.stderr
    assert "shard 4 failed: generate:" in waited.stdout and "shard-000004.json" in waited.stdout
    assert "data.jsonl line" in waited.stdout  # the failed shard names its rows
    assert "no output file: missing shards 4" in waited.stdout
    out = job_dir / "sample_output"
    manifest = json.loads((out / "blocked.manifest.json").read_text())
    assert manifest["status"] == "failed" and list(manifest["failed_shards"]) == ["4"]
    assert manifest["missing_shards"] == [4]
    assert not (out / "blocked.jsonl").exists()  # never a final file short of a planned shard
    report = run_cli("report", job_id, broker=redis_server.url, cwd=job_dir)
    assert report.returncode == 2 and "the job failed and wrote no output file" in report.stderr, report.stderr
    assert len(list((out / ".blocked.jsonl.parts").glob("shard-*.done.json"))) == SHARDS - 1  # kept for resume
    (out / ".blocked.jsonl.parts" / "generated" / "shard-000004.json").rmdir()
    resumed = run_cli("resume", job_id, "--wait", "--no_progress", broker=redis_server.url, cwd=job_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert Counter((out / "blocked.jsonl").read_text().splitlines()) == Counter(reference(job_dir))
    assert json.loads((out / "blocked.manifest.json").read_text())["missing_shards"] == []


# --- 4. poison shard --------------------------------------------------------------------------------------------

def test_poison_shard_that_kills_its_worker_is_failed_after_bounded_deliveries(job_dir, redis_server, workers):
    """A prompt that kills the generator process every time: the shard is delivered a bounded number of
    times (a supervisor restarts the dead worker), then recorded as failed with its rows; the rest of the
    job is not blocked and it ends partial (it asked for --allow_partial true)."""
    # short leases: what is tested is that deliveries are bounded, not how fast (test_killed_workers... is that)
    env = {"SAMPLEFLEET_LEASE_EXPIRE": "3", "SAMPLEFLEET_LEASE_RENEW": "1", "SAMPLEFLEET_REAP_INTERVAL": "1",
           "SAMPLEFLEET_MAX_ATTEMPTS": "1"}
    for stage, queues in ROLES.items():
        if stage != "generate":
            workers.start(queues, **env)
    job_id = submit(redis_server.url, job_dir, "poison.jsonl", "--allow_partial", "true",
                    engine={"exit_on": "What is 7+8?"}, shard_seconds=0.1, **env).stdout.split()[0]
    db, keys = redis.Redis.from_url(redis_server.url), Keys(job_id)
    generator, deaths = workers.start("generate", **env), 0
    while db.hget(keys.job, "status") == b"running":  # the supervisor: restart the generator when it dies
        if generator.proc.poll() is not None:
            deaths += 1
            assert deaths < 6, "the poison shard was delivered without bound"
            generator = workers.replace(generator, wait=False)  # a supervisor restarts it; the poison may kill it before its first ping
        time.sleep(0.2)
    status = run_cli("status", job_id, broker=redis_server.url, cwd=job_dir, **env)
    assert "partial" in status.stdout and "failed 1" in status.stdout
    assert "delivered 3 times" in status.stdout and "data.jsonl line 8" in status.stdout, status.stdout
    rows = (job_dir / "sample_output" / "poison.jsonl").read_text().splitlines()
    assert len(rows) == len(reference(job_dir)) - 2 * 2 and set(rows) <= set(reference(job_dir))
    tally_counts("poison shard (kills its worker)", Counter(reference(job_dir)), Counter(rows), worker_deaths=deaths)


# --- 5. idempotence -------------------------------------------------------------------------------------------

def test_redelivery_after_visibility_timeout_doubles_nothing(job_dir, redis_server, workers):
    """Shards outlast the visibility timeout, so Redis hands each to a second worker while the first still
    runs it: the second finds the first one's live lease and skips; the output has every row once. Five
    generators for 12 equal shards, so the last round leaves three idle to take the copies while the shards are
    held (with two, both finish together and the copies came only once the shards had settled)."""
    start_pool(workers, generators=5, SAMPLEFLEET_VISIBILITY_TIMEOUT="1")
    job_id = submit(redis_server.url, job_dir, "vis.jsonl", shard_seconds=3.0).stdout.split()[0]
    assert wait_job(redis_server.url, job_dir, job_id).returncode == 0
    time.sleep(3)  # let the late duplicates arrive too
    db = redis.Redis.from_url(redis_server.url)
    deliveries = sum(int(v) for k, v in db.hgetall(Keys(job_id).deliveries).items() if k.startswith(b"generate:"))
    skipped = sum(w.log.read_text().count("skipped (leased by") for w in workers.started)
    result = tally(job_dir, "vis.jsonl", "visibility timeout expired mid-shard (redelivery)",
                   generate_deliveries=deliveries, duplicates_skipped=skipped)
    assert_exact(result)
    assert skipped > 0, "no shard was redelivered while held: the test did not test anything"


def settled_unfinalised(broker: str, job_dir: Path, name: str, lock_seconds: float) -> str:
    """A job whose shards are all aggregated while a finaliser that died holds the lock for ``lock_seconds``
    more (a real finaliser's lock, extended while it works, lapses within SAMPLEFLEET_LEASE_EXPIRE of its death)."""
    job_id = submit(broker, job_dir, name).stdout.split()[0]
    db, keys = redis.Redis.from_url(broker), Keys(job_id)
    db.set(keys.finalising, "dead finaliser", px=int(lock_seconds * 1000))  # before the first shard is scored
    until(lambda: db.scard(keys.stage["aggregate"]) == SHARDS)
    assert db.hget(keys.job, "status") == b"running"
    return job_id


def test_racing_finalisers_assemble_once(job_dir, redis_server, workers):
    from workers.lifecycle.finalise import finalise_once

    start_pool(workers)
    job_id = settled_unfinalised(redis_server.url, job_dir, "race.jsonl", lock_seconds=600)
    workers.stop_all()  # their reapers would finalise too, once the lock is gone
    db = redis.Redis.from_url(redis_server.url)
    db.delete(Keys(job_id).finalising)
    results: list[str | None] = []
    racers = [threading.Thread(target=lambda: results.append(finalise_once(JobState(db, job_id))))
              for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sum(r is not None for r in results) == 1, results
    assert_exact(tally(job_dir, "race.jsonl", "8 finalisers racing"))
    # A late finaliser that got past the status check while the first one was dropping the parts:
    db.hset(Keys(job_id).job, "status", "running")
    assert finalise_once(JobState(db, job_id)) is None
    assert_exact(tally(job_dir, "race.jsonl", "late finaliser after the parts were dropped"))  # output untouched


def test_a_job_whose_finaliser_died_is_finalised_by_the_reaper(job_dir, redis_server, workers):
    start_pool(workers)
    job_id = settled_unfinalised(redis_server.url, job_dir, "dead.jsonl", lock_seconds=8)
    started = time.monotonic()
    waited = wait_job(redis_server.url, job_dir, job_id)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert time.monotonic() - started < 60
    assert_exact(tally(job_dir, "dead.jsonl", "finaliser died holding the lock (reaper finalises)"))
