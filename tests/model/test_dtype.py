"""``--torch_dtype auto``: bf16 where the hardware runs it natively, else the checkpoint's dtype (workers.dtypes).

The choice is a pure function of its inputs and is checked for each kind of machine; then the real engine and a
real PRM on the demo model load in the dtype that function picks for this machine, ``float32`` forces fp32, and a
real local run records the dtype in its manifest.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.dtypes import NATIVE_BF16_CPU_FLAGS, checkpoint_dtype, choose_dtype, cpu_flags


@pytest.mark.parametrize(("requested", "device", "checkpoint", "flags", "cuda_bf16", "expected"), [
    ("float32", "cuda", "bfloat16", (), True, "float32"),  # an explicit dtype is kept everywhere
    ("bfloat16", "cpu", "float32", (), False, "bfloat16"),
    ("auto", "cuda", "float32", (), True, "bfloat16"),
    ("auto", "cuda:1", None, (), True, "bfloat16"),
    ("auto", "cuda", "float16", (), True, "float16"),  # fp16 is native on CUDA too: its weights are not re-rounded
    ("auto", "cuda", "float32", (), False, "float32"),  # a GPU without bf16 (before Ampere): the checkpoint's
    ("auto", "cpu", "float32", ("avx2", "amx_bf16", "amx_tile"), False, "bfloat16"),
    ("auto", "cpu", "float32", ("avx512f", "avx512_bf16"), False, "bfloat16"),
    ("auto", "cpu", "float16", ("avx512_bf16",), False, "bfloat16"),
    ("auto", "cpu", "float32", ("avx2", "avx512f", "avx512_vnni"), False, "float32"),
    ("auto", "cpu", "bfloat16", ("avx2",), False, "bfloat16"),  # not native, but it is what the checkpoint holds
    ("auto", "cpu", None, ("avx2",), False, "auto"),  # no dtype named: transformers decides from the weights
    ("auto", "mps", "float32", ("amx_bf16",), True, "float32"),  # CPU flags say nothing about another device
])
def test_choice(requested, device, checkpoint, flags, cuda_bf16, expected):
    choice = choose_dtype(requested, device=device, checkpoint=checkpoint, cpu_flags=flags, cuda_bf16=cuda_bf16)
    assert choice.dtype == expected
    assert choice.reason.startswith("--torch_dtype" if requested != "auto" else "auto:")


def test_reason_names_the_flag():
    assert "avx512_bf16" in choose_dtype("auto", device="cpu", checkpoint="float32", cpu_flags={"avx512_bf16"}).reason


@pytest.mark.parametrize(("config", "expected"), [
    ({"dtype": "float32"}, "float32"),
    ({"torch_dtype": "bfloat16"}, "bfloat16"),  # the older spelling
    ({"text_config": {"dtype": "float16"}}, "float16"),  # a multimodal config keeps it in its text part
    ({"architectures": ["LlamaForCausalLM"]}, None),
])
def test_checkpoint_dtype_from_config(tmp_path, config, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(str(tmp_path)) == expected


def test_checkpoint_without_a_readable_config_names_no_dtype(tmp_path):
    assert checkpoint_dtype(str(tmp_path)) is None
    (tmp_path / "config.json").write_text("{not json")
    assert checkpoint_dtype(str(tmp_path)) is None


def test_cpu_flags_include_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    line = next((l for l in cpuinfo.read_text().splitlines() if l.startswith(("flags", "Features"))), None)
    if line is None:
        pytest.skip("/proc/cpuinfo lists no flags")
    assert set(line.partition(":")[2].split()) <= cpu_flags()


def _expected_here(checkpoint: str = "float32") -> str:
    """What auto gives on this machine's CPU (the tests run without a GPU)."""
    return choose_dtype("auto", device="cpu", checkpoint=checkpoint, cpu_flags=cpu_flags()).dtype


@pytest.mark.model
def test_engine_loads_the_chosen_dtype_and_float32_forces_fp32(model_path):
    import torch

    from workers.engines.hf import TransformersEngine

    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    auto = TransformersEngine(model_path)
    described = auto.describe()
    assert str(auto.model.dtype) == f"torch.{_expected_here()}" and described["dtype"] == _expected_here()
    assert described["dtype_reason"].startswith("auto:")
    assert bool(NATIVE_BF16_CPU_FLAGS & cpu_flags()) == (described["dtype"] == "bfloat16")
    forced = TransformersEngine(model_path, torch_dtype="float32")
    assert forced.model.dtype == torch.float32 and forced.describe()["dtype_reason"] == "--torch_dtype"
    pinned = TransformersEngine(model_path, engine_kwargs={"dtype": "float32"})  # --engine_kwargs still wins
    assert pinned.model.dtype == torch.float32 and pinned.describe()["dtype_reason"] == "--engine_kwargs"


@pytest.mark.model
def test_prm_loads_the_chosen_dtype_and_float32_forces_fp32(model_path):
    import torch

    from schemas import DatasetSpec, JobSpec
    from workers.scoring.prm_kinds import load_prm

    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")

    def spec(dtype: str) -> JobSpec:
        return JobSpec(model="m", datasets=[DatasetSpec(source="d.jsonl")], output_file="o.jsonl",
                       prm_model=model_path, torch_dtype=dtype)

    for dtype, expected in (("auto", _expected_here()), ("float32", "float32")):
        prm = load_prm(spec(dtype))
        try:
            assert str(prm.model.dtype) == f"torch.{expected}"
        finally:
            prm.close()


@pytest.mark.model
def test_manifest_records_the_dtype_of_a_local_run(tmp_path, arithmetic, model_path):
    from conftest import run_producer

    done = run_producer(str(arithmetic), "--model", model_path, "--num_return_sequences", "1", "--max_new_tokens",
                        "2", "--output_dir", str(tmp_path / "out"), "--output_file", "o.jsonl", "--log_level", "INFO", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "o.manifest.json").read_text())
    assert manifest["engine"]["dtype"] == _expected_here()
    assert manifest["engine"]["dtype_reason"].startswith("auto:")
    assert f"dtype {_expected_here()} on cpu" in done.stderr  # and the choice is logged
