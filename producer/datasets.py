"""Stream a job's prompts: read each dataset, take ``#N`` rows, shuffle within a bounded buffer, normalise.

Memory is bounded by the shuffle buffer and the ``#N`` sample (a set of row
numbers), never by the dataset's size. jsonl files are read here line by line
so that an error names the file and line; everything else (json, csv,
parquet, hub ids) streams through the ``datasets`` library. With ``--use_hf false`` a hub id is a
ModelScope dataset: its repo is fetched (or read from the modelscope cache) and the folder streamed the same way.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from producer.rows import normalise
from schemas import DatasetSpec, JobSpec, Prompt
from schemas.errors import DataError, PermanentError
from schemas.jsonl import read_jsonl
from workers.hub import hub_offline, is_hub_id, modelscope_snapshot

log = logging.getLogger(__name__)

Raw = tuple[str, Any]  # (where, row or the DataError it raised)
_JSONL = (".jsonl", ".ndjson")
_BUILDERS = {".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".txt": "text"}


def _read_with_datasets(ds: DatasetSpec, use_hf: bool) -> Iterator[Raw]:
    import datasets  # heavy; only for non-jsonl sources

    path = Path(ds.source).expanduser()
    try:
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"dataset {ds}: unknown file type {path.suffix!r}; "
                                f"use one of {', '.join(_JSONL + tuple(_BUILDERS))}")
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            stream = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
        elif not use_hf and is_hub_id(ds.source):
            folder = modelscope_snapshot(ds.source, option="--dataset", error=DataError, dataset=True)
            stream = datasets.load_dataset(folder, ds.subset, split="train", streaming=True)
        else:
            if reason := hub_offline(datasets=True):  # at once, not after the hub client's retries
                raise DataError(f"dataset {ds}: no such file, and loading it as a hub id failed (no network or no "
                                f"such dataset?): the hub is offline: {reason}")
            stream = datasets.load_dataset(ds.source, ds.subset, split="train", streaming=True)
        for k, row in enumerate(stream):
            yield f"{ds.source} row {k + 1}", row
    except PermanentError:
        raise
    except Exception as exc:  # the datasets library raises many types; all mean "cannot read this source"
        if path.exists():
            raise DataError(f"dataset {ds}: cannot read {path}: {exc}") from exc
        raise DataError(f"dataset {ds}: no such file, and loading it as a hub id failed "
                        f"(no network or no such dataset?): {type(exc).__name__}: {exc}") from exc


def read_rows(ds: DatasetSpec, use_hf: bool = True) -> Iterator[Raw]:
    """Every row of one dataset, in file order; ``use_hf``: whether a hub id is Hugging Face's or ModelScope's."""
    path = Path(ds.source).expanduser()
    if path.is_dir():
        raise DataError(f"dataset {ds}: {path} is a folder; give a file")
    if path.suffix.lower() in _JSONL:
        if not path.is_file():
            raise DataError(f"dataset {ds}: no such file {path}")
        return read_jsonl(path)
    return _read_with_datasets(ds, use_hf)


def _sampled(ds: DatasetSpec, seed: int, use_hf: bool) -> Iterator[Raw]:
    """swift's ``#N``: a sample without replacement below the size; whole repeats plus a sample above it."""
    if ds.n is None:
        yield from read_rows(ds, use_hf)
        return
    size = sum(1 for _ in read_rows(ds, use_hf))
    if size == 0:
        raise DataError(f"dataset {ds}: has no rows")
    rng = random.Random(seed)
    whole, rest = divmod(ds.n, size)
    extra = set(rng.sample(range(size), rest))
    for k, raw in enumerate(read_rows(ds, use_hf)):
        for _ in range(whole + (k in extra)):
            yield raw


def _shuffled(items: Iterator[Raw], buffer: int, seed: int) -> Iterator[Raw]:
    """A seeded streaming shuffle through a buffer of ``buffer`` rows."""
    rng = random.Random(seed)
    pool: list[Raw] = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        k = rng.randrange(buffer)
        yield pool[k]
        pool[k] = item
    rng.shuffle(pool)
    yield from pool


def part_bounds(spec: JobSpec, total: int) -> tuple[int, int]:
    """[start, stop) of this job's --data_range part of ``total`` prompts: contiguous, no remainder lost."""
    if not spec.data_range:
        return 0, total
    i, n = spec.data_range
    return i * total // n, (i + 1) * total // n


class PromptStream:
    """The job's prompts in job order; iterable more than once (a counting pass, then the run)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.bad_rows: list[str] = []

    def _raw(self) -> Iterator[Raw]:
        for k, ds in enumerate(self.spec.datasets):
            yield from _sampled(ds, self.spec.data_seed + k, self.spec.use_hf)

    def _all(self) -> Iterator[Prompt]:
        raws = self._raw()
        if self.spec.dataset_shuffle:
            raws = _shuffled(raws, self.spec.shuffle_buffer, self.spec.data_seed)
        self.bad_rows = []
        index = 0
        for where, raw in raws:
            try:
                if isinstance(raw, DataError):
                    raise raw
                prompt = normalise(raw, index=index, where=where, system=self.spec.system)
            except DataError as exc:
                if not self.spec.skip_bad_rows:
                    raise
                self.bad_rows.append(str(exc))
                continue
            index += 1
            yield prompt

    def count(self) -> int:
        """Prompts in the whole job before --data_range; also checks every row, so bad input fails up front."""
        return sum(1 for _ in self._all())

    def iterate(self, total: int) -> Iterator[Prompt]:
        """The prompts of this job's --data_range part (all of them without one), renumbered from 0."""
        start, stop = part_bounds(self.spec, total)
        for prompt in self._all():
            if prompt.row >= stop:
                break
            if prompt.row >= start:
                yield prompt.model_copy(update={"row": prompt.row - start}) if start else prompt
