"""Past one Redis: finished jobs' keys expire, a job's keys share one Redis Cluster slot, job state on its own
Redis server, and RabbitMQ as the broker (a real rabbitmq-server started here; skipped where it is missing)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from conftest import write_jsonl
from kits.fleet import RedisServer, Workers, _stop, free_port, run_cli

SIM = ["--model", "sim", "--sampler_engine", "simulated", "--num_return_sequences", "2", "--shard_size", "3",
       "--orm_model", "format", "--orm_kwargs", json.dumps({"pattern": "^simulated answer"}), "--no_progress"]
RABBITMQ = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's rabbitmq-server, without its `su rabbitmq` wrapper


def _record(job_id: str):
    from schemas import JobSpec
    from schemas.jobstate import JobRecord

    spec = JobSpec(model="sim", sampler_engine="simulated", datasets=[{"source": "-"}], output_file=f"{job_id}.jsonl")
    return JobRecord(id=job_id, spec=spec, shards=2, prompts=4, created=time.time(), queue="generate.sim")


def test_a_finished_job_s_keys_expire_and_its_status_works_until_then(redis_server, monkeypatch):
    from producer.fleet import Fleet
    from schemas.jobstate import Status
    from workers.lifecycle.keys import Keys
    from workers.lifecycle.state import JobState, forget_expired

    monkeypatch.setenv("SAMPLEFLEET_FINISHED_TTL", "60")
    db, fleet = redis.Redis.from_url(redis_server.url), Fleet(redis_server.url)
    state = JobState.create(db, _record("j1"))
    state.remember({0: "a", 1: "b"})
    assert all(db.ttl(key) == -1 for key in Keys("j1").kept() if db.exists(key))  # a running job's keys stay
    state.failed(0, "t", "boom")
    state.stage_done("aggregate", 1, "t", candidates=2, rows=1)
    assert state.finish(Status.PARTIAL, "out.jsonl")
    live = [key for key in Keys("j1").kept() if db.exists(key)]
    assert len(live) >= 5 and all(0 < db.ttl(key) <= 60 for key in live)
    status = fleet.status("j1")
    assert (status.status, status.failed, status.stages["aggregate"]) == ("partial", {0: "boom"}, 1)
    assert [s.job_id for s in fleet.list()] == ["j1"]

    state.resume(Status.PARTIAL, 2)  # a resumed job keeps its keys again
    assert all(db.ttl(key) == -1 for key in Keys("j1").kept() if db.exists(key))

    monkeypatch.setenv("SAMPLEFLEET_FINISHED_TTL", "1")
    JobState.create(db, _record("j2")).cancel()  # cancelled jobs expire too
    assert all(0 < db.ttl(key) <= 1 for key in Keys("j2").kept() if db.exists(key))
    deadline = time.monotonic() + 5
    while db.exists(Keys("j2").job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(db.exists(key) for key in Keys("j2").all())
    assert [s.job_id for s in fleet.list()] == ["j1"]  # the expired job is left out of the listing...
    time.sleep(1.1)  # ... and dropped from the index once it was created more than the TTL ago
    assert forget_expired(db, 1) == 1 and db.zrange(Keys.jobs, 0, -1) == [b"j1"]


def test_a_job_s_keys_share_one_cluster_slot():
    """A hash tag per job: Redis Cluster keeps a job's keys in one slot, so every per-job script is single-slot;
    the fleet-wide index keys are the only other slots a job touches."""
    from redis.cluster import key_slot

    from workers.lifecycle.keys import Keys

    for job_id in ("20261202-064534-997341", "a{b}c"):
        slots = {key_slot(key.encode()) for key in Keys(job_id).all()}
        assert len(slots) == 1, (job_id, slots)
    assert len({key_slot(Keys(f"job{i}").job.encode()) for i in range(64)}) > 32  # jobs spread over slots


def _job(tmp_path: Path, broker: str, **env: str) -> dict:
    """A 7-prompt job (3 shards) through `producer submit --wait`; its manifest."""
    data = write_jsonl(tmp_path / "data.jsonl", [{"query": f"what is {k} + {k}?", "response": str(2 * k)}
                                                 for k in range(7)])
    proc = run_cli("submit", str(data), *SIM, "--output_dir", str(tmp_path / "out"), "--output_file", "x.jsonl",
                   "--wait", broker=broker, cwd=tmp_path, timeout=180, **env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    manifest = json.loads((tmp_path / "out" / "x.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["rows"] == 7  # N - 1 rows a prompt: all pass
    assert len((tmp_path / "out" / "x.jsonl").read_text().splitlines()) == 7
    return manifest


def test_job_state_on_its_own_redis_server(tmp_path, redis_server, workers):
    state = RedisServer(tmp_path / "state").start()
    try:
        env = {"SAMPLEFLEET_STATE_URL": state.url}
        workers.start(**env)
        manifest = _job(tmp_path, redis_server.url, **env)
        broker_keys = {k.decode() for k in redis.Redis.from_url(redis_server.url).keys("*")}
        state_keys = {k.decode() for k in redis.Redis.from_url(state.url).keys("*")}
        assert any(k.startswith(f"samplefleet:job:{{{manifest['job_id']}}}") for k in state_keys)
        assert not any(k.startswith("samplefleet:") for k in broker_keys), broker_keys  # the broker: Celery's only
    finally:
        state.stop()


@pytest.fixture
def rabbitmq(tmp_path: Path):
    """A real rabbitmq-server on free 127.0.0.1 ports, a child process with its own data and log folders."""
    if not RABBITMQ.exists() or not shutil.which("erl"):
        pytest.skip("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
    home = tmp_path / "rabbitmq"
    home.mkdir()
    port, dist, epmd = free_port(), free_port(), free_port()
    (home / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n"
                                        "consumer_timeout = 86400000\n")  # > the longest shard (default 30 min)
    (home / "plugins").write_text("[].\n")
    env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": f"sf{uuid.uuid4().hex[:6]}@localhost",
           "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(dist),
           "ERL_EPMD_PORT": str(epmd), "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
           "RABBITMQ_LOG_BASE": str(home / "log"), "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "plugins"), "RABBITMQ_PID_FILE": str(home / "pid"),
           "RABBITMQ_LOGS": "-"}  # the log on stdout, where the start-up line is waited for
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([str(RABBITMQ)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Server startup complete" not in (home / "server.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rabbitmq-server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"amqp://guest:guest@127.0.0.1:{port}//"
    finally:
        _stop(proc, grace=30)
        subprocess.run(["epmd", "-port", str(epmd), "-kill"], env=env, capture_output=True)  # the port mapper it began


def test_rabbitmq_as_the_broker_runs_a_full_job(tmp_path, redis_server, rabbitmq):
    env = {"SAMPLEFLEET_STATE_URL": redis_server.url, "SAMPLEFLEET_RESULT_URL": redis_server.url}
    pool = Workers(rabbitmq, tmp_path)
    try:
        pool.start("generate,score", **env)
        pool.start("aggregate,control", **env)
        manifest = _job(tmp_path, rabbitmq, **env)
        assert manifest["counts"]["shards"] == 3
        assert any(k.startswith(b"samplefleet:job:") for k in redis.Redis.from_url(redis_server.url).keys("*"))
    finally:
        pool.stop_all()
