"""Which dtype a model is loaded in: ``--torch_dtype auto`` means the fastest type the hardware runs natively.

Why not transformers' own ``auto`` (the checkpoint's dtype): most small checkpoints are stored in fp32, and
on a CPU with AMX-BF16 or AVX512-BF16 (or a CUDA GPU with bf16) bf16 runs about 1.4x faster at the accuracy
sampling needs (``bench/numerics.py`` measures the difference on the demo model). The choice itself is the pure
function ``choose_dtype`` (its inputs are the arguments, so it is tested directly); ``resolve_dtype`` gathers
those inputs for the device a model is about to load on. The engine and the PRMs both call ``resolve_dtype``.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from workers.models import model_file

log = logging.getLogger(__name__)

#: CPU flags (torch's capability names, also /proc/cpuinfo's) under which torch runs bf16 matmuls natively.
NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype to load with (``"auto"``: leave it to transformers) and why, for the log and the manifest."""

    dtype: str
    reason: str


def choose_dtype(requested: str, *, device: str, checkpoint: str | None, cpu_flags: Collection[str] = (),
                 cuda_bf16: bool = False) -> DtypeChoice:
    """The dtype for a model on ``device`` (cuda, cuda:1, cpu, mps, ...).

    An explicit ``requested`` dtype is kept. ``auto``: bf16 where it is native (CUDA with bf16 support, a CPU
    with one of ``NATIVE_BF16_CPU_FLAGS``), except that an fp16 checkpoint stays fp16 on CUDA (native there
    too, and re-rounding its weights to bf16 only loses precision); everywhere else the checkpoint's dtype
    (``checkpoint``, from its config; None when it names none, which leaves it to transformers).
    """
    if requested != "auto":
        return DtypeChoice(requested, "--torch_dtype")
    kind = device.split(":")[0]
    if kind == "cuda" and cuda_bf16:
        if checkpoint == "float16":
            return DtypeChoice("float16", "auto: fp16 checkpoint, native on CUDA")
        return DtypeChoice("bfloat16", "auto: CUDA device with native bf16")
    native = sorted(NATIVE_BF16_CPU_FLAGS.intersection(cpu_flags))
    if kind == "cpu" and native:
        return DtypeChoice("bfloat16", f"auto: CPU with native bf16 ({', '.join(native)})")
    if checkpoint in DTYPES:
        return DtypeChoice(checkpoint, f"auto: the checkpoint's dtype (no native bf16 on {kind})")
    return DtypeChoice("auto", f"auto: the checkpoint names no dtype (no native bf16 on {kind})")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as torch reports them, plus /proc/cpuinfo's (either may miss one the other has)."""
    import torch

    caps = getattr(torch.cpu, "get_capabilities", lambda: {})()
    flags = {name for name, value in caps.items() if value is True}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.partition(":")[2].split())
                break
    except OSError:
        pass  # not Linux: torch's view alone
    return frozenset(flags)


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a model's config.json names (``dtype``, older ``torch_dtype``), or None; a hub id is read from the
    local cache. A config that cannot be read is the loader's problem, reported by it."""
    file = model_file(path, "config.json")
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8")) if file else {}
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    found = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    return str(found).removeprefix("torch.") if found else None


def resolve_dtype(requested: str, path: str, device: str, *, what: str) -> DtypeChoice:
    """``choose_dtype`` for the model at ``path`` on ``device``, with this machine's facts; logged once per load."""
    kind = device.split(":")[0]
    auto = requested == "auto"
    choice = choose_dtype(requested, device=device, checkpoint=checkpoint_dtype(path) if auto else None,
                          cpu_flags=cpu_flags() if auto and kind == "cpu" else (),
                          cuda_bf16=auto and kind == "cuda" and _cuda_bf16(device))
    log.info("%s: dtype %s on %s (%s)", what, choice.dtype, device, choice.reason)
    return choice


def _cuda_bf16(device: str) -> bool:
    """Whether the CUDA device runs bf16 natively (compute capability 8.0 or later, or any ROCm GPU), not emulated."""
    import torch

    if not torch.cuda.is_available():
        return False
    return bool(torch.version.hip) or torch.cuda.get_device_properties(torch.device(device)).major >= 8


def torch_dtype(name: str):
    """The torch dtype of a name from ``DTYPES``; ``"auto"`` passes through to transformers."""
    import torch

    return getattr(torch, name) if name in DTYPES else "auto"
