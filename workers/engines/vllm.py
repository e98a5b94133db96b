"""The `vllm` engine: one offline ``LLM`` per worker process, fed whole shards.

One request per prompt with ``SamplingParams(n=N)`` (never N copies of the prompt), the chat template
applied by vLLM once per prompt, so its continuous batching keeps the batch full across a shard.
``--engine_kwargs`` go to ``LLM(...)`` (tensor_parallel_size, gpu_memory_utilization, max_model_len,
enforce_eager, ...). On CPU, vLLM's ``gpu_memory_utilization`` is the share of all RAM it reserves
(0.92 by default, which fails as soon as anything else uses memory): unless it, ``kv_cache_memory_bytes``
or ``VLLM_CPU_KVCACHE_SPACE`` is given, it is sized from the memory free at start (``cpu_memory_share``).
vLLM's CPU build crashes on a per-request seed, so there the seed is given to
``LLM`` once, and a run is reproducible for the same shards in the same order; on GPU each prompt gets
its own seed, derived from its shard's (like the client engine).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from schemas import Candidate, Generation, JobSpec, Prompt, SamplingParams
from schemas.errors import ConfigError, ModelLoadError
from workers.engines.base import Engine, sampling_kwargs
from workers.models import resolve_model

log = logging.getLogger(__name__)


def llm_kwargs(spec: JobSpec) -> dict[str, Any]:
    """``LLM(...)`` arguments: our dtype and seed, then the user's --engine_kwargs on top."""
    kwargs: dict[str, Any] = {"seed": spec.sampling.seed}
    if spec.torch_dtype != "auto":
        kwargs["dtype"] = spec.torch_dtype
    return {**kwargs, **spec.engine_kwargs}


def cpu_memory_share(total: int, available: int) -> float:
    """The ``gpu_memory_utilization`` for vLLM on CPU: half of the memory free now, as a share of all of it
    (vLLM refuses a share above what is free, and the model's weights count against it too)."""
    return round(max(0.01, min(0.9, 0.5 * available / total)), 3)


def _memory_given(kwargs: dict[str, Any]) -> bool:
    return ("gpu_memory_utilization" in kwargs or kwargs.get("kv_cache_memory_bytes") is not None
            or bool(os.environ.get("VLLM_CPU_KVCACHE_SPACE")))


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, kwargs: dict[str, Any]) -> None:
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ModelLoadError(f"--sampler_engine vllm: vLLM is not installed here ({exc}); "
                                 "see `make vllm-venv`") from exc
        self.model_name = model
        if current_platform.is_cpu():
            # vLLM's engine core in this process: a second process imports vLLM again, which doubles the
            # start-up on CPU (bench: 28.5-31.8 s -> 14.5-15.7 s); on GPU the separate core overlaps scheduling
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if not _memory_given(kwargs):
                import psutil  # a dependency of vLLM

                memory = psutil.virtual_memory()
                kwargs = {**kwargs, "gpu_memory_utilization": cpu_memory_share(memory.total, memory.available)}
                log.info("vLLM on CPU: gpu_memory_utilization %.3f of %.1f GiB (%.1f GiB free); set it in "
                         "--engine_kwargs to choose", kwargs["gpu_memory_utilization"], memory.total / 2**30,
                         memory.available / 2**30)
        try:
            self.llm = LLM(model=resolve_model(model), **kwargs)
        except TypeError as exc:
            raise ConfigError(f"--engine_kwargs {kwargs}: rejected by vLLM: {exc}") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"--model {model!r}: vLLM cannot load it: {type(exc).__name__}: {exc}") from exc
        self.per_request_seed = not current_platform.is_cpu()
        self.tokenizer = self.llm.get_tokenizer()
        self.context = int(self.llm.llm_engine.model_config.max_model_len)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "VLLMEngine":
        return cls(spec.model, llm_kwargs(spec))

    def describe(self) -> dict[str, str]:
        import vllm

        return {"engine": self.name, "model": self.model_name, "vllm": vllm.__version__}

    def close(self) -> None:
        """Stop vLLM's engine-core processes now rather than at interpreter exit."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def _length(self, prompt: Prompt) -> int:
        ids = self.tokenizer.apply_chat_template([m.model_dump() for m in prompt.messages], add_generation_prompt=True,
                                                 tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        from vllm import SamplingParams as VLLMSamplingParams

        lengths = [self._length(p) for p in prompts]
        todo = [i for i, n in enumerate(lengths) if n < self.context]
        if self.per_request_seed:  # each prompt its own seed, so duplicate prompts in a shard get other samples
            sampling = [VLLMSamplingParams(**sampling_kwargs(params, seed + i * 1009)) for i in todo]
        else:
            sampling = VLLMSamplingParams(**sampling_kwargs(params, None))
        outputs = self.llm.chat([[m.model_dump() for m in prompts[i].messages] for i in todo], sampling,
                                use_tqdm=False) if todo else []
        by_prompt = dict(zip(todo, outputs))
        out = []
        for i, prompt in enumerate(prompts):
            if i not in by_prompt:
                out.append(Generation(prompt=prompt, skipped=f"prompt has {lengths[i]} tokens; the model's "
                                                             f"context is {self.context}"))
                continue
            out.append(Generation(prompt=prompt, candidates=[
                Candidate(text=c.text, tokens=len(c.token_ids),
                          finish_reason="length" if c.finish_reason == "length" else "stop")
                for c in by_prompt[i].outputs]))
        return out
