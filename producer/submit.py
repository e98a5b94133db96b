"""``producer submit``: read and check the data, cut it into shards, run them.

With no broker the shards run in this process (the embedded default). The
stages live in ``workers``, which the producer never imports at module level:
the embedded backend is looked up by name when a run starts, so importing the
producer stays free of torch.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from producer.datasets import PromptStream, part_bounds
from producer.progress import Progress
from schemas import JobSpec, Prompt, PromptShard
from schemas.errors import DataError

log = logging.getLogger(__name__)

EMBEDDED_BACKEND = "workers.embedded"


@dataclass(frozen=True)
class RunResult:
    path: str
    manifest: dict
    seconds: float


def job_id(spec: JobSpec) -> str:
    """Stable for the same options, so a resumed run keeps its id."""
    return "local-" + hashlib.md5(json.dumps(spec.resume_key(), sort_keys=True).encode()).hexdigest()[:12]


def cut_shards(prompts: Iterable[Prompt], job: str, size: int) -> Iterator[PromptShard]:
    """Consecutive shards of ``size`` prompts; the last one takes the remainder, never drops it."""
    batch: list[Prompt] = []
    index = 0
    for prompt in prompts:
        batch.append(prompt)
        if len(batch) == size:
            yield PromptShard(job_id=job, index=index, prompts=batch)
            batch, index = [], index + 1
    if batch:
        yield PromptShard(job_id=job, index=index, prompts=batch)


def absolute_paths(spec: JobSpec) -> JobSpec:
    """Paths made absolute: workers, and a later resume from another folder, do not share this working directory."""
    def absolute(path: str) -> str:
        return path if "://" in path else str(Path(path).expanduser().resolve())

    datasets = [ds.model_copy(update={"source": absolute(ds.source)}) if Path(ds.source).expanduser().exists()
                else ds for ds in spec.datasets]
    return spec.model_copy(update={"output_dir": absolute(spec.output_dir), "datasets": datasets,
                                   "external_plugins": [absolute(p) for p in spec.external_plugins],
                                   "cache_files": [absolute(p) for p in spec.cache_files]})


def part_size(spec: JobSpec, total: int) -> int:
    """Prompts in this job's --data_range part of ``total`` (all of them without one)."""
    start, stop = part_bounds(spec, total)
    return stop - start


def run_local(spec: JobSpec, *, progress: bool = True) -> RunResult:
    """Run the whole job in this process and return where its output went."""
    started = time.perf_counter()
    spec = absolute_paths(spec)
    stream = PromptStream(spec)
    total = stream.count()  # reads every row once: bad data fails here, before any sampling
    bad_rows = list(stream.bad_rows)
    if total == 0:
        raise DataError(f"no prompts in {', '.join(map(str, spec.datasets))}"
                        + (f" ({len(bad_rows)} bad rows skipped)" if bad_rows else ""))
    part = part_size(spec, total)
    log.info("%d prompts (%d in this part), %d bad rows skipped", total, part, len(bad_rows))
    backend = importlib.import_module(EMBEDDED_BACKEND)
    bar = Progress(part, enabled=progress)
    try:
        job = job_id(spec)
        recheck = cut_shards(stream.iterate(total), job, spec.shard_size) if spec.resume else None
        path, manifest = backend.run_job(spec, cut_shards(stream.iterate(total), job, spec.shard_size), job_id=job,
                                         planned_prompts=part, bad_rows=bad_rows, on_shard=bar, recheck=recheck)
    finally:
        bar.close()
    return RunResult(path=path, manifest=manifest, seconds=time.perf_counter() - started)
