"""--use_hf false: ModelScope ids for --model, --dataset and --prm_model, read with the modelscope library.

Nothing here reaches modelscope.cn: every test sets MODELSCOPE_OFFLINE or points MODELSCOPE_ENDPOINT at a closed
local port. The "not installed" cases block the import (``sys.modules["modelscope"] = None``), so they run with or
without modelscope; the cache cases need it (``pip install modelscope``) and skip without it.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE, ROOT, read_jsonl, run_producer, write_jsonl
from producer.datasets import PromptStream
from schemas import JobSpec
from schemas.errors import ConfigError, DataError, ModelLoadError
from test_options import spec
from workers import hub
from workers.models import hub_models

HAS_MODELSCOPE = importlib.util.find_spec("modelscope") is not None
needs_modelscope = pytest.mark.skipif(not HAS_MODELSCOPE, reason="modelscope is not installed "
                                      "(pip install modelscope==1.40.2)")
DATA = ["data.jsonl", "--model", "demo/smollm2"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_OFFLINE", "1")
    hub._probe.cache_clear()


@pytest.fixture
def no_modelscope(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if modelscope were not installed: its import fails and find_spec says None."""
    monkeypatch.setitem(sys.modules, "modelscope", None)


@pytest.fixture(scope="module")
def _ms_folder(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Path:
    """A modelscope cache holding model demo/smollm2 (the test model) and dataset demo/arith, in the layout
    modelscope 1.40 writes: {cache}/{models|datasets}/{owner}--{name}/snapshots/master/. One per module:
    modelscope reads MODELSCOPE_CACHE once per process."""
    cache = tmp_path_factory.mktemp("mscache")
    model = cache / "models" / "demo--smollm2" / "snapshots" / "master"
    model.mkdir(parents=True)
    for file in Path(model_path).iterdir():
        (model / file.name).symlink_to(file)
    data = cache / "datasets" / "demo--arith" / "snapshots" / "master"
    data.mkdir(parents=True)
    write_jsonl(data / "train.jsonl", [{"query": f"What is {a}+{a}?", "response": str(2 * a)} for a in (1, 2, 3)])
    return cache


@pytest.fixture
def ms_cache(_ms_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(_ms_folder))
    return _ms_folder


def test_use_hf_true_is_the_default_and_reaches_the_spec():
    assert spec(*DATA).use_hf is True and spec(*DATA, "--use-hf").use_hf is True
    off = spec(*DATA, "--use_hf", "false")
    assert off.use_hf is False
    assert json.loads(off.model_dump_json())["use_hf"] is False  # travels to fleet workers in the JobSpec


@pytest.mark.parametrize("argv, option, repo", [
    (["data.jsonl", "--model", "Qwen/Qwen2.5-0.5B-Instruct"], "--model", "Qwen/Qwen2.5-0.5B-Instruct"),
    (["AI-ModelScope/alpaca-gpt4-data-en", "--model", "m"], "--dataset", "AI-ModelScope/alpaca-gpt4-data-en"),
    (["data.jsonl", "--sampler_engine", "no", "--cache_files", "c.jsonl", "--prm_model", "Shanghai_AI/prm"],
     "--prm_model", "Shanghai_AI/prm"),
])
def test_not_installed_is_a_usage_error_naming_the_option(no_modelscope, argv, option, repo):
    with pytest.raises(ConfigError) as err:
        spec(*argv, "--use_hf", "false")
    assert str(err.value) == (f"{option} {repo!r} with --use_hf false is a ModelScope id, read with the modelscope "
                              "library, which is not installed: pip install modelscope (or pass --use_hf true for a "
                              "Hugging Face id)")


def test_not_installed_leaves_folders_aliases_and_served_names_alone(no_modelscope, tmp_path, monkeypatch):
    folder = tmp_path / "owner" / "model"
    folder.mkdir(parents=True)
    assert spec("data.jsonl", "--model", "smollm2-135m-instruct", "--use_hf", "false").use_hf is False
    assert spec("data.jsonl", "--model", str(folder), "--use_hf", "false").use_hf is False
    monkeypatch.chdir(tmp_path)  # a relative owner/name that exists is a folder, not an id
    assert spec("data.jsonl", "--model", "owner/model", "--use_hf", "false").use_hf is False
    client = spec("data.jsonl", "--model", "Qwen/Qwen2.5-7B", "--sampler_engine", "client", "--base_url",
                  "http://h:8000/v1", "--use_hf", "false")
    assert hub_models(client, "model") is client  # a name the endpoint serves: nothing to fetch


def test_not_installed_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"query": "hi"}])
    code = ("import sys; sys.modules['modelscope'] = None; from producer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, "submit", "--no_progress", "data.jsonl", "--model",
                           "Qwen/Qwen2.5-0.5B-Instruct", "--use_hf", "false"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "producer: error: --model 'Qwen/Qwen2.5-0.5B-Instruct' with --use_hf false is a ModelScope id, read with the "
        "modelscope library, which is not installed: pip install modelscope (or pass --use_hf true for a Hugging "
        "Face id)"]


