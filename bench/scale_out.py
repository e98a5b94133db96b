#!/usr/bin/env python3
"""Scale-out on one machine by simulation: 1..32 generator workers on the `simulated` engine (it sleeps
a latency model, fixed + per-token cost, instead of generating), one scorer, one aggregator.

    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/scale_out.py [--workers 1,2,4,8,16,32]
        [--shards-per-worker 6] [--shard-size 8] [--n 4] [--repeats 3]
        [--engine-kwargs '{"shard_seconds":1.0,"token_seconds":0.001}'] [--max-new 64]

Weak scaling: every generator worker gets the same number of shards, so the ideal wall time is the same
at every worker count and speed-up = throughput(n) / throughput(1). Queue depths (LLEN of each queue)
are sampled every 0.25 s and plotted per worker count; CPU seconds per process role come from psutil,
Redis commands per shard from INFO. Writes bench/results/scale-out.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import psutil

from fleet import RESULTS, Fleet, job_id_of, machine, stats, write_results

QUEUES = ("generate.sim", "score", "aggregate")


def dataset(path: Path, prompts: int) -> Path:
    path.write_text("".join(json.dumps({"query": f"Question {k}: what is {k} + {k}?", "response": str(2 * k)})
                            + "\n" for k in range(prompts)))
    return path


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        t = proc.cpu_times()
        out[name] = t.user + t.system
    return out


def redis_calls(fleet: Fleet) -> dict[str, int]:
    """Calls so far of each Redis command (INFO commandstats)."""
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in fleet.db.info("commandstats").items()}


def run_once(fleet: Fleet, procs: dict[str, psutil.Process], data: Path, args, out_dir: Path) -> dict:
    """Submit one job, sample queue depths until it ends; its timings, depths and CPU use."""
    submit = ["submit", str(data), "--model", "sim", "--sampler_engine", "simulated", "--engine_kwargs",
              args.engine_kwargs, "--orm_model", "format", "--num_return_sequences", str(args.n),
              "--max_new_tokens", str(args.max_new), "--shard_size", str(args.shard_size), "--output_dir",
              str(out_dir), "--output_file", "x.jsonl", "--override_exist_file", "true", "--no_progress",
              "--dataset_shuffle", "false"]
    cpu0, host0, cmds0 = cpu_seconds(procs), psutil.cpu_times(), redis_calls(fleet)
    t0 = time.time()
    job_id = job_id_of(fleet.producer(*submit).stdout)
    submitted = time.time()
    depths: list[list[float]] = []
    pipe = fleet.db.pipeline(transaction=False)

    polls = 0

    def sample() -> None:
        nonlocal polls
        polls += 1  # wait_job reads the job record (one HGETALL) at every poll
        if not depths or time.time() - depths[-1][0] - t0 >= args.sample_every:
            for q in QUEUES:
                pipe.llen(q)
            depths.append([round(time.time() - t0, 3), *pipe.execute()])

    job = fleet.wait_job(job_id, poll=0.05, on_poll=sample)
    wall = time.time() - t0
    cpu1, host1, cmds1 = cpu_seconds(procs), psutil.cpu_times(), redis_calls(fleet)
    shards = int(job["shards"])
    seconds = float(job["finished"]) - float(job["created"])
    used = {name: round(cpu1[name] - cpu0[name], 3) for name in cpu0}
    calls = {k: v - cmds0.get(k, 0) - (polls if k == "hgetall" else 0) for k, v in cmds1.items()
             if k not in ("info", "llen")}  # the benchmark's own polls left out
    calls = {k: v for k, v in calls.items() if v > 0}
    busy = sum(getattr(host1, f) - getattr(host0, f) for f in ("user", "nice", "system", "irq", "softirq"))
    return {"job": job_id, "status": job["status"], "shards": shards, "prompts": int(job["prompts"]),
            "job_seconds": round(seconds, 3), "wall_s": round(wall, 3), "submit_s": round(submitted - t0, 3),
            "prompts_per_s": round(int(job["prompts"]) / seconds, 3),
            "cpu_s": {"generators": round(sum(v for k, v in used.items() if k.startswith("gen")), 3),
                      "scorer": used["scorer"], "aggregator": used["aggregator"], "redis": used["redis"]},
            "host_busy_cores": round(busy / wall, 2),
            "redis_clients_after": fleet.db.info("clients")["connected_clients"],
            "redis_commands_per_shard": round(sum(calls.values()) / shards, 1),
            "redis_calls_per_shard": {k: round(v / shards, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
            "max_depth": {q: max(d[1 + k] for d in depths) for k, q in enumerate(QUEUES)},
            "depths": depths, "command": "producer " + shlex.join(submit)}


def sweep(args) -> dict:
    record = {"experiment": "scale-out", "machine": machine(), "settings": vars(args), "started": time.time(),
              "runs": []}
    with Fleet() as fleet:
        fleet.worker("control,aggregate", "aggregator")
        fleet.worker("score", "scorer")
        fleet.ready()
        base = {"redis": psutil.Process(fleet.redis.pid), "scorer": psutil.Process(fleet.workers["scorer"].pid),
                "aggregator": psutil.Process(fleet.workers["aggregator"].pid)}
        for n in args.workers:
            gens = [fleet.worker("generate.sim", f"gen{n}-{k}") for k in range(n)]
            fleet.ready()
            procs = {**base, **{f"gen{k}": psutil.Process(p.pid) for k, p in enumerate(gens)}}
            data = dataset(fleet.workdir / f"data-{n}.jsonl", n * args.shards_per_worker * args.shard_size)
            for r in range(args.repeats):
                run = {"workers": n, "repeat": r, **run_once(fleet, procs, data, args, fleet.workdir / f"out-{n}-{r}")}
                print(f"workers {n:2d} run {r}: {run['prompts_per_s']:.1f} prompts/s, job {run['job_seconds']}s, "
                      f"host busy {run['host_busy_cores']} cores, max depths {run['max_depth']}", flush=True)
                record["runs"].append(run)
            for k in range(n):
                name = f"gen{n}-{k}"
                fleet.workers.pop(name).terminate()
            for proc in gens:
                proc.wait(30)
    record["finished"] = time.time()
    return record


def summarise(record: dict) -> list[dict]:
    rows, base = [], None
    for n in record["settings"]["workers"]:
        runs = [r for r in record["runs"] if r["workers"] == n and r["status"] == "done"]
        if not runs:
            continue
        thr = stats([r["prompts_per_s"] for r in runs])
        base = base or thr["median"]
        speedup = thr["median"] / base
        cpu = {role: stats([r["cpu_s"][role] / r["shards"] * 1000 for r in runs])["median"]
               for role in ("generators", "scorer", "aggregator", "redis")}
        rows.append({"workers": n, "throughput": thr, "speedup": round(speedup, 3),
                     "efficiency": round(speedup / n, 3), "job_seconds": stats([r["job_seconds"] for r in runs]),
                     "host_busy_cores": stats([r["host_busy_cores"] for r in runs]),
                     "cpu_ms_per_shard": cpu,
                     "scorer_busy": stats([r["cpu_s"]["scorer"] / r["job_seconds"] for r in runs])["median"],
                     "aggregator_busy": stats([r["cpu_s"]["aggregator"] / r["job_seconds"] for r in runs])["median"],
                     "redis_commands_per_shard": stats([r["redis_commands_per_shard"] for r in runs])["median"],
                     "max_depth": {q: max(r["max_depth"][q] for r in runs) for q in QUEUES}})
    return rows


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = record["settings"]["workers"]
    cols = 3
    fig, axes = plt.subplots(-(-len(counts) // cols), cols, figsize=(13, 3.2 * -(-len(counts) // cols)),
                             squeeze=False, sharey=False)
    for ax, n in zip(axes.flat, counts):
        run = next(r for r in record["runs"] if r["workers"] == n)
        t = [d[0] for d in run["depths"]]
        for k, q in enumerate(QUEUES):
            ax.plot(t, [d[1 + k] for d in run["depths"]], label=q, drawstyle="steps-post")
        ax.set_title(f"{n} generator worker{'s' if n > 1 else ''} ({run['shards']} shards)")
        ax.set_xlabel("s since submit")
        ax.set_ylabel("messages waiting")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(counts):]:
        ax.axis("off")
    fig.suptitle("Queue depth over time (first run of each worker count); score/aggregate near 0 = not a bottleneck")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def markdown(record: dict, rows: list[dict], argv: list[str]) -> str:
    s, m = record["settings"], record["machine"]
    lines = ["# Scale-out by simulation (weak scaling)", "",
             f"Command: `{shlex.join(argv)}` (under `flock /tmp/samplefleet-cpu.lock`)", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, Python "
             f"{m['python']}, celery {m['celery']}, redis-py {m['redis_py']}, {m['redis_server']}, git "
             f"{m['git_head']} ({m['uncommitted_files']} uncommitted files), load at start {m['loadavg_at_start']}.",
             "",
             f"Each generator worker's share: {s['shards_per_worker']} shards of {s['shard_size']} prompts x N={s['n']}"
             f" on the simulated engine `{s['engine_kwargs']}` (it sleeps shard_seconds + token_seconds x the shard's "
             f"tokens; max_new_tokens {s['max_new']}); one scorer (`--orm_model format`), one aggregator (also serving "
             f"`control`), one redis-server. {s['repeats']} runs per worker count; median (min-max).", "",
             "| generator workers | prompts/s | speed-up | efficiency | job s | host busy cores | scorer busy | "
             "aggregator busy | CPU ms/shard gen / score / agg / redis | Redis cmds/shard | max depth gen / score / agg |",
             "| ---: | --- | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        t, j, h, c, d = r["throughput"], r["job_seconds"], r["host_busy_cores"], r["cpu_ms_per_shard"], r["max_depth"]
        lines.append(f"| {r['workers']} | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {r['speedup']:.2f} | "
                     f"{r['efficiency']:.2f} | {j['median']:.2f} ({j['min']:.2f}-{j['max']:.2f}) | "
                     f"{h['median']:.2f} ({h['min']:.2f}-{h['max']:.2f}) | {r['scorer_busy']:.0%} | "
                     f"{r['aggregator_busy']:.0%} | {c['generators']:.0f} / {c['scorer']:.0f} / {c['aggregator']:.0f}"
                     f" / {c['redis']:.1f} | {r['redis_commands_per_shard']:.0f} | "
                     f"{d['generate.sim']} / {d['score']} / {d['aggregate']} |")
    lines += ["", "speed-up = median prompts/s at n workers / median at 1 worker; efficiency = speed-up / n (target "
              ">= 0.9). Job s = the job record's `finished - created` (Redis), which includes enqueueing and the "
              "final assembly. Host busy cores = the machine's busy CPU time / wall time during the run (2 cores "
              "exist). Scorer/aggregator busy = their CPU seconds / job seconds (1.0 = one core saturated). "
              "CPU ms/shard = CPU seconds of that role per shard (gen = all generator processes together).", "",
              f"![queue depths]({Path(record['settings']['name']).name}.png)", ""]
    first = next(r for r in record["runs"] if r["workers"] == rows[0]["workers"])
    lines += [f"Redis calls per shard by command ({rows[0]['workers']} generator worker(s), first run; the "
              "benchmark's own INFO, LLEN and job-record polls left out; idle workers' BRPOP polls included): "
              + ", ".join(f"{k} {v:g}" for k, v in first["redis_calls_per_shard"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--shards-per-worker", type=int, default=6)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--engine-kwargs", default='{"shard_seconds":1.0,"token_seconds":0.001}')
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-every", type=float, default=0.25)
    parser.add_argument("--name", default="scale-out", help="results file stem in bench/results")
    args = parser.parse_args()
    record = sweep(args)
    rows = summarise(record)
    record["summary"] = rows
    plot(record, RESULTS / f"{args.name}.png")
    write_results(args.name, record, markdown(record, rows, ["bench/scale_out.py", *sys.argv[1:]]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
