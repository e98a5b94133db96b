#!/usr/bin/env python3
"""Adaptive sampling against fixed N: samples and tokens generated per kept preference pair, at the same N cap.

    # (b) the simulated engine, per-prompt pass rates from a spread (no model; seconds):
    .venv/bin/python bench/adaptive.py simulated [--prompts 500] [--n 32] [--k 4] [--wave 4] [--rates-from STATS]
    # (a) the real model on the RFT example's copy task (minutes; run under the CPU lock):
    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/adaptive.py model [--prompts 40] [--n 16] [--k 1] [--wave 4]

Each mode runs the same job twice, with the same seed: fixed N, and ``--target_correct K --wave_size W``
(``--drop-settled`` adds --drop_settled), both with ``--output_format trl_preference`` and
``--n_best_to_keep K``, so a pair is kept only when its chosen candidate passes and its rejected one fails the
ORM, and both modes can keep at most K pairs per prompt. Reported: pairs kept, samples and tokens generated,
samples and tokens per kept pair, and the ratios (target: >= 2x fewer samples per pair, <= 5% fewer pairs).

Where the simulated pass rates come from: by default a U-shaped Beta(0.3, 0.5) per prompt, an assumption in
the shape that RL practice reports (many prompts all-wrong or all-right for the policy, which is why DAPO
drops such groups), not a measurement. ``--rates-from STATS`` uses a real spread instead: the correct/samples
of every prompt of a fixed-N run's ``<output>.stats.jsonl`` (e.g. the model on your data with the math ORM).
Writes bench/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "adaptive"


def _rates(args) -> list[float]:
    rng = random.Random(args.seed)
    if args.rates_from:
        lines = [json.loads(x) for x in Path(args.rates_from).read_text().splitlines() if x.strip()]
        spread = [s["correct"] / s["samples"] for s in lines if s.get("correct") is not None and s["samples"]]
        return [rng.choice(spread) for _ in range(args.prompts)]
    return [rng.betavariate(0.3, 0.5) for _ in range(args.prompts)]


def _dataset(args, workdir: Path) -> tuple[Path, list[str]]:
    """The job's data and the options that pick its engine and ORM."""
    if args.mode == "simulated":
        path = workdir / "rates.jsonl"
        path.write_text("".join(json.dumps({"query": f"problem {i}", "response": str(i), "pass_rate": p}) + "\n"
                                for i, p in enumerate(_rates(args))))
        kwargs = {"shard_seconds": 0, "pass_rate_column": "pass_rate"}
        return path, ["--model", "x", "--sampler_engine", "simulated", "--engine_kwargs", json.dumps(kwargs),
                      "--orm_model", "accuracy", "--max_new_tokens", "256"]
    sys.path.insert(0, str(ROOT / "examples" / "rft"))
    from run import PROMPT, WORDS  # the RFT example's copy task

    words = (WORDS * (args.prompts // len(WORDS) + 1))[: args.prompts]
    path = workdir / "copy.jsonl"
    path.write_text("".join(json.dumps({"query": PROMPT.format(word=w), "response": w}) + "\n" for w in words))
    return path, ["--model", "smollm2-135m-instruct", "--orm_model", "copy", "--external_plugins",
                  str(ROOT / "examples" / "rft" / "copy_orm.py"), "--max_new_tokens", str(args.max_new)]


def _run(args, data: Path, engine: list[str], name: str, extra: list[str], workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "producer", "submit", str(data), *engine, "--num_return_sequences", str(args.n),
           "--n_best_to_keep", str(args.k), "--output_format", "trl_preference", "--seed", str(args.seed),
           "--shard_size", str(args.shard_size), "--output_dir", str(workdir), "--output_file", f"{name}.jsonl",
           "--override_exist_file", "true", "--no_progress", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((workdir / f"{name}.manifest.json").read_text())
    pairs = sum(1 for line in (workdir / f"{name}.jsonl").read_text().splitlines() if line.strip())
    samples, tokens = manifest["counts"]["candidates"], manifest["counts"]["tokens"]
    return {"pairs": pairs, "samples": samples, "tokens": tokens, "wall_s": round(wall, 2),
            "samples_per_pair": round(samples / pairs, 2) if pairs else None,
            "tokens_per_pair": round(tokens / pairs, 1) if pairs else None,
            "stopped": manifest.get("adaptive", {}).get("stopped")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("simulated", "model"))
    parser.add_argument("--prompts", type=int, default=None, help="default 500 (simulated), 40 (model)")
    parser.add_argument("--n", type=int, default=None, help="the N cap (default 32 simulated, 16 model)")
    parser.add_argument("--k", type=int, default=None, help="--target_correct and --n_best_to_keep (4 / 1)")
    parser.add_argument("--wave", type=int, default=4)
    parser.add_argument("--drop-settled", action="store_true")
    parser.add_argument("--rates-from", help="a stats.jsonl whose per-prompt pass rates to draw from")
    parser.add_argument("--max-new", type=int, default=12, help="model mode: max_new_tokens")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    simulated = args.mode == "simulated"
    args.prompts = args.prompts or (500 if simulated else 40)
    args.n = args.n or (32 if simulated else 16)
    args.k = args.k or (4 if simulated else 1)
    name = args.name or f"adaptive-{args.mode}"
    workdir = OUT / name
    workdir.mkdir(parents=True, exist_ok=True)
    data, engine = _dataset(args, workdir)
    adaptive_opts = ["--target_correct", str(args.k), "--wave_size", str(args.wave)]
    adaptive_opts += ["--drop_settled", "true"] if args.drop_settled else []
    fixed = _run(args, data, engine, "fixed", [], workdir)
    adaptive = _run(args, data, engine, "adaptive", adaptive_opts, workdir)
    result = {"mode": args.mode, "prompts": args.prompts, "n": args.n, "k": args.k, "wave": args.wave,
              "drop_settled": args.drop_settled, "rates": args.rates_from or "Beta(0.3, 0.5)" if simulated else "model",
              "fixed": fixed, "adaptive": adaptive,
              "samples_per_pair_ratio": (round(fixed["samples_per_pair"] / adaptive["samples_per_pair"], 2)
                                         if fixed["pairs"] and adaptive["pairs"] else None),
              "pairs_ratio": round(adaptive["pairs"] / fixed["pairs"], 3) if fixed["pairs"] else None}
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = "".join(f"| {mode} | {r['pairs']} | {r['samples']} | {r['tokens']} | {r['samples_per_pair']} | "
                   f"{r['tokens_per_pair']} | {r['wall_s']} |\n"
                   for mode, r in (("fixed", fixed), ("adaptive", adaptive)))
    (results / f"{name}.md").write_text(
        f"# {name}\n\n`{' '.join(sys.argv)}`: {args.prompts} prompts, N={args.n}, K={args.k}, wave {args.wave}"
        f"{', drop_settled' if args.drop_settled else ''}, pass rates {result['rates']}\n\n"
        "| mode | pairs kept | samples | tokens | samples/pair | tokens/pair | wall s |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\nsamples per pair, fixed / adaptive: **{result['samples_per_pair_ratio']}x** (target >= 2x); "
        f"pairs kept, adaptive / fixed: **{result['pairs_ratio']}** (target >= 0.95)\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
