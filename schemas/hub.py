"""Can the Hugging Face hub be reached? Asked once per process before a hub id is loaded, so that an offline
machine fails at once with one line instead of after the hub clients' 25-50 s of retries.

Offline means ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE`` for datasets) is set, or one TCP connection to the
hub's endpoint (``HF_ENDPOINT``, default https://huggingface.co) fails within a few seconds.
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0


def _set(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


def hub_offline(*, datasets: bool = False) -> str | None:
    """Why the hub cannot be used now (for the error message), or None when it can."""
    for name in ("HF_HUB_OFFLINE", *(("HF_DATASETS_OFFLINE",) if datasets else ())):
        if _set(name):
            return f"{name} is set"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return _probe(endpoint.hostname or "huggingface.co", port)
