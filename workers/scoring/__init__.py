"""Reward models: the ORM and PRM registries (``--orm_model`` / ``--prm_model`` name -> factory(spec)).

Built-in factories take the JobSpec; plugin files add classes swift-style (``orms['name'] = MyORM``).
"""
from workers.registry import Registry
from workers.scoring.base import ORM, PRM, InferRequest, RewardModel
from workers.scoring.plugins import check_plugin

orms: Registry[RewardModel] = Registry("ORM", "--orm_model", {
    "math": "workers.scoring.orms:MathORM.from_spec",
    "accuracy": "workers.scoring.orms:AccuracyORM.from_spec",
    "format": "workers.scoring.orms:FormatORM.from_spec",
    "repetition": "workers.scoring.orms:RepetitionORM.from_spec",
    "length": "workers.scoring.orms:LengthORM.from_spec",
}, check=check_plugin)
prms: Registry[RewardModel] = Registry("PRM", "--prm_model", {
    "embedding": "workers.scoring.prms:EmbeddingPRM.from_spec",
}, check=check_plugin)

__all__ = ["ORM", "PRM", "InferRequest", "RewardModel", "orms", "prms"]
