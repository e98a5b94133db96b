"""deploy/k8s/, checked offline: every built-in object against Kubernetes' own schemas (PyPI's
kubernetes-validate, strict: an unknown field fails), ScaledObjects against KEDA's own CRD schema (a fixture
with its version: kubernetes-validate has no CRD schemas) closed as strict field validation closes it, and all
of them against the code: images, commands, queues, variables, secrets, probes, autoscaling, Redis' memory.
"""
from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from conftest import ROOT
from kits.deploy import OUR_IMAGES, VERSION, check_redis_memory, check_variable, worker_command

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) "
                                          "is not installed")

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # the oldest supported release we name, and the newest
DOCS = [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text()) if doc]
BY_KIND: dict[str, dict[str, dict]] = {}
for _, _doc in DOCS:
    BY_KIND.setdefault(_doc["kind"], {})[_doc["metadata"]["name"]] = _doc
DEPLOYMENTS = BY_KIND["Deployment"]
WORKERS = {name: d for name, d in DEPLOYMENTS.items() if d["spec"]["template"]["spec"]["containers"][0]["args"][3:4]
           == ["worker"]}
SECRET_MOUNT = "/secrets"

# KEDA's own ScaledObject schema (its CRD's openAPIV3Schema, version in the fixture). The API server rejects unknown
# fields of such a structural schema under strict field validation (`kubectl apply --validate=strict`), so every
# object that lists its properties is closed here the same way.
KEDA_CRD = yaml.safe_load((ROOT / "tests" / "fixtures" / "keda-scaledobject-schema.yaml").read_text())


def _strict(schema: dict) -> dict:
    schema = {k: ({n: _strict(v) for n, v in s.items()} if k == "properties" else
                  _strict(s) if k in ("items", "additionalProperties") and isinstance(s, dict) else s)
              for k, s in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


SCALED_OBJECT = _strict(KEDA_CRD["openAPIV3Schema"])
# KEDA's trigger metadata is a map of strings; what each scaler used here needs (KEDA's redis-lists and
# prometheus scaler docs), for a misspelt key to fail:
TRIGGER_KEYS = {"redis": ({"listName", "listLength"}, {"address", "host", "port", "listName", "listLength",
                                                       "activationListLength", "databaseIndex", "enableTLS",
                                                       "unsafeSsl", "usernameFromEnv", "passwordFromEnv",
                                                       "addressFromEnv"}),
                "prometheus": ({"serverAddress", "query", "threshold"}, {"serverAddress", "query", "threshold",
                                                                          "activationThreshold", "namespace",
                                                                          "ignoreNullValues"})}
TRIGGER_AUTHENTICATION = {  # no CRD schema of KEDA's kept for it: the fields used here, from KEDA's docs
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "secretTargetRef": {"type": "array", "items": {
                "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                               "key": {"type": "string"}}}},
            "env": {"type": "array"}}}}}


def _check_keda(doc: dict) -> None:
    if doc["kind"] == "TriggerAuthentication":
        jsonschema.validate(doc, TRIGGER_AUTHENTICATION)
        return
    assert doc["apiVersion"] == "keda.sh/v1alpha1" and doc["kind"] == "ScaledObject"
    jsonschema.validate(doc, SCALED_OBJECT)
    for trigger in doc["spec"]["triggers"]:
        required, known = TRIGGER_KEYS[trigger["type"]]
        keys = set(trigger["metadata"])
        if not required <= keys or not keys <= known:
            raise jsonschema.ValidationError(f"{trigger['type']} trigger: missing {sorted(required - keys)}, "
                                             f"unknown {sorted(keys - known)}")


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def _container(deployment: dict) -> dict:
    return _pod(deployment)["containers"][0]


