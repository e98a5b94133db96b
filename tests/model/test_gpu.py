"""The GPU path: the transformers engine and the three transformers PRMs on CUDA, and CUDA_VISIBLE_DEVICES.

Marked ``gpu`` and skipped without CUDA. The models are tiny random-weight Llamas built from configs with the
SmolLM2 tokenizer (only its tokenizer and config files are read: ``$SAMPLEFLEET_CACHE/models/
smollm2-135m-instruct``, which ``bench/gpu/check.sh`` fills from the carried copy on a machine without the
demo model). ``GPU_CHECK_DEVICE=cpu`` (set by ``check.sh --cpu``) runs the same tests on the CPU so they
cannot rot where no GPU is; without it they want CUDA and leave placement to the code under test.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schemas import DatasetSpec, JobSpec, Message, Prompt, SamplingParams

ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("GPU_CHECK_DEVICE") or "cuda"
ON_CPU = DEVICE == "cpu"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# Where a test names no device, the code under test places the model itself (the first visible GPU).
PLACE = {"device": "cpu"} if ON_CPU else {}
QUESTIONS = ["Hi", "What is 2+3? Answer with a number.",
             "Tom has 4 apples and buys 3 more. How many apples does he have now? Think step by step."]


def _prompt(i: int, text: str) -> Prompt:
    return Prompt(id=f"p{i}", row=i, source=f"test row {i}", messages=[Message(role="user", content=text)])


@pytest.fixture(scope="module")
def tokenizer_dir() -> str:
    from workers.models import DEMO_ALIAS, cache_dir

    folder = cache_dir() / "models" / DEMO_ALIAS
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"no SmolLM2 tokenizer at {folder} (make setup, or bench/gpu/check.sh with its carry folder)")
    return str(folder)


def _tiny(folder: Path, tokenizer_dir: str, head: str, context: int, extra_tokens: tuple[str, ...] = (),
          num_labels: int = 2, init: float = 1.0) -> str:
    """A random 2-layer Llama (head: causal / seqcls / tokcls) with the SmolLM2 tokenizer, saved to ``folder``."""
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                              LlamaForTokenClassification)

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if extra_tokens:
        tok.add_tokens(list(extra_tokens), special_tokens=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         num_labels=num_labels, bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id,
                         initializer_range=init, tie_word_embeddings=True)
    cls = {"causal": LlamaForCausalLM, "seqcls": LlamaForSequenceClassification,
           "tokcls": LlamaForTokenClassification}[head]
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("gpu-models")
    return {"lm": _tiny(root / "lm", tokenizer_dir, "causal", context=72, init=0.5),  # a short context: rows end apart
            "judge": _tiny(root / "judge", tokenizer_dir, "causal", context=1024),
            "seqcls": _tiny(root / "seqcls", tokenizer_dir, "seqcls", context=1024, num_labels=1),
            "step": _tiny(root / "step", tokenizer_dir, "tokcls", context=1024, extra_tokens=("<extra_0>",))}


def _close(a: list, b: list, tol: float) -> bool:
    """Same shape, and equal within ``tol`` (relative above 1: a raw reward can be large, and float32 kernels for
    other batch shapes on a GPU sum in another order)."""
    flat = lambda xs: [v for x in xs for v in (x if isinstance(x, list) else [x])]  # noqa: E731
    shape = lambda xs: [len(x) if isinstance(x, list) else 0 for x in xs]  # noqa: E731
    return shape(a) == shape(b) and all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(flat(a), flat(b)))


# ------------------------------------------------------------------------------------------------ engine
def test_engine_bf16_on_the_gpu_samples_n_per_prompt_reproducibly(models):
    from workers.engines.hf import TransformersEngine

    engine = TransformersEngine(models["lm"], torch_dtype="bfloat16", max_batch_size=16, engine_kwargs=PLACE)
    assert engine.model.device.type == DEVICE and engine.model.dtype == torch.bfloat16
    assert engine.describe()["dtype"] == "bfloat16"
    prompts = [_prompt(i, q) for i, q in enumerate(QUESTIONS)]
    params = SamplingParams(num_return_sequences=3, max_new_tokens=8)
    first = engine.generate(prompts, params, seed=5)
    assert [len(g.candidates) for g in first] == [3, 3, 3] and all(g.skipped is None for g in first)
    assert all(1 <= c.tokens <= 8 for g in first for c in g.candidates)
    texts = lambda gens: [c.text for g in gens for c in g.candidates]  # noqa: E731
    assert texts(engine.generate(prompts, params, seed=5)) == texts(first)
    assert len(set(texts(first))) > 3  # the copies of a prompt are sampled apart, not repeated


def test_kv_fan_out_and_row_dropping_on_the_gpu_match_generate(models):
    """One batch whose rows end at different steps (a short context): every copy equals greedy ``generate``."""
    from workers.engines.hf import TransformersEngine

    engine = TransformersEngine(models["lm"], torch_dtype="float32", max_batch_size=16, engine_kwargs=PLACE)
    prompts = [_prompt(i, q) for i, q in enumerate(QUESTIONS)]
    encoded = [engine.encode(p) for p in prompts]
    max_new = 40
    limits = [min(max_new, engine.context - len(e)) for e in encoded]
    params = SamplingParams(num_return_sequences=2, max_new_tokens=max_new, temperature=0)
    assert len(set(limits)) == 3 and min(limits) > 0, (limits, engine.context)  # rows must end apart
    assert len(engine._batches([0, 1, 2], encoded, params)) == 1  # ... within one batch, so rows are dropped
    gens = engine.generate(prompts, params, seed=0)
    for ids, limit, gen in zip(encoded, limits, gens):
        x = torch.tensor([ids], device=engine.model.device)
        ref = engine.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=limit,
                                    pad_token_id=engine.pad_id)
        expected = engine.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)
        assert [c.text for c in gen.candidates] == [expected, expected]
        assert all(c.tokens <= limit for c in gen.candidates)


# -------------------------------------------------------------------------------------------------- PRMs
def _spec(folder: str, dtype: str, **prm_kwargs) -> JobSpec:
    return JobSpec(model="smollm2-135m-instruct", datasets=[DatasetSpec(source="data.jsonl")], output_file="o.jsonl",
                   prm_model=folder, prm_kwargs=PLACE | prm_kwargs, torch_dtype=dtype)


def _requests():
    from workers.scoring.base import InferRequest

    cands = ["5", "Tom starts with 4 apples.\n\nHe buys 3 more, so 4 + 3 = 7.\n\nThe answer is \\boxed{7}.",
             "Step one.\n\nStep two.", "Hello!\n\nAsk me anything."]
    qs = ["What is 2+3?", "Tom has 4 apples and buys 3 more. How many now?", "Count.", "Hi"]
    return ([InferRequest(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": c}])
             for q, c in zip(qs, cands)], ["5", "7", None, None])


@pytest.mark.parametrize("name, kind", [("judge", "JudgePRM"), ("step", "StepPRM"), ("seqcls", "SeqClsPRM")])
def test_prm_on_the_gpu_batched_equals_one_at_a_time(models, name, kind):
    from workers.scoring import prm_kinds

    reqs, answers = _requests()
    prm = prm_kinds.load_prm(_spec(models[name], "float32", batch_size=4))
    try:
        assert type(prm).__name__ == kind
        assert str(prm.device).startswith(DEVICE) and next(prm.model.parameters()).device.type == DEVICE
        batched = prm(reqs, answers)
        prm.batch_size = 1
        single = prm(reqs, answers)
    finally:
        prm.close()
    assert _close(batched, single, 1e-4), (batched, single)
    flat = [v for s in batched for v in (s if isinstance(s, list) else [s])]
    assert all(math.isfinite(v) for v in flat) and len({round(v, 5) for v in flat}) > 1
    if name == "step":
        assert [len(s) for s in batched] == [1, 3, 2, 2]


@pytest.mark.parametrize("name", ["judge", "step", "seqcls"])
def test_prm_in_bf16_on_the_gpu(models, name):
    from workers.scoring import prm_kinds

    reqs, answers = _requests()
    prm = prm_kinds.load_prm(_spec(models[name], "bfloat16", batch_size=3))
    try:
        assert next(prm.model.parameters()).dtype == torch.bfloat16
        scores = prm(reqs, answers)
    finally:
        prm.close()
    flat = [v for s in scores for v in (s if isinstance(s, list) else [s])]
    assert len(scores) == 4 and all(math.isfinite(v) for v in flat)
    if name != "seqcls":  # probabilities
        assert all(0.0 <= v <= 1.0 for v in flat)


# ---------------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES
PROBE = """
import json, sys, torch
from workers.engines.hf import TransformersEngine
from workers.scoring.prm_kinds import SeqClsPRM
engine = TransformersEngine(sys.argv[1], max_batch_size=2)
prm = SeqClsPRM(sys.argv[2])
uuid = str(torch.cuda.get_device_properties(0).uuid) if torch.cuda.is_available() else None
print(json.dumps({"engine": str(engine.model.device), "prm": str(next(prm.model.parameters()).device),
                  "count": torch.cuda.device_count(), "uuid": uuid}))
"""


def _probe(models: dict[str, str], visible: str) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", PROBE, models["lm"], models["seqcls"]], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to select")
def test_cuda_visible_devices_puts_a_worker_on_that_gpu(models):
    """What one worker per GPU relies on: the engine and the PRM land on the one GPU the variable names."""
    index = torch.cuda.device_count() - 1  # the last GPU: not what a process gets by default when there are several
    seen = _probe(models, str(index))
    assert seen["count"] == 1 and seen["engine"] == "cuda:0" and seen["prm"] == "cuda:0"
    assert seen["uuid"] == str(torch.cuda.get_device_properties(index).uuid)


def test_no_visible_gpu_means_the_cpu(models):
    seen = _probe(models, "")
    assert seen == {"engine": "cpu", "prm": "cpu", "count": 0, "uuid": None}
