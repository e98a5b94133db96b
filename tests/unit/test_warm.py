"""Option groups and the warm engine/scorer keys derived from them (schemas/job.py, workers/warm.py): every
option is in a group, every option of the ENGINE (SCORING) group changes the warm engine's (scorer's) key, and
what an engine or a scorer reads from the spec while it loads is in its group, so a warm worker never reuses one
built with other options."""
from __future__ import annotations

from typing import Any

import pytest

from schemas import JobSpec
from schemas.job import Group, fields_in, groups_of
from workers.engines import ENGINES
from workers.score import Scorer
from workers.scoring import orms
from workers.warm import warm_key

BASE = {"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl"}
READ: set[str] = set()


class Recording(JobSpec):
    """A JobSpec that notes every field read from it (its properties' reads included)."""

    def __getattribute__(self, name: str) -> Any:
        if name in JobSpec.model_fields:
            READ.add(name)
        return super().__getattribute__(name)


def recording(**options: Any) -> Recording:
    spec = Recording.model_validate({**BASE, **options})
    READ.clear()  # the validators' reads are not the loader's
    return spec


def other(value: Any) -> Any:
    """A different value of the same kind (validity does not matter: only the key is computed from it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    return "x"  # None


def changes(spec: JobSpec, names: set[str]) -> list[tuple[str, JobSpec]]:
    """One spec per option of ``names`` (per sampling parameter for ``sampling``) with that option changed."""
    dump = spec.model_dump()
    out = []
    for name in sorted(names):
        if name == "sampling":
            out += [(f"sampling.{k}", spec.model_copy(update={"sampling": spec.sampling.model_copy(
                update={k: other(v)})})) for k, v in dump["sampling"].items()]
        else:
            out.append((name, spec.model_copy(update={name: other(dump[name])})))
    return out


def test_every_option_declares_a_group():
    assert [name for name in JobSpec.model_fields if not groups_of(name)] == []
    assert fields_in(Group.RUN) == {"resume", "override_exist_file", "allow_partial"}  # what a resume may change


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # the changed values are not validated
@pytest.mark.parametrize("group", [Group.ENGINE, Group.SCORING])
def test_every_option_of_the_group_changes_its_key_and_no_other_does(group):
    spec = JobSpec.model_validate(BASE)
    key = warm_key(spec, group)
    unchanged = [name for name, changed in changes(spec, fields_in(group)) if warm_key(changed, group) == key]
    assert unchanged == [], f"options of the {group} group missing from its warm key"
    reloading = [name for name, changed in changes(spec, set(JobSpec.model_fields) - fields_in(group))
                 if warm_key(changed, group) != key]
    assert reloading == [], f"options outside the {group} group would reload a warm {group}"


def test_a_changed_plugin_file_changes_the_scorer_key(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("x = 1\n")
    spec = JobSpec.model_validate({**BASE, "external_plugins": [str(plugin)]})
    before = warm_key(spec, Group.SCORING)
    plugin.write_text("x = 2\n")
    assert warm_key(spec, Group.SCORING) != before


@pytest.mark.parametrize("name", sorted(n for n in ENGINES.names() if " " not in n))
def test_an_engine_reads_only_engine_options(name, monkeypatch):
    factory = ENGINES.factory(name)
    monkeypatch.setattr(factory.__self__, "__init__", lambda self, *args, **kwargs: None)  # nothing loads
    cache = {"cache_files": ["earlier.jsonl"]} if name == "no" else {}  # the engine that reads them
    factory(recording(sampler_engine=name, base_url="http://127.0.0.1:1/v1", **cache))
    assert READ - fields_in(Group.ENGINE) == set()


def test_the_scorer_reads_only_scoring_options():
    names = [n for n in orms.names() if " " not in n]
    spec = recording(orm_model=",".join(names), orm_kwargs={"soft_overlong": {"soft_cache_length": 8}},
                     prm_model="client", base_url="http://127.0.0.1:1/v1")
    Scorer(spec).close()
    assert {"orm_model", "prm_model", "sampling", "base_url"} <= READ  # the check below has something to check
    assert READ - fields_in(Group.SCORING) == set()
