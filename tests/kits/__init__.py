"""Test kits every tier uses: real servers started on free 127.0.0.1 ports and stopped after.

- ``kits.fleet``: redis-server and Celery worker processes (the one fleet harness; bench/fleet.py builds on it).
- ``kits.s3``: a SeaweedFS S3 server (moto only as a fallback).
- ``kits.vllm``: a ``vllm serve`` from the vLLM environment (.venv-vllm).
- ``kits.deploy``: what the compose and Kubernetes tests check deployment files against.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# No hub at run time: every test runs offline, so a stray download fails instead of hanging.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MODELSCOPE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
