"""What tests/deploy/test_compose.py and tests/deploy/test_k8s.py both check deployment files against: the project's
version, the variables the code and the images' entrypoint read, and a worker command's queues and name."""
from __future__ import annotations

import re
import tomllib

from conftest import ROOT

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
OUR_IMAGES = {"samplefleet-cpu", "samplefleet-gpu"}
NATIVE_FILE_VARIABLES = {"AWS_SHARED_CREDENTIALS_FILE"}  # boto3 reads the file itself


def settings_fields() -> set[str]:
    from schemas.settings import Settings

    return {f"SAMPLEFLEET_{name.upper()}" for name in Settings.model_fields}


def entrypoint_names() -> set[str]:
    """NAME for which the entrypoint turns NAME_FILE into NAME."""
    loop = re.search(r"for name in ([A-Z0-9_ \\\n]+); do", ENTRYPOINT.read_text()).group(1)
    return set(loop.replace("\\", " ").split())


def check_variable(where: str, key: str) -> None:
    """A variable set for a container must be one something reads."""
    base = key.removesuffix("_FILE")
    if key.endswith("_FILE") and key not in NATIVE_FILE_VARIABLES:
        assert base in entrypoint_names(), f"{where}: {key} is not turned into {base} by the entrypoint"
    name = base if key.endswith("_FILE") and key not in NATIVE_FILE_VARIABLES else key
    if name.startswith("SAMPLEFLEET_"):
        assert name in settings_fields(), f"{where}: {key} is read nowhere"


def worker_command(command: list[str]) -> tuple[list[str], str]:
    """(queues, node name) of a `celery -A workers.app worker` command, checked for what a pool needs."""
    assert command[:4] == ["celery", "-A", "workers.app", "worker"], command
    assert command[command.index("--pool") + 1] == "solo"  # weights load in the worker process, not a parent
    assert command[command.index("--loglevel") + 1] == "INFO"  # task lines (received, succeeded) in the log
    name = command[command.index("-n") + 1]
    assert name.endswith("@%h"), name
    return command[command.index("-Q") + 1].split(","), name.removesuffix("%h")


_UNITS = {  # each tool's own memory units
    "redis": {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3},
    "docker": {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3},
    "k8s": {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3},
}


def memory_bytes(value: str | int, tool: str) -> int:
    """Bytes of a memory size as ``tool`` reads it: Redis (``4gb``, any case), docker/compose (``8g``), Kubernetes
    (``16Gi``)."""
    m = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(value))
    unit = m.group(2).lower() if m and tool != "k8s" else (m.group(2) if m else None)
    assert m and unit in _UNITS[tool], f"not a {tool} memory size: {value!r}"
    return int(m.group(1)) * _UNITS[tool][unit]


def check_redis_memory(args: list[str], limit: str, tool: str) -> None:
    """maxmemory set, at most half the container's memory limit (an AOF rewrite's fork can double the pages), and
    noeviction: at maxmemory Redis refuses writes instead of dropping queued shards or job state."""
    assert "--maxmemory" in args, "no --maxmemory: Redis would grow to its limit and be OOM-killed"
    assert memory_bytes(args[args.index("--maxmemory") + 1], "redis") <= memory_bytes(limit, tool) // 2
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
