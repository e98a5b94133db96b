"""``producer submit``: read and check the data, cut it into shards, run them.

With no broker the shards run in this process (the embedded default). The
stages live in ``workers``, which the producer imports only inside the functions
that run or check a job, so importing the producer stays free of torch.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from producer.counting import count_aside
from producer.datasets import PromptStream, part_bounds
from producer.progress import Progress
from schemas import JobSpec, Prompt, PromptShard
from schemas.errors import DataError

log = logging.getLogger(__name__)


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


def check_scoring(spec: JobSpec) -> None:
    """The reward-model checks (``workers.scoring.preflight``), imported only when a job is submitted."""
    from workers.scoring import preflight

    preflight.check_scoring(spec)


def part_size(spec: JobSpec, total: int) -> int:
    """Prompts in this job's --data_range part of ``total`` (all of them without one)."""
    start, stop = part_bounds(spec, total)
    return stop - start


def run_local(spec: JobSpec, *, progress: bool = True) -> RunResult:
    """Run the whole job in this process and return where its output went.

    The counting pass (every row read and checked once) runs in a child process while the backend loads the
    models; the backend asks for its result (``plan``) before it opens the output, so bad data still fails
    before anything is sampled or written.
    """
    check_scoring(spec)  # a bad reward-model name, plugin or option: before any count, model or bar
    started = time.perf_counter()
    stream = PromptStream(spec)
    job = job_id(spec)
    bars: list[Progress] = []

    @functools.cache
    def plan() -> tuple[int, list[str]]:
        total, bad_rows = counting.result()
        if total == 0:
            raise DataError(f"no prompts in {', '.join(map(str, spec.datasets))}"
                            + (f" ({len(bad_rows)} bad rows skipped)" if bad_rows else ""))
        part = part_size(spec, total)
        log.info("%d prompts (%d in this part), %d bad rows skipped", total, part, len(bad_rows))
        bars.append(Progress(part, enabled=progress))
        return part, bad_rows

    def shards() -> Iterator[PromptShard]:  # lazy: the data is read only once the count is in
        yield from cut_shards(stream.iterate(counting.result()[0]), job, spec.shard_size)

    with count_aside(stream) as counting:
        from workers.embedded import run_job  # torch loads here, while the data is counted (not at import)

        if counting.finished(0.1):  # small data, a missing file, a bad first row: known before any model loads
            plan()
        try:
            path, manifest = run_job(spec, shards(), job_id=job, plan=plan,
                                     on_shard=lambda summary, resumed: bars[0](summary, resumed),
                                     on_progress=lambda tokens, samples: bars[0].working(tokens, samples),
                                     recheck=shards() if spec.resume else None)
        finally:
            for bar in bars:
                bar.close()
    return RunResult(path=path, manifest=manifest, seconds=time.perf_counter() - started)
