"""The exporter, the Grafana dashboard and the alert rules against a real Prometheus (Debian's `prometheus`
package: the server and promtool). Prometheus scrapes `producer metrics` every 2 s (a scrape waits 0.8 s for pongs) during a live job run by
a real Celery worker (the `simulated` engine), and every panel's query, dashboard variables substituted, must
return at least one series while the job runs, as must KEDA's queries for the running work (deploy/k8s/keda.yaml);
the rules load in the server and pass `promtool test rules`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_jsonl
from kits.fleet import free_port, run_cli, until
from test_metrics import SIMULATED, start_exporter

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "samplefleet.json").read_text())
MISSING = [tool for tool in ("prometheus", "promtool") if not shutil.which(tool)]
needs_prometheus = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (Debian's "
                                      "`prometheus` package; `make test` apt-installs it where it can)")


@needs_prometheus
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=RULES.parent, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"SamplefleetWorkerDown", "SamplefleetShardStuck", "SamplefleetNoProgress", "SamplefleetRedisDown",
            "SamplefleetShardsFailed"} <= names


def _api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:  # a bad query: Prometheus says why in the body
        raise AssertionError(f"{params}: {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]


def _value(port: int, query: str) -> float:
    """The single value ``query`` returns now."""
    return float(_api(port, "query", query=query)["result"][0]["value"][1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A Prometheus server on a free 127.0.0.1 port with its own storage; the caller writes its targets file."""
    port, targets = free_port(), tmp_path / "targets.json"
    targets.write_text("[]")
    config = {"global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "samplefleet", "file_sd_configs": [
                  {"files": [str(targets)], "refresh_interval": "1s"}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "prometheus.log").read_text()[-3000:])
                time.sleep(0.2)
        yield targets, port
    finally:
        proc.terminate()
        proc.wait(30)


def _panel_queries(job_id: str) -> list[tuple[str, dict]]:
    """Every (panel title, target) of the dashboard, its variables replaced as Grafana does for one job."""
    names = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert "job_id" in names and re.fullmatch(r"[\w-]+", job_id)  # no regex character to escape in a job id
    out = []
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("${job_id}", job_id).replace("$job_id", job_id)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not know in {expr}"
            out.append((panel["title"], {**target, "expr": expr}))
    return out


def _keda_queries(generate_queue: str) -> list[tuple[str, str]]:
    """The Prometheus queries of deploy/k8s/keda.yaml's ScaledObjects, the generator's model queue replaced."""
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda.yaml").read_text())
    return [(doc["metadata"]["name"], re.sub(r"generate\.[\w.-]+", generate_queue, t["metadata"]["query"]))
            for doc in docs if doc and doc["kind"] == "ScaledObject"
            for t in doc["spec"]["triggers"] if t["type"] == "prometheus"]


@needs_prometheus
def test_every_panel_returns_series_from_a_real_prometheus_during_a_live_job(tmp_path, redis_server, workers,
                                                                              prometheus):
    targets, port = prometheus
    workers.start()
    exporter, metrics_port = start_exporter(redis_server.url, tmp_path)
    try:
        targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{metrics_port}"]}]))
        data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"}]}
                                                  for i in range(24)])  # 12 shards of 5 s: running throughout
        job = run_cli("submit", str(data), *SIMULATED, "--engine_kwargs", json.dumps({"shard_seconds": 5}),
                      "--output_dir", str(tmp_path / "out"), broker=redis_server.url, cwd=tmp_path)
        assert job.returncode == 0, job.stderr[-2000:]
        job_id = job.stdout.split()[0]
        running = f'samplefleet_job_status{{job_id="{job_id}",status="running"}}'
        deadline = time.monotonic() + 60  # rate() and increase() need two samples of the job's series
        while not _api(port, "query", query=f"count_over_time({running}[1m]) >= 3")["result"]:
            assert time.monotonic() < deadline, f"Prometheus did not scrape the job's series: {_api(port, 'targets')}"
            time.sleep(0.5)
        assert _api(port, "label/job_id/values", **{"match[]": "samplefleet_job_status"}) == [job_id]
        assert _api(port, "label/exported_job/values") == []  # nothing of ours collides with the target label
        # one scrape's worker pings may miss their 0.8 s on a loaded machine: one of the next 5 scrapes (2 s apart)
        # must say complete
        until(lambda: _value(port, "samplefleet_scrape_complete") == 1, timeout=10, every=0.5)
        empty = []
        for title, target in _panel_queries(job_id):
            result = _api(port, "query", query=target["expr"])["result"]
            if not result:
                empty.append(f"{title}: {target['expr']}")
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                assert all(label in series["metric"] for series in result), f"{title}: legend {{{{{label}}}}}"
        assert not empty, "panels with no series: " + "; ".join(empty)
        for name, query in _keda_queries("generate.sim-model"):  # what KEDA asks for the running work
            result = _api(port, "query", query=query)["result"]
            assert len(result) == 1, f"ScaledObject {name}: {query} -> {result}"
            if name == "generator":  # the job's shard in flight keeps its pod (a scrape may fall in the
                # milliseconds between one shard's end and the next one's lease: KEDA's cooldown covers those)
                until(lambda: _value(port, query) >= 1, timeout=10, every=0.5)
        progress = dict(_panel_queries(job_id))["Job progress"]["expr"]
        assert 0 <= _value(port, progress) < 1
        assert _value(port, running) == 1  # still running: live
        rules = _api(port, "rules")["groups"][0]["rules"]
        assert rules and all(rule["health"] in ("ok", "unknown") for rule in rules), rules
        assert {r["name"] for r in rules if r["state"] == "firing"} <= {"SamplefleetExporterDown"}  # before 1st scrape
    finally:
        exporter.terminate()
        exporter.wait(20)