def test_not_installed_on_a_worker_is_a_config_error(no_modelscope):
    job = JobSpec(model="m", prm_model="a/b", use_hf=False, datasets=[{"source": "d.jsonl"}], output_file="o.jsonl")
    with pytest.raises(ConfigError, match="^--prm_model 'a/b' with --use_hf false .* pip install modelscope"):
        hub_models(job, "prm_model")


@needs_modelscope
def test_offline_switch_fails_at_once_for_an_uncached_model_and_dataset(ms_cache):
    job = spec("nobody/no-data", "--model", "nobody/no-model", "--use_hf", "false")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="^--model 'nobody/no-model': not in the local ModelScope cache, and "
                                             "the ModelScope hub is offline: MODELSCOPE_OFFLINE is set$"):
        hub_models(job, "model")
    with pytest.raises(DataError, match="^--dataset 'nobody/no-data': not in the local ModelScope cache, and the "
                                        "ModelScope hub is offline: MODELSCOPE_OFFLINE is set$"):
        PromptStream(job).count()
    assert time.monotonic() - started < 10


@needs_modelscope
def test_an_unreachable_endpoint_fails_after_one_probe(ms_cache, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("MODELSCOPE_OFFLINE")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=f"the ModelScope hub is offline: 127.0.0.1:{port} cannot be reached"):
        hub_models(spec(*DATA, "--prm_model", "nobody/prm", "--use_hf", "false"), "prm_model")
    assert time.monotonic() - started < 10
    # a cached model still loads: the unreachable hub means "read the cache"
    assert hub_models(spec(*DATA, "--use_hf", "false"), "model").model == str(
        ms_cache / "models" / "demo--smollm2" / "snapshots" / "master")


@needs_modelscope
def test_cached_model_and_dataset_resolve_offline(ms_cache):
    job = spec("demo/arith#4", "--model", "demo/smollm2", "--use_hf", "false")
    assert hub_models(job, "model").model == str(ms_cache / "models" / "demo--smollm2" / "snapshots" / "master")
    stream = PromptStream(job)
    assert stream.count() == 4  # #4 of 3 rows: all of them and one more
    assert {p.messages[-1].content for p in stream.iterate(4)} == {f"What is {a}+{a}?" for a in (1, 2, 3)}
    assert hub_models(spec(*DATA), "model").model == "demo/smollm2"  # --use_hf true: left to Hugging Face


def _plumbed() -> bool:
    """Whether the worker's engine loading fetches ModelScope ids (workers.generate.load_engine -> hub_models)."""
    import workers.generate

    return "hub_models" in inspect.getsource(workers.generate)


@pytest.mark.model
@needs_modelscope
@pytest.mark.skipif(not _plumbed(), reason="workers/generate.py does not call workers.models.hub_models yet")
def test_submit_samples_a_cached_modelscope_model_offline(ms_cache, tmp_path):
    done = run_producer("demo/arith", "--model", "demo/smollm2", "--use_hf", "false", "--num_return_sequences", "1",
                        "--max_new_tokens", "4", "--output_dir", str(tmp_path / "out"), "--output_file", "ms.jsonl",
                        cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(tmp_path / "out" / "ms.jsonl")
    assert len(rows) == 3 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
