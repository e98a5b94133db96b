"""Reward models: the ORM and PRM registries (``--orm_model`` / ``--prm_model`` name -> factory(spec)).

Built-in factories take the JobSpec. These two are the built-ins only: plugin files add classes swift-style
(``orms['name'] = MyORM``) to a job's own layer over them (``workers.scoring.plugins.load_plugins``).
The built-in models live in ``orm_kinds`` / ``prm_kinds``: a submodule named ``orms`` or ``prms`` would
replace the registry of that name on this package the moment it is imported.
"""
from workers.registry import Registry
from workers.scoring.base import ORM, PRM, InferRequest, RewardModel
from workers.scoring.plugins import plugin_factory

orms: Registry[RewardModel] = Registry("ORM", "--orm_model", {
    "math": "workers.scoring.orm_kinds:MathORM.from_spec",
    "accuracy": "workers.scoring.orm_kinds:AccuracyORM.from_spec",
    "format": "workers.scoring.orm_kinds:FormatORM.from_spec",
    "repetition": "workers.scoring.orm_kinds:RepetitionORM.from_spec",
    "length": "workers.scoring.orm_kinds:LengthORM.from_spec",
    "code": "workers.scoring.code_orm:CodeORM.from_spec",
    "cosine": "workers.scoring.orm_swift:CosineORM.from_spec",
    "soft_overlong": "workers.scoring.orm_swift:SoftOverlongORM.from_spec",
    "react_format": "workers.scoring.orm_swift:ReactFormatORM.from_spec",
    "toolbench": "workers.scoring.orm_swift:ToolBenchORM.from_spec",
}, plugin=plugin_factory)
prms: Registry[RewardModel] = Registry("PRM", "--prm_model", {
    "embedding": "workers.scoring.prm_kinds:EmbeddingPRM.from_spec",
    "client": "workers.scoring.prm_client:ClientPRM.from_spec",
    "qwen_max": "workers.scoring.prm_client:QwenMaxPRM.from_spec",
}, plugin=plugin_factory)

__all__ = ["ORM", "PRM", "InferRequest", "RewardModel", "orms", "prms"]