def _env(deployment: dict) -> dict[str, str]:
    """The container's variables: the ConfigMaps it loads, then its own."""
    container = _container(deployment)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(BY_KIND["ConfigMap"][source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


def _mounted_secret_keys(pod: dict) -> set[str]:
    container = pod["containers"][0]
    mounted = {m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == SECRET_MOUNT}
    return {item["path"] for v in pod.get("volumes", []) if v["name"] in mounted for item in v["secret"]["items"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,doc", [(f"{n}:{d['kind']}/{d['metadata']['name']}", d) for n, d in DOCS
                                      if not d["apiVersion"].startswith("keda.sh/")])
def test_builtin_objects_match_the_kubernetes_schema(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("name,doc", [(f"{d['kind']}/{d['metadata']['name']}", d) for _, d in DOCS
                                      if d["apiVersion"].startswith("keda.sh/")])
def test_keda_objects_match_kedas_own_schema(name, doc):
    _check_keda(doc)


def test_a_misspelt_field_is_caught():
    """The checks above would catch a typo: strict validation refuses unknown fields."""
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENTS["scorer"]))
    _container(broken)["livenesProbe"] = _container(broken).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    keda = yaml.safe_load(yaml.safe_dump(BY_KIND["ScaledObject"]["scorer"]))
    keda["spec"]["triggers"][0]["metadata"]["listname"] = keda["spec"]["triggers"][0]["metadata"].pop("listName")
    with pytest.raises(jsonschema.ValidationError):
        _check_keda(keda)
    keda = yaml.safe_load(yaml.safe_dump(BY_KIND["ScaledObject"]["scorer"]))
    behavior = keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaledown"] = behavior.pop("scaleDown")
    with pytest.raises(jsonschema.ValidationError, match="scaledown"):  # KEDA's schema itself, closed
        _check_keda(keda)


def test_kustomization_lists_every_manifest_and_pins_our_images():
    assert sorted(KUSTOMIZATION["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    assert {i["name"]: i["newTag"] for i in KUSTOMIZATION["images"]} == {image: VERSION for image in OUR_IMAGES}
    assert BY_KIND["Namespace"] == {KUSTOMIZATION["namespace"]: BY_KIND["Namespace"][KUSTOMIZATION["namespace"]]}


def test_images_are_ours_and_pinned_generators_on_the_gpu_image():
    for name, deployment in DEPLOYMENTS.items():
        image = _container(deployment)["image"]
        assert image == f"samplefleet-{'gpu' if name == 'generator' else 'cpu'}:{VERSION}", name
    assert BY_KIND["StatefulSet"]["redis"]["spec"]["template"]["spec"]["containers"][0]["image"] == \
        yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["image"]


@pytest.mark.parametrize("name", ["generator", "scorer", "aggregator"])
def test_worker_pools_run_the_real_app_on_the_code_s_queues(name):
    from schemas.fleet import DEFAULT_QUEUES, model_queue

    deployment = WORKERS[name]
    queues, node = worker_command(_container(deployment)["args"])
    if name == "generator":  # pinned to one model: its queue is the one the producer sends that model's shards to
        assert queues == [model_queue(_env(deployment)["SAMPLEFLEET_PRELOAD_MODEL"])]
    else:
        assert set(queues) <= set(DEFAULT_QUEUES)
    assert "command" not in _container(deployment)  # args only: the image's entrypoint reads the *_FILE secrets
    for probe, mode in (("readinessProbe", "ready"), ("livenessProbe", "live"), ("startupProbe", "ready")):
        if probe not in _container(deployment):
            continue
        command = " ".join(_container(deployment)[probe]["exec"]["command"])  # liveness never asks Redis
        assert f"docker-entrypoint.sh python /app/deploy/worker_health.py {mode} {node}$HOSTNAME" in command
    from workers.preemption import EXIT_MARGIN

    soft = float(_env(deployment)["SAMPLEFLEET_SOFT_SHUTDOWN"])  # SIGKILL only after the worker has left on its own
    assert _pod(deployment)["terminationGracePeriodSeconds"] >= soft + EXIT_MARGIN


def test_generators_take_one_gpu_each():
    resources = _container(WORKERS["generator"])["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert all("nvidia.com/gpu" not in _container(d)["resources"].get("limits", {}) for n, d in DEPLOYMENTS.items()
               if n != "generator")
    assert "replicas" not in WORKERS["generator"]["spec"]  # KEDA owns the count


def test_every_pool_scales_on_each_of_its_queues_waiting_and_running():
    """Waiting: each queue's Redis list. Running: the exporter's in-flight shards of exactly those queues, one per
    pod, so the HPA (the larger of the two) never scales below the shards in flight."""
    from producer.metrics import FleetCollector, Snapshot

    served = {f.name for f in FleetCollector._metrics(FleetCollector.__new__(FleetCollector), Snapshot(), 0.0)}
    scaled = BY_KIND["ScaledObject"]
    redis_host = f"redis.{KUSTOMIZATION['namespace']}.svc.cluster.local:6379"
    assert set(scaled) == set(WORKERS)
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] in WORKERS
        queues, _ = worker_command(_container(WORKERS[name])["args"])
        waiting = [t for t in obj["spec"]["triggers"] if t["type"] == "redis"]
        running = [t for t in obj["spec"]["triggers"] if t["type"] == "prometheus"]
        assert sorted(t["metadata"]["listName"] for t in waiting) == sorted(queues), name
        for trigger in waiting:
            assert trigger["metadata"]["address"] == redis_host and trigger["metadata"]["databaseIndex"] == "0"
            assert trigger["authenticationRef"]["name"] in BY_KIND["TriggerAuthentication"]
        assert len(running) == 1 and running[0]["metadata"]["threshold"] == "1", name
        query = running[0]["metadata"]["query"]
        metric, selector = re.fullmatch(r"sum\((\w+)\{queue=~?\"([^\"]+)\"\}\)", query).groups()
        assert metric == "samplefleet_queue_in_flight" and metric in served
        assert sorted(selector.split("|")) == sorted(queues), name
        scale_down = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 300, name  # longer than a shard's stage
        assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}], name
    assert scaled["generator"]["spec"]["minReplicaCount"] == 0  # scale to zero when nothing waits
    assert scaled["aggregator"]["spec"]["minReplicaCount"] >= 1  # control answers a new job at once


