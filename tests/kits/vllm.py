"""A real ``vllm serve`` (OpenAI-compatible) on 127.0.0.1, started once per test session from the vLLM
environment (.venv-vllm, ``make vllm-venv``) with the prepared SmolLM2 test model, served as ``smol``; the
client engine's tests and the client PRM's judge tests share it."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from kits.fleet import free_port

VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="session")
def vllm_server(model_path, tmp_path_factory) -> Iterator[str]:
    if not VLLM_PY.exists():
        pytest.skip("VLLM SERVER TEST NOT RUN: .venv-vllm is missing (`make vllm-venv` builds it; make test does)")
    port = free_port()
    log = Path(tmp_path_factory.mktemp("vllm")) / "serve.log"
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "HF_HUB_OFFLINE": "1"}
    # `python -m ...api_server`, not the `vllm` script: vllm-cpu's script looks up a distribution named "vllm"
    proc = subprocess.Popen([str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
                             "--host", "127.0.0.1", "--port", str(port),
                             "--served-model-name", "smol", "--dtype", "float32", "--enforce-eager",
                             "--max-model-len", "512", "--gpu-memory-utilization", "0.2", "--seed", "0"],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not start: {log.read_text()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
