"""The job spec: every option of a sampling job, validated once, carried as JSON to every stage.

Each field says which option groups it belongs to (``In``), where it is defined. What depends on a group is
derived from it, never from a list kept by hand: a warm worker's engine and scorer are keyed by the ENGINE and
SCORING groups (workers/warm.py), a resume may change only the RUN group (``resume_key``), and ``--help`` lists
each option under its first group. On the wire the spec stays flat: groups are not nested in its JSON.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal

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


class Group(StrEnum):
    """An option group: the part of the job that reads the option."""

    DATA = "data"  # which prompts, read how, cut into which shards
    ENGINE = "engine"  # what the generator is built with: a warm engine is reloaded when one changes
    SAMPLING = "sampling"  # how candidates are drawn
    SCORING = "scoring"  # what the reward models are built with: a warm scorer is reloaded when one changes
    OUTPUT = "output"  # which rows are kept, in which format, where they are written
    RUN = "run"  # what this run does with an earlier one's files and failed shards: a resume may change it


@dataclass(frozen=True, init=False)
class In:
    """``Annotated[int, In(Group.ENGINE, Group.SCORING)]``: the groups of a JobSpec field, the first the one
    ``--help`` lists it under. A field read by several parts (``--model`` by the engine and a plugin's scorer) is
    in each of their groups."""

    groups: tuple[Group, ...]

    def __init__(self, first: Group, *also: Group) -> None:
        object.__setattr__(self, "groups", (first, *also))


class JobSpec(BaseModel):
    """Everything a job needs, with swift's option names; the producer fills it, workers only read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[int, In(Group.OUTPUT)] = SCHEMA_VERSION
    model: Annotated[str | None, In(Group.ENGINE, Group.SCORING)] = Field(None, description="Local HF folder, hub id, "
        "or the built-in alias 'smollm2-135m-instruct'. Needed to generate; --sampler_engine no (stage 2) needs none.")
    sampler_engine: Annotated[str, In(Group.ENGINE)] = Field("transformers", description="Generation engine: "
        "transformers (alias pt), vllm, lmdeploy, client (an OpenAI-compatible endpoint at --base_url), no (score "
        "--cache_files, generate nothing), or simulated (a benchmark tool: sleeps, no model).")
    sampler_type: Annotated[Literal["sample", "distill"], In(Group.ENGINE)] = Field(
        "sample", description="distill: with the client engine, keep the teacher's reasoning as <think>...</think>.")
    base_url: Annotated[str | None, In(Group.ENGINE, Group.SCORING)] = Field(None, description="With --sampler_engine "
        "client: the endpoint, e.g. http://host:8000/v1 (API key from $OPENAI_API_KEY).")
    datasets: Annotated[list[DatasetSpec], In(Group.DATA)] = Field(min_length=1, description="Datasets, each "
        "path_or_id[:subset][#N].")
    use_hf: Annotated[bool, In(Group.DATA, Group.ENGINE, Group.SCORING)] = Field(True, description="Which hub the "
        "--model, --dataset and --prm_model ids are on: true Hugging Face, false ModelScope (swift's default; needs "
        "`pip install modelscope`, offline it reads the modelscope cache).")
    dataset_shuffle: Annotated[bool, In(Group.DATA)] = Field(True, description="Shuffle prompt order (seeded by "
        "--data_seed).")
    shuffle_buffer: Annotated[int, In(Group.DATA)] = Field(10_000, ge=1, description="Rows held by the streaming "
        "shuffle; memory stays bounded by this, not by the dataset size.")
    data_seed: Annotated[int, In(Group.DATA)] = Field(42, description="Seed for #N sampling and shuffling.")
    system: Annotated[str | None, In(Group.DATA)] = Field(None, description="System prompt put before every prompt "
        "that has none.")
    sampling: Annotated[SamplingParams, In(Group.SAMPLING, Group.ENGINE, Group.SCORING)] = Field(
        default_factory=SamplingParams)
    orm_model: Annotated[str | None, In(Group.SCORING)] = Field(None, description="Outcome reward model: math, "
        "accuracy, format, repetition, length, code, swift's cosine, soft_overlong, react_format, toolbench, or a name "
        "an --external_plugins file registers; several: math,format.")
    orm_kwargs: Annotated[dict[str, Any], In(Group.SCORING)] = Field(
        default_factory=dict, description='Options of the ORM (JSON), e.g. {"timeout": 5} for math, {"pattern": "..."} '
        "for format.")
    prm_model: Annotated[str | None, In(Group.SCORING)] = Field(None, description="Process/outcome reward model: a "
        "registered name, or a model folder / hub id (sequence-classification RM, step PRM, causal-LM judge, or "
        "sentence-transformers embedding, told apart by its config).")
    prm_kwargs: Annotated[dict[str, Any], In(Group.SCORING)] = Field(
        default_factory=dict, description='Options of the PRM (JSON), e.g. {"batch_size": 8, "step_token": '
        '"<extra_0>"}.')
    prm_threshold: Annotated[float, In(Group.OUTPUT)] = Field(0.0, description="A candidate passes only with a PRM "
        "score above this.")
    easy_query_threshold: Annotated[float | None, In(Group.OUTPUT)] = Field(
        None, ge=0.0, le=1.0, description="Drop a prompt when this share (or more) of its candidates pass the ORM: too "
        "easy to teach.")
    include_ground_truth: Annotated[bool, In(Group.SCORING)] = Field(False, description="Also rank the dataset's "
        "reference answer as a candidate (swift always does; it then usually wins).")
    write_scores: Annotated[bool, In(Group.OUTPUT)] = Field(False, description="Add scores {orm, prm, prm_steps} to "
        "every output row.")
    # --- beyond swift: statistics, several ORMs, exports, adaptive sampling (workers/stats.py, exports.py) ---
    orm_weights: Annotated[list[float] | None, In(Group.SCORING)] = Field(None, description="With several --orm_model "
        "names (math,format): their weights in the ranking score (default equal); a candidate passes only when it "
        "passes every ORM.")
    pass_at_k: Annotated[list[int] | None, In(Group.OUTPUT)] = Field(None, description="k values of the unbiased "
        "pass@k in the stats file (default: 1, N and the powers of two in between).")
    output_format: Annotated[Literal["swift", "trl_preference", "trl_kto", "trl_stepwise"], In(Group.OUTPUT)] = Field(
        "swift", description="Rows as swift writes them (messages + rejected_response), or TRL's preference, "
        "unpaired (KTO) or stepwise-supervision format.")
    pair_margin: Annotated[float, In(Group.OUTPUT)] = Field(0.1, ge=0.0, description="With a PRM and no ORM: least PRM "
        "score difference between chosen and rejected for a trl_preference pair.")
    target_correct: Annotated[int | None, In(Group.SAMPLING)] = Field(None, ge=1, description="Adaptive sampling: "
        "sample each prompt in waves until it has this many ORM-passing candidates (and a failing one), or N samples; "
        "off by default.")
    wave_size: Annotated[int | None, In(Group.SAMPLING)] = Field(None, ge=1, description="Adaptive sampling: samples "
        "per prompt per wave (default: N/8, at least 2).")
    drop_settled: Annotated[bool, In(Group.SAMPLING)] = Field(False, description="Adaptive sampling: stop a prompt "
        "whose first wave is all correct or all wrong (recorded in the manifest).")
    external_plugins: Annotated[list[str], In(Group.SCORING)] = Field(
        default_factory=list, description="Python files that add entries to the orms / prms registries (swift's plugin "
        "convention).")
    cache_files: Annotated[list[str], In(Group.ENGINE)] = Field(default_factory=list, description="With "
        "--sampler_engine no: jsonl files of earlier candidates (ours or swift's) to score instead of generating.")
    n_best_to_keep: Annotated[int | None, In(Group.OUTPUT)] = Field(None, ge=1, description="Rows kept per prompt when "
        "a reward model is used; default 5, or N when N is smaller.")
    output_dir: Annotated[str, In(Group.OUTPUT)] = Field("sample_output", description="Folder the jsonl is written to.")
    output_file: Annotated[str, In(Group.OUTPUT)] = Field(description="File name of the jsonl inside --output_dir; the "
        "command line defaults it to a %Y-%m-%d-%H-%M-%S.jsonl timestamp.")
    override_exist_file: Annotated[bool, In(Group.RUN)] = Field(False, description="Replace an existing output file.")
    resume: Annotated[bool, In(Group.RUN)] = Field(False, description="Continue an interrupted run from its finished "
        "shards.")
    allow_partial: Annotated[bool, In(Group.RUN)] = Field(False, description="Fleet: when shards fail, still write the "
        "final file without them (job status partial; the manifest lists them). Default: the job fails, no final file, "
        "parts kept for `producer resume`.")
    shard_size: Annotated[int, In(Group.DATA)] = Field(32, ge=1, description="Prompts per shard: the unit of work, of "
        "retry and of resume.")
    data_range: Annotated[tuple[int, int] | None, In(Group.DATA)] = Field(None, description="'i n': run only part i of "
        "n (contiguous, every row in exactly one part).")
    max_batch_size: Annotated[int, In(Group.ENGINE)] = Field(128, ge=1, description="Most sequences (prompts x N) in "
        "one forward pass.")
    max_batch_tokens: Annotated[int | None, In(Group.ENGINE)] = Field(None, ge=1, description="Most tokens (sequences "
        "x (prompt + new tokens)) in one batch; bounds KV-cache memory.")
    torch_dtype: Annotated[str, In(Group.ENGINE, Group.SCORING)] = Field("auto", description="Weights dtype: auto, "
        "float32, bfloat16, float16.")
    engine_kwargs: Annotated[dict[str, Any], In(Group.ENGINE)] = Field(
        default_factory=dict, description="Passed to the engine as is (JSON).")
    skip_bad_rows: Annotated[bool, In(Group.DATA)] = Field(False, description="Skip and count malformed dataset rows "
        "instead of stopping.")

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

    @property
    def scored(self) -> bool:
        """Whether a reward model chooses the rows (n-best + rejected_response) instead of keeping all."""
        return bool(self.orm_model or self.prm_model)

    @model_validator(mode="after")
    def _n_best(self) -> "JobSpec":
        if not self.model and self.sampler_engine != "no":
            raise ValueError(f"--model is required to generate with --sampler_engine {self.sampler_engine} (only "
                             "--sampler_engine no, which scores --cache_files, needs none)")
        if self.sampler_engine == "no" and not self.cache_files:
            raise ValueError("--sampler_engine no scores earlier candidates: give them with --cache_files")
        if self.sampler_engine == "client" and not self.base_url:
            raise ValueError("--sampler_engine client needs --base_url (e.g. http://host:8000/v1)")
        if self.sampler_type == "distill" and self.sampler_engine != "client":
            raise ValueError("--sampler_type distill works with --sampler_engine client")
        if self.cache_files and self.sampler_engine != "no":
            raise ValueError("--cache_files is read only with --sampler_engine no")
        if self.n_best_to_keep is not None and self.n_best_to_keep > self.sampling.num_return_sequences:
            raise ValueError(f"--n_best_to_keep {self.n_best_to_keep} is greater than "
                             f"--num_return_sequences {self.sampling.num_return_sequences}")
        return self

    @model_validator(mode="after")
    def _beyond(self) -> "JobSpec":
        n, names = self.sampling.num_return_sequences, self.orm_names
        if self.orm_weights is not None and len(self.orm_weights) != len(names):
            raise ValueError(f"--orm_weights: {len(self.orm_weights)} weights for {len(names)} ORMs ({self.orm_model})")
        if self.orm_weights is not None and any(w <= 0 for w in self.orm_weights):
            raise ValueError(f"--orm_weights {self.orm_weights}: every weight must be > 0")
        if len(set(names)) != len(names) or any(not name for name in names):
            raise ValueError(f"--orm_model {self.orm_model!r}: a comma-separated list of distinct names")
        if self.pass_at_k is not None and any(not 1 <= k <= n for k in self.pass_at_k):
            raise ValueError(f"--pass_at_k {self.pass_at_k}: each k must be from 1 to --num_return_sequences {n}")
        if self.output_format != "swift" and not self.scored:
            raise ValueError(f"--output_format {self.output_format} makes pairs or labels: it needs --orm_model "
                             "or --prm_model")
        if self.output_format == "trl_stepwise" and not self.prm_model:
            raise ValueError("--output_format trl_stepwise needs a step PRM (--prm_model) for the per-step labels")
        if (self.wave_size is not None or self.drop_settled) and self.target_correct is None:
            raise ValueError("--wave_size and --drop_settled belong to adaptive sampling: give --target_correct K")
        if self.target_correct is not None and not names:
            raise ValueError("--target_correct counts ORM-passing candidates: it needs --orm_model")
        if self.target_correct is not None and self.sampler_engine == "no":
            raise ValueError("--target_correct samples in waves: it cannot work on --cache_files (--sampler_engine no)")
        return self

    @property
    def orm_names(self) -> list[str]:
        """The ORMs of --orm_model, which takes one name or several separated by commas (math,format)."""
        return [name.strip() for name in self.orm_model.split(",")] if self.orm_model else []

    @property
    def stats_ks(self) -> list[int]:
        """--pass_at_k, or 1, N and the powers of two in between."""
        n = self.sampling.num_return_sequences
        return sorted(set(self.pass_at_k or [1, *(2**i for i in range(1, n.bit_length()) if 2**i < n), n]))

    @property
    def adaptive_wave(self) -> int:
        """Samples per prompt per adaptive wave: --wave_size, else N/8 (at least 2), never above N."""
        n = self.sampling.num_return_sequences
        return min(n, self.wave_size or max(2, n // 8))

    @property
    def n_best(self) -> int:
        """--n_best_to_keep, or swift's 5 capped at N when not given."""
        return self.n_best_to_keep or min(5, self.sampling.num_return_sequences)

    def options(self, group: Group) -> dict[str, Any]:
        """The group's options as JSON, in field order."""
        return self.model_dump(mode="json", include=fields_in(group))

    def resume_key(self) -> dict[str, Any]:
        """Every option but the RUN group's: they decide which candidates a shard gets, so a resume keeps them."""
        return self.model_dump(mode="json", exclude=fields_in(Group.RUN))


def groups_of(field: str) -> tuple[Group, ...]:
    """The groups a JobSpec field declares (empty for one that declares none, which a unit test refuses)."""
    return next((m.groups for m in JobSpec.model_fields[field].metadata if isinstance(m, In)), ())


@cache
def fields_in(group: Group) -> frozenset[str]:
    """The JobSpec fields in ``group``."""
    return frozenset(name for name in JobSpec.model_fields if group in groups_of(name))
