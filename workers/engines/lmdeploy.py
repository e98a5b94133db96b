"""The `lmdeploy` engine: LMDeploy's ``pipeline``, TurboMind or PyTorch backend.

LMDeploy's ``GenerationConfig(n=...)`` supports only n=1, so each prompt is sent N times, each copy
with its own ``random_seed`` (the per-request equivalent); the pipeline batches them itself.
``--engine_kwargs`` go to the backend config; ``{"backend": "pytorch"}`` picks PyTorch (default
TurboMind). Not run here: LMDeploy needs CUDA and an older torch than this project's CPU machines
have. The request mapping below is a pure function and is tested; the engine is written against
LMDeploy's documented API (``lmdeploy.pipeline``, ``GenerationConfig``, ``TurbomindEngineConfig``,
``PytorchEngineConfig``; a response has ``text``, ``generate_token_len`` and ``finish_reason``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import Candidate, Generation, JobSpec, Prompt, SamplingParams
from schemas.errors import ConfigError, ModelLoadError
from workers.engines.base import Engine, sampling_kwargs
from workers.models import resolve_model

_NAMES = {"max_tokens": "max_new_tokens", "stop": "stop_words"}  # ours (sampling_kwargs) -> GenerationConfig's


def generation_configs(params: SamplingParams, seed: int) -> list[dict[str, Any]]:
    """``GenerationConfig`` keyword arguments for the N copies of one prompt (copy k gets seed + k): LMDeploy's
    names, ``do_sample``, and greedy as LMDeploy spells it (temperature 1, top_k 1)."""
    sampled = params.temperature > 0
    base = {_NAMES.get(k, k): v for k, v in sampling_kwargs(params, None, n=1).items()}
    base.update(do_sample=sampled, stop_words=base.get("stop_words"))  # None: no stop words
    if not sampled:
        base.update(temperature=1.0, top_k=1)
    return [{**base, "random_seed": seed + k} for k in range(params.num_return_sequences)]


def backend_config(spec: JobSpec) -> tuple[str, dict[str, Any]]:
    """(backend name, its config kwargs) from --engine_kwargs and --torch_dtype."""
    kwargs = dict(spec.engine_kwargs)
    backend = kwargs.pop("backend", "turbomind")
    if backend not in ("turbomind", "pytorch"):
        raise ConfigError(f"--engine_kwargs backend {backend!r}: use turbomind or pytorch")
    if spec.torch_dtype in ("float16", "bfloat16"):
        kwargs.setdefault("dtype", spec.torch_dtype)
    return backend, kwargs


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class LMDeployEngine(Engine):
    name = "lmdeploy"

    def __init__(self, model: str, backend: str, kwargs: dict[str, Any]) -> None:
        if not _has_cuda():
            raise ModelLoadError("--sampler_engine lmdeploy needs an NVIDIA GPU with CUDA (both of LMDeploy's "
                                 "backends run only there), and none is visible here; on this machine use "
                                 "--sampler_engine transformers or vllm")
        try:
            import lmdeploy
        except Exception as exc:  # an install built for another CUDA or torch fails with more than ImportError
            raise ModelLoadError(f"--sampler_engine lmdeploy: LMDeploy cannot be imported here: "
                                 f"{type(exc).__name__}: {exc}") from exc
        config_cls = lmdeploy.PytorchEngineConfig if backend == "pytorch" else lmdeploy.TurbomindEngineConfig
        try:
            config = config_cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"--engine_kwargs {kwargs}: rejected by LMDeploy's {config_cls.__name__}: {exc}") from exc
        try:
            self.pipe = lmdeploy.pipeline(resolve_model(model), backend_config=config)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"--model {model!r}: LMDeploy cannot load it: {type(exc).__name__}: {exc}") from exc
        self.model_name, self.version = model, lmdeploy.__version__

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "LMDeployEngine":
        backend, kwargs = backend_config(spec)
        return cls(spec.model, backend, kwargs)

    def describe(self) -> dict[str, str]:
        return {"engine": self.name, "model": self.model_name, "lmdeploy": self.version}

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        from lmdeploy import GenerationConfig

        configs = generation_configs(params, seed)
        requests = [[m.model_dump() for m in p.messages] for p in prompts for _ in configs]
        responses = self.pipe(requests, gen_config=[GenerationConfig(**c) for _ in prompts for c in configs])
        n = len(configs)
        return [Generation(prompt=p, candidates=[
            Candidate(text=r.text, tokens=r.generate_token_len,
                      finish_reason="length" if r.finish_reason == "length" else "stop")
            for r in responses[i * n:(i + 1) * n]]) for i, p in enumerate(prompts)]
