#!/usr/bin/env python3
"""What the statistics cost: the share of a run's wall time spent making the stats file and the manifest's means.

    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/stats_cost.py [--prompts 20] [--n 4] [--max-new 128]
    .venv/bin/python bench/stats_cost.py --simulated [--prompts 2000] [--n 16]    # no model: the worst case

One local run in this process (the demo model on bench/bench20.jsonl with the math ORM, or the simulated engine
with the accuracy ORM), with every statistics step timed where it runs: the per-prompt lines and histograms
(aggregate step), the dataset means and bootstrap intervals (manifest), the stats file's serialisation
(finaliser). Reported: those seconds, the run's wall time and their ratio (target: under 5%). The simulated
engine generates in no time, so there the ratio is an upper bound no real run reaches.
Writes bench/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
spent: dict[str, float] = defaultdict(float)


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulated", action="store_true")
    parser.add_argument("--prompts", type=int, default=None, help="default 20 (model), 2000 (simulated)")
    parser.add_argument("--n", type=int, default=None, help="default 4 (model), 16 (simulated)")
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    import workers.aggregate as aggregate
    import workers.manifest as manifest
    from producer.submit import run_local
    from schemas import JobSpec, PromptStats

    aggregate.prompt_stats = _timed("prompt lines (aggregate)", aggregate.prompt_stats)
    aggregate.histograms = _timed("histograms (aggregate)", aggregate.histograms)
    manifest.dataset_stats = _timed("means + bootstrap (manifest)", manifest.dataset_stats)
    manifest.merge_histograms = _timed("histograms (manifest)", manifest.merge_histograms)
    PromptStats.to_json_line = _timed("stats file lines (finalise)", PromptStats.to_json_line)
    prompts = args.prompts or (2000 if args.simulated else 20)
    n = args.n or (16 if args.simulated else 4)
    with tempfile.TemporaryDirectory() as out:
        if args.simulated:
            data = Path(out) / "rates.jsonl"
            data.write_text("".join(json.dumps({"query": f"p{i}", "response": str(i), "pass_rate": (i % 10) / 10})
                                    + "\n" for i in range(prompts)))
            job = {"model": "x", "sampler_engine": "simulated", "orm_model": "accuracy",
                   "engine_kwargs": {"shard_seconds": 0, "pass_rate_column": "pass_rate"}}
            source = str(data)
        else:
            job = {"model": "smollm2-135m-instruct", "orm_model": "math"}
            source = str(ROOT / "bench" / "bench20.jsonl")
        spec = JobSpec.model_validate({**job, "datasets": [{"source": source, "n": prompts}], "output_dir": out,
                                       "output_file": "run.jsonl",
                                       "sampling": {"num_return_sequences": n, "max_new_tokens": args.max_new}})
        started = time.perf_counter()
        result = run_local(spec, progress=False)
        wall = time.perf_counter() - started
    stats_s = sum(spent.values())
    out = {"engine": "simulated" if args.simulated else "transformers", "prompts": prompts, "n": n,
           "wall_s": round(wall, 3), "stats_s": round(stats_s, 4), "share": round(stats_s / wall, 5),
           "steps": {k: round(v, 4) for k, v in spent.items()}, "samples": result.manifest["counts"]["candidates"]}
    name = args.name or ("stats-cost-simulated" if args.simulated else "stats-cost")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    steps = "".join(f"| {k} | {v:.4f} |\n" for k, v in out["steps"].items())
    (results / f"{name}.md").write_text(
        f"# {name}\n\n`{' '.join(sys.argv)}`: {out['engine']}, {prompts} prompts x N={n}\n\n| step | seconds |\n"
        f"| --- | --- |\n{steps}\nstatistics {out['stats_s']} s of a {out['wall_s']} s run: **{out['share']:.2%}** "
        "(target < 5%)\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