def test_secrets_are_files_the_secret_has_and_never_values():
    import sys

    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from make_secrets import contents
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    keys = set(contents())
    assert contents()["broker_url"].endswith("@redis:6379/0")  # the Service's name, database 0 as KEDA reads
    for ref in BY_KIND["TriggerAuthentication"]["samplefleet-redis"]["spec"]["secretTargetRef"]:
        assert ref["key"] in keys and ref["name"] == "samplefleet-secrets"
    pods = {name: _pod(d) for name, d in DEPLOYMENTS.items()} | {"redis": BY_KIND["StatefulSet"]["redis"]["spec"][
        "template"]["spec"]}
    for name, pod in pods.items():
        mounted = _mounted_secret_keys(pod)
        assert mounted <= keys, name
        env = _env(DEPLOYMENTS[name]) if name in DEPLOYMENTS else {}
        for key, value in env.items():
            check_variable(name, key)
            if key.endswith("_FILE"):
                assert value.removeprefix(f"{SECRET_MOUNT}/") in mounted, f"{name}: {key}={value} is not mounted"
            assert not any(word in key for word in ("PASSWORD", "SECRET", "BASIC_AUTH")) or key.endswith("_FILE")
        for container in pod["containers"]:
            assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in container.get("env", []))
    assert {"redis_conf", "redis_password"} <= _mounted_secret_keys(pods["redis"])


def test_redis_persists_never_evicts_and_caps_its_memory():
    args = BY_KIND["StatefulSet"]["redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["redis-server", f"{SECRET_MOUNT}/redis_conf"] and "--requirepass" not in args
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--maxmemory-policy") + 1] == "noeviction"
    check_redis_memory(args, BY_KIND["StatefulSet"]["redis"]["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["memory"], "k8s")
    claim = BY_KIND["StatefulSet"]["redis"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = BY_KIND["StatefulSet"]["redis"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": claim, "mountPath": args[args.index("--dir") + 1]} in mounts


def test_flower_and_exporter_run_the_documented_commands():
    from producer.cli import _parse

    flower = _container(DEPLOYMENTS["flower"])
    assert flower["args"][:4] == ["celery", "-A", "workers.app", "flower"]
    assert "--conf=/app/deploy/flowerconfig.py" in flower["args"]
    assert _env(DEPLOYMENTS["flower"])["FLOWER_BASIC_AUTH_FILE"] == f"{SECRET_MOUNT}/flower_basic_auth"
    args = _parse(_container(DEPLOYMENTS["exporter"])["args"][1:])
    assert args.command == "metrics" and args.port == 9808
    for name in ("flower", "exporter"):
        service = BY_KIND["Service"][name]
        assert service["spec"]["type"] == "ClusterIP"  # never exposed outside the cluster by these files
        assert service["spec"]["selector"] == DEPLOYMENTS[name]["spec"]["selector"]["matchLabels"]


def test_every_container_has_probes_and_every_pool_a_disruption_budget():
    for name, deployment in DEPLOYMENTS.items():
        container = _container(deployment)
        assert container.get("readinessProbe") and container.get("livenessProbe"), name
        assert _pod(deployment)["securityContext"]["runAsNonRoot"] is True
    budgets = BY_KIND["PodDisruptionBudget"]
    for name in WORKERS:
        assert budgets[name]["spec"]["selector"]["matchLabels"] == WORKERS[name]["spec"]["selector"]["matchLabels"]
