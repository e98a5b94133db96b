#!/usr/bin/env python3
"""Producer: how fast `producer submit` enqueues a big dataset into a real Redis, and its peak memory.

    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/producer_rate.py [--sizes 100000,1000000]
        [--repeats 3] [--shard-size 32] [--profile 100000] [--name producer-rate]

A jsonl of the largest size is generated in a temporary folder (never in git; smaller sizes are its first
lines); one Celery worker serves the `control` queue (the producer's open_job check), none consumes the
generate queue, so every shard stays in Redis. Each submit runs under `/usr/bin/time -v`: enqueue rate =
prompts / wall seconds of the whole command (start-up, the counting pass that checks every row, and the
enqueue pass), peak RSS from its report. Redis is flushed between runs. With ``--profile N`` one extra
submit of N prompts runs under cProfile and its top functions go into the results.
Targets (issue 7): >= 5,000 prompts/s, <= 300 MB peak RSS for 1M prompts, flat in the dataset size.
Writes bench/results/<name>.{md,json}.
"""
from __future__ import annotations

import argparse
import io
import json
import pstats
import shlex
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

from fleet import PY, REPO, RESULTS, Fleet, machine, stats, write_results
from run import parse_time_v

TOPICS = ("a train leaves the station", "a farmer sells apples", "a tank fills with water", "a loan accrues interest")


def write_dataset(path: Path, rows: int) -> None:
    """Math-word-problem-like rows (~250 bytes each, a query and a reference answer)."""
    with path.open("w") as f:
        for k in range(rows):
            topic = TOPICS[k % len(TOPICS)]
            f.write(json.dumps({"query": f"Problem {k}: {topic} at {k % 97 + 3} units per hour for {k % 13 + 2} "
                                         f"hours, then half as fast for {k % 7 + 1} hours. How far in total? Put the "
                                         "final answer in \\boxed{}.",
                                "response": f"\\boxed{{{(k % 97 + 3) * (k % 13 + 2)}}}", "source": "bench"}) + "\n")


def head(src: Path, dst: Path, rows: int) -> Path:
    with src.open() as f, dst.open("w") as out:
        out.writelines(islice(f, rows))
    return dst


def submit_args(data: Path, fleet: Fleet, shard_size: int) -> list[str]:
    return ["submit", str(data), "--model", "sim", "--sampler_engine", "simulated", "--shard_size", str(shard_size),
            "--output_dir", str(fleet.workdir / "out"), "--output_file", "x.jsonl", "--override_exist_file", "true",
            "--no_progress", "--broker", fleet.url]


