"""Can the model hub be reached? Asked once per process before a hub id is loaded, so that an offline
machine fails at once with one line instead of after the hub clients' 25-50 s of retries.

Hugging Face (``--use_hf true``, the default) is offline when ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``
for datasets) is set, or one TCP connection to ``HF_ENDPOINT`` (default https://huggingface.co) fails within a
few seconds. ModelScope (``--use_hf false``) is offline when ``MODELSCOPE_OFFLINE`` is set (samplefleet's
switch: modelscope 1.40 has only ``local_files_only``, no environment variable) or ``MODELSCOPE_ENDPOINT``
(default https://modelscope.cn) does not answer; offline, a ModelScope id is read from the local cache only.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from schemas.errors import ConfigError, PermanentError

if TYPE_CHECKING:
    from schemas.job import JobSpec

PROBE_SECONDS = 3.0
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: the engines whose --model is a checkpoint to load (the client engine's is a name its endpoint serves)
WEIGHT_ENGINES = ("transformers", "pt", "vllm", "lmdeploy")


def _set(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


def _unreachable(url: str) -> str | None:
    endpoint = urlsplit(url)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return _probe(endpoint.hostname or url, port)


def hub_offline(*, datasets: bool = False) -> str | None:
    """Why the Hugging Face hub cannot be used now (for the error message), or None when it can."""
    for name in ("HF_HUB_OFFLINE", *(("HF_DATASETS_OFFLINE",) if datasets else ())):
        if _set(name):
            return f"{name} is set"
    return _unreachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


def modelscope_offline() -> str | None:
    """Why the ModelScope hub cannot be used now, or None when it can."""
    if _set("MODELSCOPE_OFFLINE"):
        return "MODELSCOPE_OFFLINE is set"
    return _unreachable(os.environ.get("MODELSCOPE_ENDPOINT") or "https://modelscope.cn")


def is_hub_id(text: str) -> bool:
    """``owner/name`` that is not a path on this machine: what the hubs call a repo."""
    return bool(HUB_ID.match(text)) and not text.startswith((".", "~")) and not os.path.exists(text)


def modelscope_ids(spec: "JobSpec") -> dict[str, str]:
    """With --use_hf false, the model fields (model, prm_model) that hold a ModelScope id, with their ids."""
    given = {"model": spec.model if spec.sampler_engine in WEIGHT_ENGINES else None, "prm_model": spec.prm_model}
    return {} if spec.use_hf else {k: v for k, v in given.items() if v and is_hub_id(v)}


def need_modelscope(option: str, repo: str) -> None:
    """A ConfigError (usage, exit 2) when the ``modelscope`` library that --use_hf false needs is missing."""
    if importlib.util.find_spec("modelscope") is None:
        raise ConfigError(f"{option} {repo!r} with --use_hf false is a ModelScope id, read with the modelscope "
                          "library, which is not installed: pip install modelscope (or pass --use_hf true for a "
                          "Hugging Face id)")


def modelscope_snapshot(repo: str, *, option: str, error: type[PermanentError], dataset: bool = False,
                        files: list[str] | None = None) -> str:
    """The local folder of ModelScope repo ``repo``: downloaded (or brought up to date) when the hub answers,
    else from the modelscope cache (``MODELSCOPE_CACHE``); ``error`` is the caller's kind of failure; ``files``:
    only these (a check that reads a config needs no weights)."""
    need_modelscope(option, repo)
    from modelscope import snapshot_download

    offline = modelscope_offline()
    kind = "dataset" if dataset else "model"
    try:
        return snapshot_download(repo, repo_type=kind, local_files_only=offline is not None, allow_patterns=files)
    except Exception as exc:  # modelscope raises its own HubError tree, requests' errors and OSError
        if offline:
            raise error(f"{option} {repo!r}: not in the local ModelScope cache, and the ModelScope hub is offline: "
                        f"{offline}") from exc
        raise error(f"{option} {repo!r}: cannot download this {kind} from ModelScope (no such repo, or no "
                    f"access?): {type(exc).__name__}: {exc}") from exc
