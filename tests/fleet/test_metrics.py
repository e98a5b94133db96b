"""`producer metrics` for real: a Redis server, a worker running a simulated job, the exporter as a process;
the exposition parsed with prometheus_client's own parser, and a scrape with Redis stopped."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, write_jsonl
from producer.metrics import SHARD_STATES
from kits.fleet import fleet_env, free_port, run_cli

SIMULATED = ["--model", "sim-model", "--sampler_engine", "simulated", "--num_return_sequences", "2",
             "--max_new_tokens", "4", "--shard_size", "2", "--no_progress"]


def scrape(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return reply.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def start_exporter(broker: str, tmp_path) -> tuple[subprocess.Popen, int]:
    """`producer metrics` as a process on a free port, once it answers a scrape (tests/deploy/test_prometheus.py too)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "producer", "metrics", "--port", str(port)], cwd=ROOT,
                            env=fleet_env(broker), stdout=(tmp_path / "exporter.log").open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            scrape(port)
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "exporter.log").read_text()[-2000:])
            time.sleep(0.2)


def test_every_metric_has_help_and_type_and_the_job_reads_right(tmp_path, redis_server, workers):
    worker = workers.start()
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)])
    job = run_cli("submit", str(data), *SIMULATED, "--output_dir", str(tmp_path / "out"), "--wait",
                  broker=redis_server.url, cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-2000:]
    job_id = job.stdout.split()[0]
    exporter, port = start_exporter(redis_server.url, tmp_path)
    try:
        text = scrape(port)
        families = list(text_string_to_metric_families(text))
        for family in families:  # the parser makes a family "unknown" with no text when HELP/TYPE are missing
            assert family.type != "unknown" and family.documentation, family.name
            assert f"# HELP {family.name}" in text and f"# TYPE {family.name}" in text
        names = {f.name for f in families}
        assert {"samplefleet_redis_up", "samplefleet_queue_depth", "samplefleet_job_status",
                "samplefleet_job_stage_shards", "samplefleet_job_requeued_shards", "samplefleet_workers_alive",
                "samplefleet_job_samples_per_second", "samplefleet_job_tokens_per_second"} <= names
        got = _samples(text)

        def value(name: str, **labels: str) -> float:
            return got[(name, frozenset(labels.items()))]

        assert value("samplefleet_redis_up", role="broker") == 1 and value("samplefleet_redis_up", role="state") == 1
        assert value("samplefleet_scrape_complete") == 1
        assert not any(labels and "job" in dict(labels) for _, labels in got)  # Prometheus's own label, never ours
        assert value("samplefleet_job_status", job_id=job_id, status="done") == 1
        assert value("samplefleet_job_status", job_id=job_id, status="running") == 0  # done is not "running 0" alone
        assert value("samplefleet_job_shards", job_id=job_id) == 3
        assert value("samplefleet_job_stage_shards", job_id=job_id, stage="aggregate", state="done") == 3
        assert value("samplefleet_job_stage_shards", job_id=job_id, stage="generate", state="failed") == 0
        assert value("samplefleet_job_samples_total", job_id=job_id) == 10
        assert value("samplefleet_job_samples_per_second", job_id=job_id) > 0
        assert value("samplefleet_queue_depth", queue="generate.sim-model") == 0  # the model's own queue is there
        assert value("samplefleet_worker_up", worker=worker.name, seen="ping") == 1
        assert value("samplefleet_workers_alive") >= 1
        idle = _health(worker.name, redis_server.url)
        assert idle.returncode == 0 and "alive (ping)" in idle.stdout, idle.stderr
        assert {s for (n, labels), _ in got.items() if n == "samplefleet_job_stage_shards"
                for k, s in labels if k == "state"} == set(SHARD_STATES)  # no "total" among the states

        redis_server.stop()
        started = time.monotonic()
        down = _samples(scrape(port, timeout=5))
        assert time.monotonic() - started < 2.0
        assert down[("samplefleet_redis_up", frozenset({"role": "broker"}.items()))] == 0
        assert down[("samplefleet_redis_up", frozenset({"role": "state"}.items()))] == 0
        assert down[("samplefleet_scrape_complete", frozenset())] == 0  # Redis refusing connections: incomplete
        assert exporter.poll() is None
    finally:
        exporter.terminate()
        exporter.wait(20)


