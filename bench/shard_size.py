#!/usr/bin/env python3
"""Shard size: throughput and recovery cost vs `--shard_size`, with the real model on one generator worker.

    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/shard_size.py [--sizes 1,4,8,16,32,64]
        [--prompts 64] [--n 4] [--max-new 16] [--repeats 2] [--name shard-size]

One fleet: a generator worker (transformers engine, smollm2-135m-instruct, loaded at start and kept warm),
an aggregator (also serving `control`), one redis-server. For each shard size the same job (the first
--prompts prompts of bench/bench20.jsonl#P, N candidates, max_new tokens, no reward model) is submitted
and timed from the job record (created -> finished). Shard sizes run interleaved, round by round, so
drift hits each alike. Recovery cost = the time of one generate task (the work redone when its worker
dies mid-shard; the redelivery wait, visibility_timeout, comes on top), read from the worker's log.
Writes bench/results/<name>.{md,json}.
"""
from __future__ import annotations

import argparse
import re
import shlex
import statistics
import sys
import time

from fleet import BENCH, Fleet, job_id_of, machine, stats, write_results

MODEL = "smollm2-135m-instruct"
TASK_TIME = re.compile(r"Task samplefleet\.generate\[[^\]]+\] succeeded in ([0-9.]+)s")


def submit_args(args, size: int, out: str) -> list[str]:
    return ["submit", f"{BENCH / 'bench20.jsonl'}#{args.prompts}", "--model", MODEL, "--num_return_sequences",
            str(args.n), "--max_new_tokens", str(args.max_new), "--shard_size", str(size), "--output_dir", out,
            "--output_file", "x.jsonl", "--override_exist_file", "true", "--no_progress"]


def run_once(fleet: Fleet, args, size: int, rnd: int) -> dict:
    from workers.lifecycle.keys import Keys

    seen = len(fleet.log("generator"))
    argv = submit_args(args, size, str(fleet.workdir / f"out-{size}-{rnd}"))
    job_id = job_id_of(fleet.producer(*argv).stdout)
    job = fleet.wait_job(job_id, poll=0.1)
    counters = {k.decode(): int(v) for k, v in fleet.db.hgetall(Keys(job_id).counters).items()}
    seconds = float(job["finished"]) - float(job["created"])
    tasks = [float(t) for t in TASK_TIME.findall(fleet.log("generator")[seen:])]
    return {"shard_size": size, "round": rnd, "status": job["status"], "shards": int(job["shards"]),
            "job_seconds": round(seconds, 3), "samples_per_s": round(counters.get("candidates", 0) / seconds, 3),
            "tokens_per_s": round(counters.get("tokens", 0) / seconds, 2), "tokens": counters.get("tokens", 0),
            "shard_seconds_median": round(statistics.median(tasks), 3) if tasks else None,
            "shard_seconds_max": round(max(tasks), 3) if tasks else None, "tasks_seen": len(tasks),
            "command": "producer " + shlex.join(argv) + " --broker URL"}


def markdown(record: dict, argv: list[str]) -> str:
    m, s = record["machine"], record["settings"]
    lines = ["# Shard size: throughput and recovery cost", "",
             f"Command: `{shlex.join(argv)}` (under `flock /tmp/samplefleet-cpu.lock`)", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, Python {m['python']}, celery "
             f"{m['celery']}, git {m['git_head']} ({m['uncommitted_files']} uncommitted files).", "",
             f"Job: {s['prompts']} prompts (bench/bench20.jsonl#{s['prompts']}), N={s['n']}, max_new_tokens "
             f"{s['max_new']}, no reward model, default max_batch_size 128; one generator worker ({MODEL}, "
             f"transformers engine on CPU, preloaded), one aggregator. {s['repeats']} rounds, sizes interleaved; "
             "median (min-max).", "",
             "| --shard_size | shards | samples/s | tokens/s | job s | one shard s (= work redone on a lost worker) |",
             "| ---: | ---: | --- | --- | --- | --- |"]
    for r in record["summary"]:
        sp, tk, js, sh = r["samples_per_s"], r["tokens_per_s"], r["job_seconds"], r["shard_seconds"]
        lines.append(f"| {r['shard_size']} | {r['shards']} | {sp['median']:.1f} ({sp['min']:.1f}-{sp['max']:.1f}) | "
                     f"{tk['median']:.0f} ({tk['min']:.0f}-{tk['max']:.0f}) | {js['median']:.1f} ({js['min']:.1f}-"
                     f"{js['max']:.1f}) | {sh['median']:.2f} ({sh['min']:.2f}-{sh['max']:.2f}) |")
    lines += ["", "samples/s and tokens/s = the job's counters / (finished - created); tokens include EOS. One shard s = "
              "median generate-task time in the worker's log (min-max over the runs' medians).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="shard-size")
    args = parser.parse_args()
    record = {"experiment": "shard-size", "machine": machine(), "settings": vars(args), "runs": []}
    with Fleet() as fleet:
        fleet.worker("control,aggregate", "aggregator")
        fleet.worker(f"generate.{MODEL}", "generator", SAMPLEFLEET_PRELOAD_MODEL=MODEL)
        fleet.ready()
        for rnd in range(args.repeats):
            for size in args.sizes:
                run = run_once(fleet, args, size, rnd)
                print(f"shard_size {size:3d} round {rnd}: {run['samples_per_s']} samples/s, job {run['job_seconds']}s,"
                      f" shard {run['shard_seconds_median']}s", flush=True)
                record["runs"].append(run)
    record["summary"] = []
    for size in args.sizes:
        runs = [r for r in record["runs"] if r["shard_size"] == size and r["status"] == "done"]
        record["summary"].append({"shard_size": size, "shards": runs[0]["shards"],
                                  **{k: stats([r[k] for r in runs]) for k in ("samples_per_s", "tokens_per_s",
                                                                              "job_seconds")},
                                  "shard_seconds": stats([r["shard_seconds_median"] for r in runs])})
    write_results(args.name, record, markdown(record, ["bench/shard_size.py", *sys.argv[1:]]))
    print((BENCH / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
