"""Command-line options generated from the JobSpec, so that ``--help`` and the spec never disagree.

Every field is accepted in swift's underscore spelling (``--num_return_sequences``)
and with dashes (``--num-return-sequences``); booleans take swift's
``--flag true|false`` or a bare ``--flag``.
"""
from __future__ import annotations

import argparse
import json
import types
import typing
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from schemas import DatasetSpec, JobSpec, SamplingParams
from schemas.errors import ConfigError

_SPECIAL = {"version", "sampling", "datasets"}
ALIASES = {"num_sampling_batch_size": "shard_size"}  # swift's name for the rows handled per batch


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "y", "on"):
        return True
    if low in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _base(annotation: Any) -> Any:
    """``int | None`` -> int; other annotations unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _add(group: argparse._ArgumentGroup, name: str, field: FieldInfo) -> None:
    kind = _base(field.annotation)
    origin = typing.get_origin(kind)
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    for alias in (a for a, target in ALIASES.items() if target == name):
        flags += [f"--{alias}", f"--{alias.replace('_', '-')}"]
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    help_text = (field.description or "") + ("" if default in (None, [], {}) else f" (default: {default})")
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    if kind is bool:
        kwargs.update(type=_bool, nargs="?", const=True, metavar="true|false")
    elif origin is list:
        kwargs.update(nargs="+", metavar="TEXT")
    elif origin is tuple:
        kwargs.update(nargs=2, type=int, metavar=("I", "N"))
    elif origin is dict:
        kwargs.update(type=_json_object, metavar="JSON")
    elif kind in (int, float, str):
        kwargs.update(type=kind)
    group.add_argument(*flags, **kwargs)


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Datasets (positional or --dataset), then every JobSpec and SamplingParams field."""
    parser.add_argument("dataset_args", nargs="*", metavar="DATASET",
                        help="path_or_id[:subset][#N]; several allowed (same as --dataset)")
    parser.add_argument("--dataset", dest="dataset_opts", nargs="+", action="extend", default=[],
                        metavar="DATASET", help="path_or_id[:subset][#N]; several allowed")
    job = parser.add_argument_group("job")
    for name, field in JobSpec.model_fields.items():
        if name not in _SPECIAL:
            _add(job, name, field)
    sampling = parser.add_argument_group("sampling")
    for name, field in SamplingParams.model_fields.items():
        _add(sampling, name, field)
    sampling.add_argument("--stop", dest="stop_words", nargs="+", default=argparse.SUPPRESS, metavar="TEXT",
                          help="Same as --stop_words.")


def _option_of(loc: tuple) -> str:
    """The command-line option a pydantic error location points at."""
    names = [str(part) for part in loc if isinstance(part, str) and part != "sampling"]
    if not names:
        return "options"
    return "--dataset" if names[0] == "datasets" else f"--{names[0]}"


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """Build and validate the JobSpec; a ConfigError names each bad option and its value."""
    cli_only = ("command", "dataset_args", "dataset_opts", "broker", "wait", "no_progress", "log_level")
    given = {k: v for k, v in vars(args).items() if k not in cli_only}
    sampling = {k: given.pop(k) for k in list(given) if k in SamplingParams.model_fields}
    datasets = list(args.dataset_args) + list(args.dataset_opts)
    if not datasets:
        raise ConfigError("no dataset given: pass DATASET or --dataset path_or_id[:subset][#N]")
    if given.get("resume") and "output_file" not in given:
        raise ConfigError("--resume needs --output_file: the file name of the run to continue")
    given.setdefault("output_file", datetime.now().strftime("%Y-%m-%d-%H-%M-%S.jsonl"))
    try:
        parsed = [DatasetSpec.parse(d) for d in datasets]
        return JobSpec.model_validate({**given, "datasets": parsed, "sampling": sampling})
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            lines = [f"{_option_of(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                     + (f" (got {e['input']!r})" if e["loc"] and e["type"] != "missing" else "")
                     for e in exc.errors()]
            raise ConfigError("; ".join(lines)) from None
        raise ConfigError(str(exc)) from None
