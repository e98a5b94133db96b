"""The job spec: every option of a sampling job, validated once, carried as JSON to every stage."""
from __future__ import annotations

import re
from typing import Any, Literal

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
    model: str | None = Field(None, description="Local HF folder, hub id, or the built-in alias "
                              "'smollm2-135m-instruct'. Needed to generate; --sampler_engine no (stage 2) needs none.")
    sampler_engine: str = Field("transformers", description="Generation engine: transformers (alias pt), vllm, "
                                "lmdeploy, client (an OpenAI-compatible endpoint at --base_url), no (score "
                                "--cache_files, generate nothing), or simulated (a benchmark tool: sleeps, no model).")
    sampler_type: Literal["sample", "distill"] = Field("sample", description="distill: with the client engine, "
                                                       "keep the teacher's reasoning as <think>...</think>.")
    base_url: str | None = Field(None, description="With --sampler_engine client: the endpoint, e.g. "
                                 "http://host:8000/v1 (API key from $OPENAI_API_KEY).")
    datasets: list[DatasetSpec] = Field(min_length=1, description="Datasets, each path_or_id[:subset][#N].")
    use_hf: bool = Field(True, description="Which hub the --model, --dataset and --prm_model ids are on: true "
                         "Hugging Face, false ModelScope (swift's default; needs `pip install modelscope`, offline "
                         "it reads the modelscope cache).")
    dataset_shuffle: bool = Field(True, description="Shuffle prompt order (seeded by --data_seed).")
    shuffle_buffer: int = Field(10_000, ge=1, description="Rows held by the streaming shuffle; memory stays "
                                "bounded by this, not by the dataset size.")
    data_seed: int = Field(42, description="Seed for #N sampling and shuffling.")
    system: str | None = Field(None, description="System prompt put before every prompt that has none.")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    orm_model: str | None = Field(None, description="Outcome reward model: math, accuracy, format, repetition, "
                                  "length, code, swift's cosine, soft_overlong, react_format, toolbench, or a name "
                                  "an --external_plugins file registers; several: math,format.")
    orm_kwargs: dict[str, Any] = Field(default_factory=dict, description="Options of the ORM (JSON), e.g. "
                                       '{"timeout": 5} for math, {"pattern": "..."} for format.')
    prm_model: str | None = Field(None, description="Process/outcome reward model: a registered name, or a model "
                                  "folder / hub id (sequence-classification RM, step PRM, causal-LM judge, or "
                                  "sentence-transformers embedding, told apart by its config).")
    prm_kwargs: dict[str, Any] = Field(default_factory=dict, description="Options of the PRM (JSON), e.g. "
                                       '{"batch_size": 8, "step_token": "<extra_0>"}.')
    prm_threshold: float = Field(0.0, description="A candidate passes only with a PRM score above this.")
    easy_query_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Drop a prompt when this "
                                               "share (or more) of its candidates pass the ORM: too easy to teach.")
    include_ground_truth: bool = Field(False, description="Also rank the dataset's reference answer as a "
                                       "candidate (swift always does; it then usually wins).")
    write_scores: bool = Field(False, description="Add scores {orm, prm, prm_steps} to every output row.")
    # --- beyond swift: statistics, several ORMs, exports, adaptive sampling (workers/stats.py, exports.py) ---
    orm_weights: list[float] | None = Field(None, description="With several --orm_model names (math,format): "
                                            "their weights in the ranking score (default equal); a candidate "
                                            "passes only when it passes every ORM.")
    pass_at_k: list[int] | None = Field(None, description="k values of the unbiased pass@k in the stats file "
                                        "(default: 1, N and the powers of two in between).")
    output_format: Literal["swift", "trl_preference", "trl_kto", "trl_stepwise"] = Field(
        "swift", description="Rows as swift writes them (messages + rejected_response), or TRL's preference, "
        "unpaired (KTO) or stepwise-supervision format.")
    pair_margin: float = Field(0.1, ge=0.0, description="With a PRM and no ORM: least PRM score difference "
                               "between chosen and rejected for a trl_preference pair.")
    target_correct: int | None = Field(None, ge=1, description="Adaptive sampling: sample each prompt in waves "
                                       "until it has this many ORM-passing candidates (and a failing one), or N "
                                       "samples; off by default.")
    wave_size: int | None = Field(None, ge=1, description="Adaptive sampling: samples per prompt per wave "
                                  "(default: N/8, at least 2).")
    drop_settled: bool = Field(False, description="Adaptive sampling: stop a prompt whose first wave is all "
                                "correct or all wrong (recorded in the manifest).")
    external_plugins: list[str] = Field(default_factory=list, description="Python files that add entries to "
                                        "the orms / prms registries (swift's plugin convention).")
    cache_files: list[str] = Field(default_factory=list, description="With --sampler_engine no: jsonl files "
                                   "of earlier candidates (ours or swift's) to score instead of generating.")
    n_best_to_keep: int | None = Field(None, ge=1, description="Rows kept per prompt when a reward model is "
                                       "used; default 5, or N when N is smaller.")
    output_dir: str = Field("sample_output", description="Folder the jsonl is written to.")
    output_file: str = Field(description="File name of the jsonl inside --output_dir; the command line "
                             "defaults it to a %Y-%m-%d-%H-%M-%S.jsonl timestamp.")
    override_exist_file: bool = Field(False, description="Replace an existing output file.")
    resume: bool = Field(False, description="Continue an interrupted run from its finished shards.")
    allow_partial: bool = Field(False, description="Fleet: when shards fail, still write the final file without "
                                "them (job status partial; the manifest lists them). Default: the job fails, "
                                "no final file, parts kept for `producer resume`.")
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

    def resume_key(self) -> dict[str, Any]:
        """The fields that decide which candidates a shard gets; a resume must not change them."""
        return self.model_dump(mode="json", exclude={"resume", "override_exist_file", "allow_partial"})