def test_a_shard_in_flight_counts_its_worker_alive(tmp_path, redis_server, workers):
    """A solo worker busy with a shard answers no ping: its shard still shows it alive and the shard in flight."""
    from producer.fleet import Fleet
    from producer.metrics import registry

    worker = workers.start()
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "slow"}]}])
    job = run_cli("submit", str(data), *SIMULATED, "--engine_kwargs", json.dumps({"shard_seconds": 12}),
                  "--output_dir", str(tmp_path / "out"), broker=redis_server.url, cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-2000:]
    job_id = job.stdout.split()[0]
    reg = registry(Fleet(redis_server.url))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if reg.get_sample_value("samplefleet_job_in_flight_shards", {"job_id": job_id}):
            break
        time.sleep(0.3)
    assert reg.get_sample_value("samplefleet_job_stage_shards",
                                {"job_id": job_id, "stage": "generate", "state": "in_flight"}) == 1
    assert reg.get_sample_value("samplefleet_worker_up", {"worker": worker.name, "seen": "lease"}) == 1
    assert reg.get_sample_value("samplefleet_job_oldest_lease_seconds", {"job_id": job_id}) >= 0
    assert reg.get_sample_value("samplefleet_job_expired_leases", {"job_id": job_id}) == 0  # renewed: not stuck
    assert reg.get_sample_value("samplefleet_workers_busy") == 1
    busy = _health(worker.name, redis_server.url)  # the probe of compose and Kubernetes: a busy worker lives
    assert busy.returncode == 0 and "alive (lease)" in busy.stdout, busy.stderr
    unknown = _health("nobody@nowhere", redis_server.url)
    assert unknown.returncode == 1 and "no pong and no shard held" in unknown.stderr


def _health(name: str, broker: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "worker_health.py"), name], cwd=ROOT,
                          env=fleet_env(broker), capture_output=True, text=True, timeout=60)


def test_an_exporter_without_redis_says_so_at_start():
    """It starts only when Redis answers; once running, a Redis outage reads as samplefleet_redis_up 0."""
    proc = subprocess.run([sys.executable, "-m", "producer", "metrics", "--port", str(free_port())], cwd=ROOT,
                          env=fleet_env(f"redis://127.0.0.1:{free_port()}/0"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr


def test_the_grafana_dashboard_queries_only_metrics_the_exporter_serves(redis_server):
    from producer.fleet import Fleet
    from producer.metrics import registry

    served = set()
    for family in registry(Fleet(redis_server.url)).collect():
        served.add(f"{family.name}_total" if family.type == "counter" else family.name)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "samplefleet.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["description"] and panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"samplefleet_[a-z_]+", target["expr"]))
    assert queried and queried <= served, queried - served
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job_id"}


def test_in_flight_shards_count_by_the_queue_their_stage_came_from():
    """What KEDA scales on beside the waiting messages: running leases only (a retry waiting out its back-off runs
    nowhere), a generate lease of any adaptive wave under the job's model queue."""
    from producer.metrics import in_flight_by_queue
    from schemas.jobstate import HeldLease, JobStatus, Lease

    def lease(stage: str, state: str = "running", wave: int = 0) -> HeldLease:
        held = Lease(stage=stage, index=0, wave=wave, token="t", owner="w@h", state=state, task=f"samplefleet.{stage}",
                     args=["j", 0], queue="q", since=0.0)
        return HeldLease(held, age=1.0, expires_in=20.0)

    job = JobStatus(job_id="j", status="running", shards=4, prompts=8, stages={}, failed={}, created=0.0,
                    finished=None, output=None, counters={}, scored=True, queue="generate.m",
                    running={0: lease("generate", wave=2), 1: lease("score"), 2: lease("generate", "retry"),
                             3: lease("generate")})
    assert in_flight_by_queue([job], ["score", "aggregate"]) == {"generate.m": 2, "score": 1, "aggregate": 0}
