"""The reward-model checks made before any work: names, plugin files, ``--orm_kwargs`` / ``--prm_kwargs``,
weights and thresholds.

The producer calls ``check_scoring`` first thing, in the embedded run and before a fleet submit, so a typo
in ``--orm_model`` is one ConfigError line (exit code 2) before any dataset is counted, any model loads, any
progress bar shows or any output folder is made. Plugin files are imported here (and their classes checked),
not built: a plugin's constructor may load a model. Built-in reward models check their options through
``RewardModel.check_spec``, which builds the cheap ones and only reads the options of those with weights.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from schemas.errors import ConfigError
from workers.scoring.plugins import JobRegistries, load_plugins

if TYPE_CHECKING:
    from schemas import JobSpec


def _finite(spec: JobSpec) -> None:
    numbers = {"--prm_threshold": [spec.prm_threshold], "--easy_query_threshold": [spec.easy_query_threshold],
               "--pair_margin": [spec.pair_margin], "--orm_weights": spec.orm_weights or []}
    for option, values in numbers.items():
        if any(v is not None and not math.isfinite(v) for v in values):
            shown = values if option == "--orm_weights" else values[0]
            raise ConfigError(f"{option} {shown}: must be a finite number")


def _built_in(registry, name: str) -> type | None:
    """The class behind a built-in entry (``Class.from_spec``), None for a plugin's."""
    if name in registry.entries_added():
        return None
    return getattr(registry.factory(name), "__self__", None)


def _no_options(option: str, kwargs: dict, kind: str, name: str) -> None:
    if kwargs:
        raise ConfigError(f"{option} {sorted(kwargs)}: {kind} {name!r} is a plugin class, built with no arguments as "
                          "swift builds it; set its options in the plugin file")


def _check_orms(spec: JobSpec, registries: JobRegistries) -> None:
    from workers.score import one_orm

    for name in spec.orm_names:
        registries.orms.canonical(name)  # an unknown name lists the known ones
    for name in spec.orm_names:
        own = one_orm(spec, name)
        cls = _built_in(registries.orms, name)
        if cls is None:
            _no_options("--orm_kwargs", own.orm_kwargs, "ORM", name)
        else:
            cls.check_spec(own)


def _check_prm(spec: JobSpec, registries: JobRegistries) -> None:
    from workers.hub import modelscope_ids
    from workers.scoring.prm_kinds import check_prm_spec

    name = spec.prm_model
    if name in registries.prms:
        cls = _built_in(registries.prms, name)
        if cls is None:
            _no_options("--prm_kwargs", spec.prm_kwargs, "PRM", name)
        else:
            cls.check_spec(spec)
    elif "prm_model" not in modelscope_ids(spec):
        check_prm_spec(spec)


def check_scoring(spec: JobSpec) -> None:
    """Every reward-model setting of the job that can be checked without loading a model; a ConfigError
    naming the option, the plugin file or the name (with the known ones) otherwise."""
    _finite(spec)
    registries = load_plugins(spec.external_plugins)  # imported even when unused, as swift imports them
    if not spec.scored:
        return
    _check_orms(spec, registries)
    if spec.prm_model:
        _check_prm(spec, registries)
