"""Shared plumbing of the built-in PRMs (``workers.scoring.prm_kinds``): options, paths, loading, padding, checks.

Nothing here imports torch at module level, so the option checks stay cheap.
"""
from __future__ import annotations

import gc
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, ModelLoadError, PermanentError
from workers.hub import hub_offline
from workers.models import DEMO_ALIAS, in_hub_cache, model_file
from workers.scoring.base import PRM, InferRequest

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_int(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


#: Every option a built-in PRM may take, with its check and what the check wants.
OPTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: v in ("seqcls", "step", "judge", "embedding"), "one of seqcls, step, judge, embedding"),
    "batch_size": (_is_int, "a whole number >= 1"),
    "max_length": (lambda v: v is None or _is_int(v, 8), "a whole number >= 8 (tokens)"),
    "padding_side": (lambda v: v in ("left", "right"), "left or right"),
    "step_split": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "step_token": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "device": (lambda v: isinstance(v, str) and v != "", "a torch device such as cpu, cuda, cuda:1"),
    "trust_remote_code": (lambda v: isinstance(v, bool), "true or false"),
}


def check_options(kind: str, given: dict[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """``--prm_kwargs`` for a PRM of ``kind``: unknown keys and bad values are ConfigErrors naming the key."""
    for key in sorted(given):
        if key not in allowed:
            raise ConfigError(f"--prm_kwargs {key!r}: not an option of the {kind} PRM; "
                              f"allowed: {', '.join(sorted(allowed))}")
        check, wants = OPTION_CHECKS[key]
        if not check(given[key]):
            raise ConfigError(f"--prm_kwargs {key!r}: {given[key]!r} is not {wants}")
    if given.get("kind", kind) != kind:
        raise ConfigError(f"--prm_kwargs 'kind': {given['kind']!r} asked for, but this is the {kind} PRM")
    return {k: v for k, v in given.items() if k != "kind"}


def check_inputs(name: str, infer_requests: Sequence[InferRequest], ground_truths: Sequence[str | None]) -> None:
    if len(infer_requests) != len(ground_truths):
        raise PermanentError(f"PRM {name!r}: {len(infer_requests)} requests but {len(ground_truths)} ground truths")
    for i, r in enumerate(infer_requests):
        if not r.messages or not isinstance(r.messages[-1].get("content"), str):
            raise PermanentError(f"PRM {name!r}: request {i} has no candidate (last turn with text content)")


# ----------------------------------------------------------------------------------------------- paths
def resolve_prm_path(name: str) -> str:
    """A local folder, the demo alias (prepared on first use), or a hub id (read from the local HF cache)."""
    if name == DEMO_ALIAS:
        from workers.models import resolve_model

        try:
            return resolve_model(name)
        except ModelLoadError as exc:
            raise ModelLoadError(f"--prm_model {name!r}: {exc}") from exc
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelLoadError(f"--prm_model {name!r}: {path} is a file; give the model's folder")
    if _HUB_ID.match(name) and not name.startswith((".", "~", "/")):
        if "/" in name and not in_hub_cache(name) and (reason := hub_offline()):  # at once, not after retries
            raise ModelLoadError(f"--prm_model {name!r}: no such folder, not in the local Hugging Face cache, and "
                                 f"the hub is offline: {reason}")
        return name
    from workers.scoring import prms

    if "/" not in name and not name.startswith((".", "~")):  # a bare name: unknown, like an unknown --orm_model
        raise ConfigError(f"--prm_model {name!r}: unknown PRM (no such model folder either); known: "
                          f"{', '.join(prms.names())}, the alias {DEMO_ALIAS!r}, a model folder or a hub id")
    raise ModelLoadError(f"--prm_model {name!r}: no such model folder ({path.resolve()}), and not a hub id, "
                         f"the alias {DEMO_ALIAS!r} or a registered PRM ({', '.join(prms.names())})")


def read_config(name: str, path: str) -> dict[str, Any]:
    """The model's config.json as a dict (a ModelLoadError when there is none)."""
    import json

    try:
        file = model_file(path, "config.json")
        if file is None:
            raise FileNotFoundError("no config.json")
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--prm_model {name!r}: cannot read the config of {path}: {exc}") from exc


def load_pretrained(name: str, path: str, loader: Any, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path)``; any failure is a ModelLoadError naming --prm_model and the path."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, safetensors errors, ...
        hint = (" (a remote-code model: add \"trust_remote_code\": true to --prm_kwargs if you trust it)"
                if "trust_remote_code" in str(exc) else "")
        raise ModelLoadError(f"--prm_model {name!r}: cannot load {path}: {type(exc).__name__}: {exc}{hint}") from exc


def pick_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def prepare_torch(name: str, path: str, device: str, torch_dtype: str) -> Any:
    """Before a PRM loads: this process's torch threads set (``workers.threads``), and the dtype to load it in
    (``workers.dtypes``: under ``auto``, bf16 where the device runs it natively, as the engine does)."""
    from workers.dtypes import resolve_dtype, torch_dtype as to_torch
    from workers.threads import apply_torch_threads

    apply_torch_threads()
    return to_torch(resolve_dtype(torch_dtype, path, device, what=f"--prm_model {name}").dtype)


# --------------------------------------------------------------------------------------------- batching
def render(tokenizer: Any, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
    """Token ids of a conversation under the tokenizer's chat template, else plain ``role: content`` lines."""
    msgs = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + ("\nassistant:" if add_generation_prompt else "")
    return list(tokenizer(text)["input_ids"])


def last_user_turn(messages: Sequence[dict[str, Any]]) -> str:
    """The question a candidate answers: the prompt's last user turn (else all prompt turns joined)."""
    prompt = messages[:-1]
    for m in reversed(prompt):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return "\n".join(str(m.get("content") or "") for m in prompt)


def unique(seqs: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct token sequences and, per input, the index of its distinct one: a candidate sampled many
    times (short answers often are) is scored once."""
    first: dict[tuple[int, ...], int] = {}
    owner = [first.setdefault(tuple(s), len(first)) for s in seqs]
    return [list(k) for k in first], owner


def batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length (longest first: an out-of-memory shows up on the first batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def padded_forward(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, side: str, device: str,
                   **extra: Any) -> tuple[Any, list[int]]:
    """One forward pass over padded ``seqs``: (float32 logits, column where each row's first real token is).

    Position ids come from the attention mask, so a row's scores do not depend on its padding or side.
    """
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    starts = []
    for r, s in enumerate(seqs):
        start = width - len(s) if side == "left" else 0
        ids[r, start:start + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, start:start + len(s)] = 1
        starts.append(start)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if accepts(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
    out = model(**kwargs, **extra)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float(), starts


def accepts(model: Any, param: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return param in params


def context_of(model: Any) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if n else None


class HFPRM(PRM):
    """Base of the transformers-backed PRMs: options from ``--prm_kwargs``, one model kept until ``close``."""

    kind = ""
    options: tuple[str, ...] = ()
    needs_ground_truth = False
    model: Any = None

    @classmethod
    def from_spec(cls, spec: Any) -> "HFPRM":
        kwargs = check_options(cls.kind, dict(spec.prm_kwargs), cls.options)
        return cls(spec.prm_model, torch_dtype=spec.torch_dtype, **kwargs)

    def _ready(self) -> None:
        if self.model is None:
            raise PermanentError(f"PRM {self.name!r} was closed")

    def close(self) -> None:
        """Drop the weights (and the CUDA cache); the PRM cannot be called afterwards."""
        if self.model is None:
            return
        on_cuda = str(getattr(self, "device", "cpu")).startswith("cuda")
        self.model = None
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()