def measure(fleet: Fleet, data: Path, prompts: int, shard_size: int) -> dict:
    fleet.db.flushall()
    argv = ["/usr/bin/time", "-v", "-o", str(fleet.workdir / "time.txt"), PY, "-m", "producer",
            *submit_args(data, fleet, shard_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=fleet.env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"submit failed: {proc.stderr[-2000:]}")
    timed = parse_time_v((fleet.workdir / "time.txt").read_text())
    queued = fleet.db.llen("generate.sim")
    expected = -(-prompts // shard_size)
    if queued != expected:
        raise RuntimeError(f"{queued} shards in the queue, expected {expected}")
    return {"prompts": prompts, "shards": queued, **timed, "wall_s_perf": round(wall, 3),
            "prompts_per_s": round(prompts / timed["wall_s"], 1),
            "redis_used_mb": round(fleet.db.info("memory")["used_memory"] / 2**20, 1),
            "command": "producer " + shlex.join(submit_args(data, fleet, shard_size)[:-2] + ["--broker", "URL"])}


def profile(fleet: Fleet, data: Path, shard_size: int, top: int = 25) -> str:
    fleet.db.flushall()
    out = fleet.workdir / "submit.prof"
    subprocess.run([PY, "-m", "cProfile", "-o", str(out), "-m", "producer", *submit_args(data, fleet, shard_size)],
                   cwd=REPO, env=fleet.env(), check=True, capture_output=True)
    text = io.StringIO()
    pstats.Stats(str(out), stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()[text.getvalue().find("   ncalls"):]


def markdown(record: dict, argv: list[str]) -> str:
    m = record["machine"]
    lines = ["# Producer enqueue rate and peak memory", "",
             f"Command: `{shlex.join(argv)}` (under `flock /tmp/samplefleet-cpu.lock`)", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, Python {m['python']}, celery "
             f"{m['celery']}, redis-py {m['redis_py']}, pydantic {m['pydantic']}, {m['redis_server']}, git "
             f"{m['git_head']} ({m['uncommitted_files']} uncommitted files).", "",
             "Each run: `" + record["runs"][0]["command"] + "` on the first P rows of a generated jsonl "
             "(query + reference answer, ~250 bytes a row), one control worker, nothing consuming the generate "
             "queue. Median (min-max) over the runs.", "",
             "| prompts | runs | prompts/s | wall s | peak RSS MB | user s | Redis used MB after |",
             "| ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for size, s in record["summary"].items():
        r, w, m_ = s["prompts_per_s"], s["wall_s"], s["peak_rss_mb"]
        lines.append(f"| {int(size):,} | {r['n']} | {r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) | "
                     f"{w['median']:.1f} ({w['min']:.1f}-{w['max']:.1f}) | {m_['median']:.0f} ({m_['min']:.0f}-"
                     f"{m_['max']:.0f}) | {s['user_s']['median']:.1f} | {s['redis_used_mb']['median']:.0f} |")
    lines += ["", "Targets: >= 5,000 prompts/s and <= 300 MB peak RSS at 1M prompts, flat in the dataset size.", ""]
    if record.get("before"):
        b = record["before"]
        lines += [f"## Before / after (before: `{b['file']}`, git {b['git_head']})", "",
                  "| prompts | prompts/s before | after | peak RSS MB before | after |", "| ---: | ---: | ---: | ---: | ---: |"]
        for size, s in record["summary"].items():
            if size in b["summary"]:
                old = b["summary"][size]
                lines.append(f"| {int(size):,} | {old['prompts_per_s']['median']:,.0f} | {s['prompts_per_s']['median']:,.0f}"
                             f" | {old['peak_rss_mb']['median']:.0f} | {s['peak_rss_mb']['median']:.0f} |")
        lines += ["", b.get("changes", ""), ""]
    if record.get("profile"):
        lines += [f"## cProfile of one submit of {record['settings']['profile']:,} prompts (top by own time)", "",
                  "```", record["profile"].rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--profile", type=int, default=0, help="also profile one submit of this many prompts")
    parser.add_argument("--name", default="producer-rate")
    parser.add_argument("--before", help="a results stem (e.g. producer-rate-before) to compare with")
    args = parser.parse_args()
    record = {"experiment": "producer-rate", "machine": machine(), "settings": vars(args), "runs": []}
    with Fleet() as fleet:
        fleet.worker("control", "control")
        full = fleet.workdir / "full.jsonl"
        write_dataset(full, max(args.sizes + [args.profile]))
        fleet.ready()
        for size in args.sizes:
            data = head(full, fleet.workdir / f"data-{size}.jsonl", size)
            for r in range(args.repeats):
                run = {"repeat": r, **measure(fleet, data, size, args.shard_size)}
                print(f"{size:>9,} prompts run {r}: {run['prompts_per_s']:,.0f} prompts/s, {run['wall_s']} s, "
                      f"peak RSS {run['peak_rss_mb']} MB", flush=True)
                record["runs"].append(run)
        if args.profile:
            record["profile"] = profile(fleet, head(full, fleet.workdir / "prof.jsonl", args.profile),
                                        args.shard_size)
    record["summary"] = {str(size): {key: stats([r[key] for r in record["runs"] if r["prompts"] == size])
                                     for key in ("prompts_per_s", "wall_s", "peak_rss_mb", "user_s", "redis_used_mb")}
                         for size in args.sizes}
    if args.before:
        before = json.loads((RESULTS / f"{args.before}.json").read_text())
        record["before"] = {"file": f"bench/results/{args.before}.json", "git_head": before["machine"]["git_head"],
                            "summary": before["summary"]}
    write_results(args.name, record, markdown(record, ["bench/producer_rate.py", *sys.argv[1:]]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
