"""The engine registry: ``--sampler_engine`` name -> engine factory taking the JobSpec."""
from workers.engines.base import Engine
from workers.registry import Registry

ENGINES: Registry[Engine] = Registry(
    "engine", "--sampler_engine",
    {"transformers": "workers.engines.hf:TransformersEngine.from_spec",
     "vllm": "workers.engines.vllm:VLLMEngine.from_spec",
     "lmdeploy": "workers.engines.lmdeploy:LMDeployEngine.from_spec",
     "client": "workers.engines.client:ClientEngine.from_spec",
     "no": "workers.engines.cache:CacheEngine.from_spec",
     "simulated": "workers.engines.simulated:SimulatedEngine.from_spec"},  # a benchmark tool, not a sampler
    aliases={"pt": "transformers"},
)

__all__ = ["ENGINES", "Engine"]
