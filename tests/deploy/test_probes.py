"""The probes of compose and Kubernetes: liveness from the worker's own heartbeat, never from Redis.

A real worker, busy with a shard, then Redis stopped: the liveness command keeps saying live (a Redis outage
restarts no worker) while readiness says not ready; the worker SIGSTOPped: liveness fails; SIGCONT: live
again. The heartbeat timings are shortened here (interval 0.5 s, stale after 2 s) so that staleness shows in
seconds; the file's checks are unit-tested on their own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, write_jsonl
from kits.fleet import fleet_env, run_cli
from schemas.settings import Settings
from workers.heartbeat import check, heartbeat_path

FAST = {"SAMPLEFLEET_HEARTBEAT_INTERVAL": "0.5", "SAMPLEFLEET_HEARTBEAT_STALE": "2"}


def probe(mode: str, name: str, broker: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "worker_health.py"), mode, name], cwd=ROOT,
                          env=fleet_env(broker, **env), capture_output=True, text=True, timeout=60)


def until_code(mode: str, name: str, broker: str, code: int, timeout: float = 30, says: str = "", **env: str):
    """The probe's result once it exits with ``code`` (and prints ``says``), or its last one at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe(mode, name, broker, **env)
        if (result.returncode == code and says in result.stdout + result.stderr) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_the_heartbeat_check_names_what_is_wrong(tmp_path: Path):
    env = Settings(heartbeat_dir=str(tmp_path), heartbeat_interval=1, heartbeat_stale=5)
    name, now = "generator@pod-1", time.time()
    assert "no heartbeat" in check(name, env)
    path = heartbeat_path(name, env)
    for beat, main, pid, expected in [(now, now - 1, os.getpid(), ""),
                                      (now - 9, now - 9, os.getpid(), "not written for 9s"),
                                      (now, now - 7, os.getpid(), "main thread has not run Python for 7s"),
                                      (now, now, 2**22 + 1, "is gone")]:
        path.write_text(json.dumps({"pid": pid, "beat": beat, "main": main}))
        assert expected in check(name, env, now=now) and bool(expected) == bool(check(name, env, now=now))
    path.write_text("{")
    assert "unreadable" in check(name, env)
    with pytest.raises(ValueError, match="SAMPLEFLEET_HEARTBEAT_STALE"):
        Settings(heartbeat_interval=10, heartbeat_stale=20)


def test_liveness_ignores_a_redis_outage_and_catches_a_frozen_worker(tmp_path: Path, redis_server, workers):
    busy = workers.start(wait=False, **FAST)
    idle = workers.start("score", wait=False, **FAST)  # takes no generation: idle through the outage
    for worker in (busy, idle):
        workers.wait_ready(worker)
    beat = {"SAMPLEFLEET_HEARTBEAT_DIR": busy.env["SAMPLEFLEET_HEARTBEAT_DIR"], **FAST}
    url = redis_server.url
    assert probe("live", busy.name, url, **beat).returncode == 0
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "slow"}]}])
    job = run_cli("submit", str(data), "--model", "sim", "--sampler_engine", "simulated", "--no_progress",
                  "--engine_kwargs", json.dumps({"shard_seconds": 60}), "--output_dir", str(tmp_path / "out"),
                  broker=url, cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-2000:]
    seen = until_code("ready", busy.name, url, 0, says="lease", **beat)
    assert seen.returncode == 0 and "alive (lease)" in seen.stdout, seen.stderr  # busy with the shard

    redis_server.stop()
    time.sleep(3)  # past the 2 s staleness: the heartbeat goes on without Redis
    for worker in (busy, idle):
        live = probe("live", worker.name, url, **beat)
        assert live.returncode == 0 and "live" in live.stdout, (worker.name, live.stderr)
    not_ready = probe("ready", busy.name, url, **beat)
    assert not_ready.returncode == 1 and "Traceback" not in not_ready.stderr, not_ready.stderr

    os.kill(busy.proc.pid, signal.SIGSTOP)  # hung: no Python runs in it any more
    try:
        stuck = until_code("live", busy.name, url, 1, timeout=15, says="not written for", **beat)
        assert stuck.returncode == 1 and "not written for" in stuck.stderr, stuck.stderr
        assert probe("live", idle.name, url, **beat).returncode == 0
    finally:
        os.kill(busy.proc.pid, signal.SIGCONT)
    assert until_code("live", busy.name, url, 0, **beat).returncode == 0
    redis_server.start()  # the workers stop at once when their broker is back


def test_the_probe_refuses_a_bad_mode():
    bad = subprocess.run([sys.executable, str(ROOT / "deploy" / "worker_health.py"), "alive", "w@h"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr
