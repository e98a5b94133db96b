"""The job spec: every option of a sampling job, validated once, carried as JSON to every stage."""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.sampling import SamplingParams

SCHEMA_VERSION = 1
_DATASET_SPEC = re.compile(r"^(?P<source>.+?)(?::(?P<subset>[^:/\\#]+))?(?:#(?P<n>[^#]*))?$")


class DatasetSpec(BaseModel):
    """One ``path_or_id[:subset][#N]`` value of ``--dataset``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    subset: str | None = None
    n: int | None = Field(None, description="Rows to take: a sample below the dataset size, "
                          "the dataset repeated and topped up above it.")

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """Parse the swift grammar; a ``:`` is a subset only when it is not part of an existing path."""
        from pathlib import Path  # local: keeps module import cheap

        body, sep, count = text.partition("#")
        if sep and not re.fullmatch(r"[0-9]+", count.strip()):
            raise ValueError(f"dataset {text!r}: '#{count}' is not a row count (expected #N with N a whole number >= 1)")
        n = int(count) if sep else None
        if n is not None and n < 1:
            raise ValueError(f"dataset {text!r}: '#{count}' must be at least 1")
        if not body:
            raise ValueError(f"dataset {text!r}: no path or id before '#'")
        source, subset = body, None
        if not Path(body).exists() and ":" in body:
            m = _DATASET_SPEC.match(body)
            if m and m.group("subset"):
                source, subset = m.group("source"), m.group("subset")
        return cls(source=source, subset=subset, n=n)

    def __str__(self) -> str:
        return self.source + (f":{self.subset}" if self.subset else "") + (f"#{self.n}" if self.n else "")


class JobSpec(BaseModel):
    """Everything a job needs, with swift's option names; the producer fills it, workers only read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = SCHEMA_VERSION
    model: str = Field(description="Local HF folder, hub id, or the built-in alias 'smollm2-135m-instruct'.")
    sampler_engine: str = Field("transformers", description="Generation engine: transformers (alias pt).")
    datasets: list[DatasetSpec] = Field(min_length=1, description="Datasets, each path_or_id[:subset][#N].")
    dataset_shuffle: bool = Field(True, description="Shuffle prompt order (seeded by --data_seed).")
    shuffle_buffer: int = Field(10_000, ge=1, description="Rows held by the streaming shuffle; memory stays "
                                "bounded by this, not by the dataset size.")
    data_seed: int = Field(42, description="Seed for #N sampling and shuffling.")
    system: str | None = Field(None, description="System prompt put before every prompt that has none.")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    n_best_to_keep: int | None = Field(None, ge=1, description="Rows kept per prompt when a reward model is "
                                       "used; default 5, or N when N is smaller.")
    output_dir: str = Field("sample_output", description="Folder the jsonl is written to.")
    output_file: str = Field(description="File name of the jsonl inside --output_dir; the command line "
                             "defaults it to a %Y-%m-%d-%H-%M-%S.jsonl timestamp.")
    override_exist_file: bool = Field(False, description="Replace an existing output file.")
    resume: bool = Field(False, description="Continue an interrupted run from its finished shards.")
    shard_size: int = Field(32, ge=1, description="Prompts per shard: the unit of work, of retry and of resume.")
    data_range: tuple[int, int] | None = Field(None, description="'i n': run only part i of n "
                                               "(contiguous, every row in exactly one part).")
    max_batch_size: int = Field(128, ge=1, description="Most sequences (prompts x N) in one forward pass.")
    max_batch_tokens: int | None = Field(None, ge=1, description="Most tokens (sequences x (prompt + new "
                                         "tokens)) in one batch; bounds KV-cache memory.")
    torch_dtype: str = Field("auto", description="Weights dtype: auto, float32, bfloat16, float16.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to the engine as is (JSON).")
    skip_bad_rows: bool = Field(False, description="Skip and count malformed dataset rows instead of stopping.")

    @field_validator("torch_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        allowed = ("auto", "float32", "bfloat16", "float16")
        if v not in allowed:
            raise ValueError(f"--torch_dtype {v!r} is not one of {', '.join(allowed)}")
        return v

    @field_validator("output_file")
    @classmethod
    def _file_name(cls, v: str) -> str:
        if not v or "/" in v or v in (".", ".."):
            raise ValueError(f"--output_file {v!r} must be a plain file name (use --output_dir for the folder)")
        return v

    @field_validator("data_range")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (v[1] >= 1 and 0 <= v[0] < v[1]):
            raise ValueError(f"--data_range {v[0]} {v[1]}: need 0 <= i < n")
        return v

    @model_validator(mode="after")
    def _n_best(self) -> "JobSpec":
        if self.n_best_to_keep is not None and self.n_best_to_keep > self.sampling.num_return_sequences:
            raise ValueError(f"--n_best_to_keep {self.n_best_to_keep} is greater than "
                             f"--num_return_sequences {self.sampling.num_return_sequences}")
        return self

    @property
    def n_best(self) -> int:
        """--n_best_to_keep, or swift's 5 capped at N when not given."""
        return self.n_best_to_keep or min(5, self.sampling.num_return_sequences)

    def resume_key(self) -> dict[str, Any]:
        """The fields that decide which candidates a shard gets; a resume must not change them."""
        return self.model_dump(mode="json", exclude={"resume", "override_exist_file"})
