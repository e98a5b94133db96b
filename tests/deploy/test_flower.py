"""Flower started with the documented command (deploy/flowerconfig.py) against a real Redis and a real
worker: a simulated job's tasks are listed by its API with the job id, shard and queue readable, behind
basic auth; only /metrics and /healthcheck answer without it (Flower's own choice, documented)."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import ROOT, write_jsonl
from kits.fleet import fleet_env, free_port, run_cli

AUTH = "operator:s3cret-flower"
SIMULATED = ["--model", "sim-model", "--sampler_engine", "simulated", "--num_return_sequences", "2",
             "--max_new_tokens", "4", "--no_progress"]


def _get(url: str, auth: str | None = AUTH) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:  # not listening yet
        return 0, b""


def test_flower_lists_a_job_s_tasks_with_their_job_shard_and_queue(tmp_path, redis_server, workers):
    worker = workers.start()
    port = free_port()
    log = (tmp_path / "flower.log").open("w")
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "flower",
                               "--conf=deploy/flowerconfig.py", f"--port={port}"], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT,
                              env=fleet_env(redis_server.url, FLOWER_BASIC_AUTH=AUTH,
                                            FLOWER_DB=str(tmp_path / "flower.db")))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _get(f"{base}/healthcheck", auth=None)[0] != 200:
            assert flower.poll() is None and time.monotonic() < deadline, (tmp_path / "flower.log").read_text()[-3000:]
            time.sleep(0.3)
        data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)])
        job = run_cli("submit", str(data), *SIMULATED, "--shard_size", "2", "--output_dir", str(tmp_path / "out"),
                      "--wait", broker=redis_server.url, cwd=tmp_path)
        assert job.returncode == 0, job.stderr[-2000:]
        job_id = job.stdout.split()[0]

        deadline, ours = time.monotonic() + 60, []
        while time.monotonic() < deadline and len({t["name"] for t in ours}) < 2:
            status, body = _get(f"{base}/api/tasks")
            assert status == 200
            ours = [t for t in json.loads(body).values() if job_id in (t.get("args") or "")]
            time.sleep(0.5)
        generated = {t["args"] for t in ours if t["name"] == "samplefleet.generate"}
        assert generated == {f"('{job_id}', 0, <2 prompts>)", f"('{job_id}', 1, <1 prompts>)"}
        assert {t["name"] for t in ours} >= {"samplefleet.generate", "samplefleet.aggregate"}
        assert all(t["state"] == "SUCCESS" and t["worker"] == worker.name for t in ours)
        assert {t["routing_key"] for t in ours if t["name"] == "samplefleet.generate"} == {"generate.sim-model"}
        assert {t["result"] for t in ours} == {"'done'"}

        # A cancelled job's shards still end as SUCCESS in Celery's terms; the result column tells them apart.
        slow = run_cli("submit", str(data), *SIMULATED, "--shard_size", "1", "--engine_kwargs", '{"shard_seconds": 2}',
                       "--output_dir", str(tmp_path / "out2"), broker=redis_server.url, cwd=tmp_path)
        assert slow.returncode == 0, slow.stderr[-2000:]
        cancelled = slow.stdout.split()[0]
        assert run_cli("cancel", cancelled, broker=redis_server.url, cwd=tmp_path).returncode == 0
        deadline, results = time.monotonic() + 60, []
        while time.monotonic() < deadline and len(results) < 3:
            time.sleep(0.5)
            results = [t.get("result") for t in json.loads(_get(f"{base}/api/tasks")[1]).values()
                       if cancelled in (t.get("args") or "") and t["name"] == "samplefleet.generate" and t.get("result")]
        assert len(results) == 3 and any(r.startswith("'skipped: ") for r in results), results
        # The Broker page lists the queues the workers consume, generate.<model> included once Flower has
        # refreshed its view of the workers (the Workers page's Refresh, or this call).
        assert _get(f"{base}/api/workers?refresh=1")[0] == 200
        queues = {q["name"] for q in json.loads(_get(f"{base}/api/queues/length")[1])["active_queues"]}
        assert {"generate.sim-model", "aggregate", "control", "score"} <= queues

        for path in ("/", "/tasks", "/api/tasks", "/api/workers", "/broker"):
            assert _get(base + path, auth=None)[0] == 401, path
            assert _get(base + path, auth="operator:wrong")[0] == 401, path
        for path in ("/metrics", "/healthcheck"):  # unauthenticated in Flower itself: hence loopback only
            assert _get(base + path, auth=None)[0] == 200, path
    finally:
        flower.terminate()
        flower.wait(20)
        log.close()


def test_flower_refuses_to_start_without_credentials(tmp_path, redis_server):
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.app", "flower", "--conf=deploy/flowerconfig.py",
                           f"--port={free_port()}"], cwd=ROOT, env=fleet_env(redis_server.url), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "FLOWER_BASIC_AUTH" in proc.stderr
