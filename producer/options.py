"""Command-line options generated from the JobSpec, so that ``--help`` and the spec never disagree.

Every field is accepted in swift's underscore spelling (``--num_return_sequences``)
and with dashes (``--num-return-sequences``); booleans take swift's
``--flag true|false`` or a bare ``--flag``; list options extend when repeated
(``--cache_files a.jsonl --cache_files b.jsonl`` is both). Options of swift sample
that samplefleet does not take are in ``SWIFT_OPTIONS``, each with what to do instead.
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
from workers.hub import is_hub_id, modelscope_ids, need_modelscope

_SPECIAL = {"version", "sampling", "datasets"}
# swift's names for the rows handled per batch (3.x and 4.x spellings)
ALIASES = {"num_sampling_batch_size": "shard_size", "num_sampling_per_gpu_batch_size": "shard_size"}

# swift sample options that samplefleet does not take, each with what to do instead (docs/SWIFT_OPTIONS.md is
# generated from this table and tests/unit/test_options.py runs every row).
SWIFT_OPTIONS: dict[str, str] = {
    "--model_type": "samplefleet reads the architecture from the model folder; drop it",
    "--template": "samplefleet always uses the model's own chat template; drop it",
    "--template_backend": "the model's own chat template (transformers) is always used; drop it",
    "--max_length": "a prompt longer than the model's context is skipped and listed in the manifest; to bound "
                    "memory use --max_batch_tokens, to bound answers --max_new_tokens",
    "--truncation_strategy": "prompts are never truncated: one longer than the context is skipped and listed in "
                             "the manifest; drop it",
    "--num_sampling_batches": "every shard of the data is sampled; to run a part use --data_range I N, to sample "
                              "fewer rows use DATASET#N",
    "--num_sampling_per_gpu_batches": "every shard of the data is sampled; to run a part use --data_range I N, "
                                      "to sample fewer rows use DATASET#N",
    "--load_args": "samplefleet has no saved training arguments to load; give the options on the command line",
    "--load_data_args": "give the dataset options on the command line",
    "--stream": "sampling writes whole shards; progress shows on the bar (drop it)",
    "--config": "swift's YAML/JSON config form is not read: write its keys as --key value options",
    "--model_revision": "pass a local folder or a hub id at the revision you want (download it first)",
    "--adapters": "merge the LoRA adapter into the model first (swift export --merge_lora true), then pass that "
                  "folder as --model",
    "--infer_backend": "use --sampler_engine (transformers, vllm, lmdeploy, client, no)",
    "--device_map": "one worker uses one device: choose it with CUDA_VISIBLE_DEVICES; for several GPUs per model "
                    "use vllm with --engine_kwargs '{\"tensor_parallel_size\": N}'",
    "--attn_impl": "pass it to the model loader: --engine_kwargs '{\"attn_implementation\": \"sdpa\"}'",
    "--model_kwargs": "use --engine_kwargs (JSON, passed to the engine)",
    "--num_beams": "beam search is not sampling; drop it (use --temperature 0 for greedy)",
    "--logprobs": "candidates carry no log-probabilities here; drop it",
    "--top_logprobs": "candidates carry no log-probabilities here; drop it",
    "--split_dataset_ratio": "every row is a prompt here; drop it",
    "--val_dataset": "there is no validation split in sampling; add it as another --dataset if you want it sampled",
    "--dataset_num_proc": "the data is streamed in one process; drop it",
    "--streaming": "datasets are always streamed; drop it",
    "--columns": "rename the columns in the file (messages, query/response, instruction/output, problem/solution)",
    "--custom_register_path": "register reward models with --external_plugins FILE.py",
    "--custom_dataset_info": "pass the dataset file or hub id itself",
    "--hub_token": "set HF_TOKEN (Hugging Face) or MODELSCOPE_API_TOKEN in the environment",
    "--ignore_args_error": "samplefleet never ignores a bad option; remove the one it names",
    "--rollout_depth": "MCTS sampling (--sampler_type mcts) is not supported; use --sampler_type sample",
    "--max_iterations": "MCTS sampling (--sampler_type mcts) is not supported; use --sampler_type sample",
    "--process_reward_rate": "MCTS sampling (--sampler_type mcts) is not supported; use --sampler_type sample",
    "--api_key": "set OPENAI_API_KEY in the environment (never on the command line)",
}


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
        kwargs.update(nargs="+", action="extend", metavar="TEXT")
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
    sampling.add_argument("--stop", dest="stop_words", nargs="+", action="extend", default=argparse.SUPPRESS,
                          metavar="TEXT", help="Same as --stop_words.")


def _option_of(loc: tuple) -> str:
    """The command-line option a pydantic error location points at."""
    names = [str(part) for part in loc if isinstance(part, str) and part != "sampling"]
    if not names:
        return "options"
    return "--dataset" if names[0] == "datasets" else f"--{names[0]}"


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """Build and validate the JobSpec; a ConfigError names each bad option and its value."""
    cli_only = ("command", "dataset_args", "dataset_opts", "broker", "wait", "no_progress", "log_level", "debug",
                "spec")
    given = {k: v for k, v in vars(args).items() if k not in cli_only}
    sampling = {k: given.pop(k) for k in list(given) if k in SamplingParams.model_fields}
    datasets = list(args.dataset_args) + list(args.dataset_opts)
    if not datasets:
        raise ConfigError("no dataset given: pass DATASET or --dataset path_or_id[:subset][#N]")
    if config := next((d for d in datasets if d.lower().endswith((".yaml", ".yml"))), None):
        raise ConfigError(f"{config}: swift's YAML config form is not read: write its keys as --key value options")
    if given.get("sampler_engine") == "client" and "base_url" in given.get("engine_kwargs", {}):
        raise ConfigError("--engine_kwargs base_url: samplefleet takes the endpoint as its own option: move it to "
                          "--base_url URL")
    if given.get("resume") and "output_file" not in given:
        raise ConfigError("--resume needs --output_file: the file name of the run to continue")
    given.setdefault("output_file", datetime.now().strftime("%Y-%m-%d-%H-%M-%S.jsonl"))
    try:
        parsed = [DatasetSpec.parse(d) for d in datasets]
        spec = JobSpec.model_validate({**given, "datasets": parsed, "sampling": sampling})
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            lines = [(f"{_option_of(e['loc'])}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                     + (f" (got {e['input']!r})" if e["loc"] and e["type"] != "missing" else "")
                     for e in exc.errors()]
            raise ConfigError("; ".join(lines)) from None
        raise ConfigError(str(exc)) from None
    _check_hub(spec)
    return spec


def _check_hub(spec: JobSpec) -> None:
    """--use_hf false reads ModelScope ids with the modelscope library: without it, say so before any work."""
    if spec.use_hf:
        return
    ids = [(f"--{k}", v) for k, v in modelscope_ids(spec).items()]
    for option, repo in ids + [("--dataset", ds.source) for ds in spec.datasets if is_hub_id(ds.source)]:
        need_modelscope(option, repo)
