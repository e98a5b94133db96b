"""docker-compose.yml is checked against the code it starts (there is no Docker engine here)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CELERY_ROLES = {"generator": "generate", "scorer": "score", "aggregator": "aggregate,control"}


def _source_text() -> str:
    return "\n".join(p.read_text() for folder in ("workers", "producer", "schemas")
                     for p in (ROOT / folder).rglob("*.py"))


def test_services_of_a_fleet_are_there():
    assert {"redis", "generator", "scorer", "aggregator", "flower", "s3", "producer", "metrics"} <= set(SERVICES)


def test_redis_persists_and_never_evicts_and_needs_a_password():
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in command


@pytest.mark.parametrize("service,queues", CELERY_ROLES.items())
def test_worker_pools_start_the_real_app_on_real_queues(service, queues):
    from schemas.fleet import DEFAULT_QUEUES

    command = SERVICES[service]["command"]
    assert command[:4] == ["celery", "-A", "workers.app", "worker"]
    assert command[command.index("-Q") + 1] == queues
    assert set(queues.split(",")) <= set(DEFAULT_QUEUES)
    assert command[command.index("--pool") + 1] == "solo"  # weights load in the worker process, not a parent
    assert "container_name" not in SERVICES[service] and "ports" not in SERVICES[service]  # --scale works


def test_app_module_in_the_commands_imports_and_has_the_tasks():
    from workers.app import app

    import workers.tasks  # noqa: F401

    assert {"samplefleet.generate", "samplefleet.score", "samplefleet.aggregate", "samplefleet.open_job"} <= set(app.tasks)
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"


def test_generator_reserves_a_gpu():
    devices = SERVICES["generator"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1


def test_flower_has_basic_auth_from_the_environment():
    command = " ".join(SERVICES["flower"]["command"])
    assert re.search(r"--basic-auth=\$\{FLOWER_USER[^}]*\}:\$\{FLOWER_PASSWORD[^}]*\}", command)


def test_environment_names_are_ones_the_code_reads():
    source = _source_text()
    env = SERVICES["generator"]["environment"]
    for name in env:
        if name.startswith("SAMPLEFLEET_"):
            assert f'"{name}"' in source, f"{name} is set in compose but read nowhere"
    assert env["SAMPLEFLEET_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")


def test_example_producer_command_parses_as_a_valid_job():
    from producer.cli import _parse
    from producer.options import spec_from_args

    command = SERVICES["producer"]["command"]
    assert command[0] == "producer"
    args = _parse(command[1:])
    spec = spec_from_args(args)
    assert args.wait and spec.output_dir.startswith("s3://")
    assert all((ROOT / d.source).is_file() for d in spec.datasets)


def test_dockerfile_installs_extras_that_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = re.search(r"'\.\[([a-z0-9,]+)\]'", (ROOT / "Dockerfile").read_text()).group(1).split(",")
    assert set(wanted) <= set(extras)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian's package) is not installed; the checks above cover the file")
def test_docker_compose_config_accepts_the_file():
    env = {**os.environ, "REDIS_PASSWORD": "x", "FLOWER_USER": "u", "FLOWER_PASSWORD": "p", "S3_ACCESS_KEY": "a",
           "S3_SECRET_KEY": "s"}
    subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True, env=env)


def test_no_credential_is_written_in_the_file():
    """Every password and key comes from the environment (or an .env file beside it), none from the file."""
    reference = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert reference.match(str(value)), f"{name}: {key} must be ${{VAR:?...}}, not a value"
    command = SERVICES["redis"]["command"]
    assert reference.match(command[command.index("--requirepass") + 1])
    assert re.search(r"^redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@", SERVICES["generator"]["environment"]["SAMPLEFLEET_BROKER_URL"])
