"""The process's warm engine and scorer: loaded once, reused by every job that would load the same.

Each is keyed by its option group of the JobSpec (``Group.ENGINE``, ``Group.SCORING``; schemas/job.py): a job
that differs in any option of the group gets a fresh load, the old one closed first. An option added to the
group is in the key with nothing else to change; tests/unit/test_warm.py fails for an option a loader reads
that is not in its group.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from schemas import JobSpec
from schemas.job import Group, fields_in
from workers.engines import Engine
from workers.generate import load_engine
from workers.score import Scorer
from workers.scoring.plugins import plugin_key

Loaded = TypeVar("Loaded", Engine, Scorer)
_loaded: dict[Group, tuple[str, Engine | Scorer]] = {}  # group -> (its key, the object loaded with it)


def warm_key(spec: JobSpec, group: Group) -> str:
    """The group's options, with every --external_plugins file's content when the group has that option (a
    changed plugin file is another scorer), as one string."""
    options = spec.options(group)
    if "external_plugins" in fields_in(group):
        options["external_plugins"] = [plugin_key(p) for p in spec.external_plugins]
    return json.dumps(options, sort_keys=True)


def _warm(group: Group, spec: JobSpec, load: Callable[[], Loaded]) -> Loaded:
    """The process's object for ``group``, reloaded only when the job's options of that group differ."""
    key = warm_key(spec, group)
    if group in _loaded and _loaded[group][0] == key:
        return _loaded[group][1]
    if group in _loaded:
        _loaded.pop(group)[1].close()
    obj = load()
    _loaded[group] = (key, obj)
    return obj


def engine_for(spec: JobSpec) -> Engine:
    return _warm(Group.ENGINE, spec, lambda: load_engine(spec))


def scorer_for(spec: JobSpec) -> Scorer:
    return _warm(Group.SCORING, spec, lambda: Scorer(spec))


def preload(model: str, engine: str) -> None:
    """Load a model's engine at worker start with default options (jobs with other options reload)."""
    engine_for(JobSpec(model=model, sampler_engine=engine, datasets=[{"source": "-"}], output_file="-.jsonl"))
