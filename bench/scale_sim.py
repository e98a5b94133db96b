#!/usr/bin/env python3
"""Fleet-size simulation on one box: hundreds of generators on the `simulated` engine against one redis-server.

    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/scale_sim.py --generators 256 --prompts 100000 \\
        --json bench/results/scale-sim-256x100k.json [--jobs 1] [--per-process 64] [--pool threads]
        [--shard-size 32] [--n 4] [--shard-seconds 20] [--max-new 16] [--finished-ttl 0]
    .venv/bin/python bench/scale_sim.py --plot bench/results/scale-sim.png bench/results/scale-sim-*.json

The generators are ``ceil(N / per-process)`` Celery worker processes with the threads pool (``--pool threads
--concurrency per-process``), each thread one simulated GPU: it sleeps ``--shard-seconds`` per shard and
holds one shard at a time. Beside them: one scorer (`--orm_model format`) and one aggregator (`aggregate,control`,
which also assembles the output), both ``--pool solo``, the real `producer submit` (``--jobs 1``; with more jobs the
producer's own ``Fleet.submit`` in this process, the prompts split evenly), all on bench/fleet.py's harness.

Measured (the JSON): ``efficiency`` = the ideal seconds (``ceil(shards / N) x shard seconds``: N perfect generators)
/ the seconds from the first job's creation to the last shard aggregated; ``efficiency_rate`` the same against
``shards x shard seconds / N`` (no last-round idling); rows lost / duplicated, read back from every output file;
Redis used memory (peak, per queued shard, per finished job's keys and their TTLs), Redis commands per shard (INFO
commandstats, this script's own polls left out), Redis CPU seconds (INFO cpu); the reaper's pass timed every
``--reap-every`` seconds (a ``Reaper.sweep`` of its own, real sends); submit seconds and the producer's peak RSS
(`/usr/bin/time -v`); CPU of every role (psutil) and of everything else on the machine (host busy time minus ours,
and the top other processes), load average samples.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from fleet import PY, REPO, Fleet, machine
from producer_rate import write_dataset
from run import parse_time_v

QUEUE = "generate.sim"
QUEUES = (QUEUE, "score", "aggregate")


class Polls(Counter):
    """This script's own Redis commands, by name, to leave out of the fleet's count."""

    def run(self, pipe, *names: str) -> list:
        self.update(names)
        return pipe.execute()


def redis_calls(db) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in db.info("commandstats").items()}


def redis_cpu(db) -> float:
    info = db.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def submit_options(args, data: Path, out: Path) -> list[str]:
    kwargs = json.dumps({"shard_seconds": args.shard_seconds})
    return ["submit", str(data), "--model", "sim", "--sampler_engine", "simulated", "--engine_kwargs", kwargs,
            "--orm_model", "format", "--orm_kwargs", json.dumps({"pattern": "^simulated answer"}),
            "--num_return_sequences", str(args.n), "--max_new_tokens", str(args.max_new),
            "--shard_size", str(args.shard_size), "--output_dir", str(out), "--output_file", "x.jsonl",
            "--override_exist_file", "true", "--no_progress", "--dataset_shuffle", "false"]


def submit_cli(fleet: Fleet, argv: list[str], polls: Polls, every: float) -> tuple[str, dict, dict]:
    """`producer submit` under /usr/bin/time -v: the job id, its wall seconds and peak RSS, and Redis's peak used
    memory and generate queue while it ran (sampled every ``every`` seconds)."""
    timing = fleet.workdir / "submit-time.txt"
    proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(timing), PY, "-m", "producer", *argv, "--broker",
                             fleet.url], cwd=REPO, env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak, pipe = {"used_memory": 0, "llen": 0, "bytes": 0}, fleet.db.pipeline(transaction=False)
    while proc.poll() is None:
        pipe.info("memory")
        pipe.llen(QUEUE)
        pipe.memory_usage(QUEUE)
        mem, llen, size = polls.run(pipe, "info", "llen", "memory")
        peak["used_memory"] = max(peak["used_memory"], mem["used_memory"])
        if llen > peak["llen"]:
            peak.update(llen=llen, bytes=size)
        time.sleep(every)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"submit failed: {err[-2000:]}")
    return out.strip().splitlines()[-1].split()[-1], parse_time_v(timing.read_text()), peak


def submit_many(fleet: Fleet, argvs: list[list[str]]) -> tuple[list[str], list[float]]:
    """Each job through the producer's own code (``Fleet.submit``) in this process: ids and seconds per job."""
    from producer.cli import _parse
    from producer.fleet import Fleet as Producer
    from producer.options import spec_from_args

    producer, ids, seconds = Producer(fleet.url), [], []
    for argv in argvs:
        t = time.perf_counter()
        ids.append(producer.submit(spec_from_args(_parse(argv))))
        seconds.append(time.perf_counter() - t)
    return ids, seconds


def ours(procs: dict[str, psutil.Process]) -> float:
    """CPU seconds of this process (with its reaped children: the producer) and of every fleet process."""
    me = psutil.Process().cpu_times()
    total = me.user + me.system + me.children_user + me.children_system
    for proc in procs.values():
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def host_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def others_snapshot(mine: set[int]) -> dict[int, tuple[str, float]]:
    out = {}
    for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
        if proc.info["pid"] not in mine and proc.info["cpu_times"]:
            t = proc.info["cpu_times"]
            out[proc.info["pid"]] = (proc.info["name"], t.user + t.system)
    return out


def others_top(before: dict, after: dict, top: int = 6) -> list[dict]:
    used = [(name, cpu - before.get(pid, (name, 0.0))[1], pid) for pid, (name, cpu) in after.items()]
    used.sort(key=lambda x: -x[1])
    return [{"pid": pid, "name": name, "cpu_s": round(cpu, 2)} for name, cpu, pid in used[:top] if cpu > 0.05]


def key_memory(db, job_id: str) -> dict:
    """Bytes and TTLs of a job's keys (MEMORY USAGE, exact)."""
    from workers.lifecycle.keys import Keys

    keys = Keys(job_id).all()
    pipe = db.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.ttl(key)
    got = pipe.execute()
    sizes = {k: got[2 * i] for i, k in enumerate(keys) if got[2 * i] is not None}
    name = {k: "job" if k.endswith("}") else k.rsplit(":", 1)[-1] for k in keys}
    ttls = [got[2 * i + 1] for i, k in enumerate(keys) if got[2 * i] is not None]
    return {"bytes": sum(sizes.values()), "keys": len(sizes), "min_ttl": min(ttls, default=None),
            "max_ttl": max(ttls, default=None),
            "largest": sorted(((name[k], v) for k, v in sizes.items()), key=lambda kv: -kv[1])[:4]}


def check_rows(out: Path, prompts: int, n: int) -> dict:
    """Every output row read back: distinct (prompt id, candidate) pairs against the rows expected. Every
    candidate passes the ORM, so each prompt gets N - 1 rows (the last of the tie is the rejected response)."""
    seen: set[tuple[str, str]] = set()
    lines = 0
    with (out / "x.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            seen.add((row["id"], row["messages"][-1]["content"]))
            lines += 1
    expected = prompts * min(n - 1, 5)
    return {"rows": lines, "distinct": len(seen), "expected": expected,
            "lost": max(0, expected - len(seen)), "duplicated": lines - len(seen)}


class Reaping:
    """Times a reaper pass (``Reaper.sweep``, real sends) on a client that counts its commands."""

    def __init__(self, url: str) -> None:
        import redis

        from producer.fleet import Fleet as Producer
        from workers.lifecycle.reaper import Reaper
        from schemas.settings import settings

        self.count = 0

        class Counted(redis.Redis):
            def execute_command(inner, *a, **kw):  # noqa: N805 - the client, not this class
                self.count += 1
                return super().execute_command(*a, **kw)

            def pipeline(inner, transaction=True, shard_hint=None):  # noqa: N805
                pipe = super().pipeline(transaction, shard_hint)
                run = pipe.execute

                def execute(raise_on_error=True):
                    self.count += len(pipe.command_stack) + (2 if transaction else 0)
                    return run(raise_on_error)

                pipe.execute = execute
                return pipe

        self.db = Counted.from_url(url)
        producer = Producer(url)
        self.reaper = Reaper(self.db, producer._send, settings())

    def sweep(self) -> tuple[float, int, int]:
        """(seconds, tasks sent, Redis commands) of one pass."""
        before = self.count
        t = time.perf_counter()
        sent = self.reaper.sweep()
        return time.perf_counter() - t, sent, self.count - before


def run(args) -> dict:
    procs_n = math.ceil(args.generators / args.per_process)
    sizes = [args.generators // procs_n + (k < args.generators % procs_n) for k in range(procs_n)]
    env = {"SAMPLEFLEET_FINISHED_TTL": str(args.finished_ttl)} if args.finished_ttl is not None else {}
    os.environ.update(env)  # this process's producer and reaper read the same settings as the workers
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("plot", "files")}
    record: dict = {"experiment": "scale-sim", "machine": machine(), "settings": settings,
                    "generator_processes": sizes, "started": time.time()}
    with Fleet() as fleet:
        t_start = time.perf_counter()
        fleet.worker("control,aggregate", "aggregator", **env)
        fleet.worker("score", "scorer", **env)
        for k, size in enumerate(sizes):
            fleet.worker(QUEUE, f"gen{k}", pool=args.pool, concurrency=size, **env)
        fleet.ready()
        record["fleet_start_s"] = round(time.perf_counter() - t_start, 2)
        procs = {name: psutil.Process(p.pid) for name, p in fleet.workers.items()}
        procs["redis"] = psutil.Process(fleet.redis.pid)
        mine = {os.getpid(), *(p.pid for p in procs.values())}
        db, polls = fleet.db, Polls()

        # the idle fleet's own traffic (heartbeats, empty BRPOPs, reapers), per worker process
        calls0, t0 = redis_calls(db), time.perf_counter()
        time.sleep(args.idle_seconds)
        idle = {k: v - calls0.get(k, 0) for k, v in redis_calls(db).items() if k != "info"}
        polls.update(["info"] * 2)
        record["idle_commands_per_s_per_process"] = round(
            sum(v for v in idle.values() if v > 0) / (time.perf_counter() - t0) / len(fleet.workers), 2)

        per_job = args.prompts // args.jobs
        data = fleet.workdir / "data.jsonl"
        write_dataset(data, per_job)
        argvs = [submit_options(args, data, fleet.workdir / f"out-{j}") for j in range(args.jobs)]
        base_mem = db.info("memory")["used_memory"]
        calls0, cpu0, redis_cpu0 = redis_calls(db), ours(procs), redis_cpu(db)
        role0 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
        busy0, others0, wall0 = host_busy(), others_snapshot(mine), time.time()
        reaping = Reaping(fleet.url)

        series: list[dict] = []
        reaps: list[dict] = []
        loads: list[list[float]] = []
        if args.jobs == 1:
            job_id, timing, during = submit_cli(fleet, argvs[0], polls, args.sample_every / 2)
            ids = [job_id]
            record["submit_seconds"], record["submit_peak_rss_mb"] = timing["wall_s"], timing.get("peak_rss_mb")
            record["submit_timing"] = timing
            record["submit_command"] = "producer " + shlex.join(argvs[0]) + " --broker URL"
        else:
            ids, seconds = submit_many(fleet, argvs)
            record["submit_seconds"] = round(sum(seconds), 3)
            record["submit_seconds_per_job"] = {"median": round(statistics.median(seconds), 3),
                                                "max": round(max(seconds), 3)}
            record["submit_command"] = f"{args.jobs} x Fleet.submit of: producer " + shlex.join(argvs[0])
        from workers.lifecycle.keys import Keys

        keys = {j: Keys(j) for j in ids}
        pipe = db.pipeline(transaction=False)
        for j in ids:
            pipe.hmget(keys[j].job, "shards", "created")
        meta = polls.run(pipe, *["hmget"] * len(ids))
        shards = {j: int(m[0]) for j, m in zip(ids, meta)}
        created = min(float(m[1]) for m in meta)
        total_shards = sum(shards.values())
        aggregated_at: dict[str, float] = {}
        progress: dict[str, int] = {}
        finished: dict[str, dict] = {}
        peak_mem, peak_queue, last_sample, last_reap = base_mem, {"llen": 0}, 0.0, time.perf_counter()
        if args.jobs == 1:
            peak_mem, peak_queue = max(base_mem, during["used_memory"]), {"llen": during["llen"],
                                                                          "bytes": during["bytes"]}
        deadline = time.perf_counter() + args.timeout
        while len(finished) < len(ids):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not finished after {args.timeout}s: {len(finished)}/{len(ids)} jobs")
            open_ = [j for j in ids if j not in aggregated_at]
            for j in open_:
                pipe.scard(keys[j].stage["aggregate"])
            now = time.time()
            for j, n in zip(open_, polls.run(pipe, *["scard"] * len(open_))):
                progress[j] = n
                if n >= shards[j]:
                    aggregated_at[j] = now
            waiting = [j for j in ids if j not in finished]
            for j in waiting:
                pipe.hget(keys[j].job, "finished")
            for j, fin in zip(waiting, polls.run(pipe, *["hget"] * len(waiting))):
                if fin:  # read now: with a short --finished-ttl the first jobs expire before the last ends
                    polls.update(["hgetall"] + ["memory", "ttl"] * len(keys[j].all()))
                    finished[j] = {"finished": float(fin), "record": fleet.job(j), "memory": key_memory(db, j)}
            if time.perf_counter() - last_sample >= args.sample_every:
                last_sample = time.perf_counter()
                pipe.info("memory")
                pipe.info("cpu")
                for q in QUEUES:
                    pipe.llen(q)
                pipe.memory_usage(QUEUE)
                pipe.hlen(keys[ids[0]].leases)
                mem, cpu, *depths, qbytes, leases = polls.run(pipe, "info", "info", *["llen"] * 3, "memory", "hlen")
                used = mem["used_memory"]
                peak_mem = max(peak_mem, used)
                if depths[0] > peak_queue["llen"]:
                    peak_queue = {"llen": depths[0], "bytes": qbytes}
                series.append({"t": round(time.time() - created, 2), "used_memory": used,
                               "redis_cpu": round(cpu["used_cpu_sys"] + cpu["used_cpu_user"] - redis_cpu0, 3),
                               "depth": depths, "aggregated_jobs": len(aggregated_at), "leases_job0": leases,
                               "done_shards": sum(progress.values())})
                loads.append([round(time.time() - created, 1), *map(float, Path("/proc/loadavg").read_text()
                                                                  .split()[:1])])
            if time.perf_counter() - last_reap >= args.reap_every:
                last_reap = time.perf_counter()
                seconds, sent, commands = reaping.sweep()
                reaps.append({"t": round(time.time() - created, 2), "seconds": round(seconds, 5), "sent": sent,
                              "commands": commands, "active_jobs": len(ids) - len(finished),
                              "aggregated_shards": sum(progress.values())})
            time.sleep(0.2)
        wall = time.time() - wall0
        calls = {k: v - calls0.get(k, 0) - polls.get(k, 0) for k, v in redis_calls(db).items()}
        calls = {k: v for k, v in calls.items() if v > 0 and k != "info"}
        redis_seconds = redis_cpu(db) - redis_cpu0
        cpu_all = ours(procs) - cpu0
        role = {name: round(sum(p.cpu_times()[:2]) - role0[name], 2) for name, p in procs.items()}
        busy, others1 = host_busy() - busy0, others_snapshot(mine)
        fin_after = time.perf_counter()
        # a finished job's keys after the run: bytes, TTLs; then the reaper's pass over finished jobs
        records = {j: finished[j]["record"] for j in ids}
        memory_after = {j: finished[j]["memory"] for j in ids}
        seconds, _, commands = reaping.sweep()
        reaper_after = {"seconds": round(seconds, 5), "commands": commands, "finished_jobs": len(ids)}
        rows = [check_rows(fleet.workdir / f"out-{j}", per_job, args.n) for j in range(args.jobs)]
        record["rows_check_s"] = round(time.perf_counter() - fin_after, 1)
        used_after = db.info("memory")["used_memory"]
        if args.finished_ttl:  # wait for the finished jobs' keys to expire: what Redis holds then
            time.sleep(args.finished_ttl + 1)
            record["after_ttl"] = {"used_memory": db.info("memory")["used_memory"],
                                   "job_keys_left": sum(key_memory(db, j)["keys"] for j in ids),
                                   "jobs_indexed": db.zcard(Keys.jobs)}
            seconds, _, commands = reaping.sweep()
            record["after_ttl"].update(reaper_seconds=round(seconds, 5), reaper_commands=commands,
                                       jobs_indexed_after_reaper=db.zcard(Keys.jobs))

    last_aggregated = max(aggregated_at.values())
    last_finished = max(f["finished"] for f in finished.values())
    fleet_s = last_aggregated - created
    ideal = math.ceil(total_shards / args.generators) * args.shard_seconds
    reap_s = [r["seconds"] for r in reaps] or [reaper_after["seconds"]]
    finished_bytes = [m["bytes"] for m in memory_after.values()]
    record.update({
        "jobs": len(ids), "job_ids": ids[:3], "shards": total_shards, "prompts": per_job * args.jobs,
        "statuses": dict(Counter(r["status"] for r in records.values())),
        "requeues": sum(int(r.get("requeues", 0)) for r in records.values()),
        "ideal_seconds": ideal, "fleet_seconds": round(fleet_s, 2),
        "efficiency": round(ideal / fleet_s, 4),
        "efficiency_rate": round(total_shards * args.shard_seconds / args.generators / fleet_s, 4),
        "shards_per_s": round(total_shards / fleet_s, 2),
        "ideal_shards_per_s": round(args.generators / args.shard_seconds, 2),
        "job_seconds": round(last_finished - created, 2),
        "finalise_seconds": round(last_finished - last_aggregated, 2),
        "rows_lost": sum(r["lost"] for r in rows), "rows_duplicated": sum(r["duplicated"] for r in rows),
        "rows": {"read": sum(r["rows"] for r in rows), "expected": sum(r["expected"] for r in rows)},
        "redis_baseline_memory_bytes": base_mem, "redis_peak_memory_bytes": peak_mem,
        "redis_memory_after_bytes": used_after,
        "redis_peak_queue": {**peak_queue, "bytes_per_shard": round(peak_queue.get("bytes", 0) /
                                                                    max(peak_queue["llen"], 1))},
        "finished_job_bytes": {"median": statistics.median(finished_bytes), "max": max(finished_bytes),
                               "per_shard": round(sum(finished_bytes) / total_shards, 1)},
        "finished_job_keys": next(iter(memory_after.values())),
        "redis_commands_per_shard": round(sum(calls.values()) / total_shards, 2),
        "redis_calls_per_shard": {k: round(v / total_shards, 2) for k, v in
                                  sorted(calls.items(), key=lambda kv: -kv[1])},
        "redis_cpu_seconds": round(redis_seconds, 3),
        "redis_cpu_ms_per_shard": round(redis_seconds * 1000 / total_shards, 3),
        "redis_busy": round(redis_seconds / wall, 4),
        "reaper_seconds_per_pass": {"median": round(statistics.median(reap_s), 5), "max": round(max(reap_s), 5),
                                    "n": len(reap_s)},
        "reaper_after_finish": reaper_after, "reaper_passes": reaps,
        "cpu_s": {"generators": round(sum(v for k, v in role.items() if k.startswith("gen")), 2),
                  **{k: v for k, v in role.items() if not k.startswith("gen")}, "all_ours": round(cpu_all, 2)},
        "wall_s": round(wall, 2), "host_busy_cores": round(busy / wall, 3),
        "others_cpu_cores": round(max(0.0, busy - cpu_all) / wall, 3),
        "others_top": others_top(others0, others1), "loadavg": loads[:: max(1, len(loads) // 40)],
        "series": series, "finished": time.time()})
    return record


def plot(paths: list[Path], out: Path) -> None:
    """The summary figure over several runs: efficiency, Redis CPU and memory, reaper cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in paths]
    gen = sorted((r for r in runs if r["settings"].get("series") == "generators"), key=lambda r: r["settings"]
                 ["generators"])
    size = sorted((r for r in runs if r["settings"].get("series") in ("size", "main")),
                  key=lambda r: (r["jobs"] > 1, r["prompts"]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    if gen:
        x = [r["settings"]["generators"] for r in gen]
        ax = axes[0][0]
        ax.plot(x, [r["efficiency"] for r in gen], "o-", label="efficiency (ceil rounds)")
        ax.plot(x, [r["efficiency_rate"] for r in gen], "s--", label="efficiency (rate)")
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="simulated generators", ylabel="efficiency", ylim=(0, 1.05),
               title="Efficiency vs generators")
        ax.legend(fontsize=8)
        ax = axes[0][1]
        ax.plot(x, [r["redis_busy"] * 100 for r in gen], "o-", label="Redis CPU % of a core")
        ax.plot(x, [r["host_busy_cores"] * 50 for r in gen], "s--", label="host busy % (2 cores)")
        ax.set(xscale="log", xlabel="simulated generators", ylabel="%", title="CPU vs generators")
        ax.legend(fontsize=8)
        ax = axes[0][2]
        ax.plot(x, [r["redis_peak_memory_bytes"] / 2**20 for r in gen], "o-", label="Redis peak used MB")
        ax.plot(x, [r["reaper_seconds_per_pass"]["median"] * 1000 for r in gen], "s--", label="reaper ms/pass")
        ax.set(xscale="log", xlabel="simulated generators", title="Redis memory, reaper vs generators")
        ax.legend(fontsize=8)
    if size:
        labels = [f"{r['prompts'] // 1000}k" + (f"\n{r['jobs']} jobs" if r["jobs"] > 1 else "") for r in size]
        ax = axes[1][0]
        ax.bar(labels, [r["redis_peak_memory_bytes"] / 2**20 for r in size], label="peak used")
        ax.bar(labels, [r["redis_memory_after_bytes"] / 2**20 for r in size], label="after (finished, TTL set)")
        ax.set(ylabel="MB", title="Redis memory vs job size")
        ax.legend(fontsize=8)
        ax = axes[1][1]
        ax.bar(labels, [r["redis_cpu_ms_per_shard"] for r in size], label="Redis CPU ms / shard")
        ax.plot(labels, [r["redis_commands_per_shard"] / 10 for r in size], "ko-", label="commands / shard / 10")
        ax.set(title="Redis cost per shard vs job size")
        ax.legend(fontsize=8)
        ax = axes[1][2]
        for r, label in zip(size, labels):
            passes = r["reaper_passes"]
            ax.plot([p["aggregated_shards"] for p in passes], [p["seconds"] * 1000 for p in passes], ".-",
                    label=label.replace("\n", " "))
        ax.set(xlabel="shards aggregated so far", ylabel="ms", title="Reaper pass vs finished shards")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generators", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=100_000, help="in all (split evenly over --jobs)")
    ap.add_argument("--json", type=Path, help="where to write the record")
    ap.add_argument("--jobs", type=int, default=1, help="concurrent jobs (more than 1: submitted in this process)")
    ap.add_argument("--per-process", type=int, default=64, help="generator threads per worker process")
    ap.add_argument("--pool", default="threads", choices=("threads", "gevent"))
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=16)
    ap.add_argument("--shard-seconds", type=float, default=20.0, help="the simulated generation time of a shard")
    ap.add_argument("--finished-ttl", type=int, help="SAMPLEFLEET_FINISHED_TTL for the fleet (default: its own)")
    ap.add_argument("--sample-every", type=float, default=1.0)
    ap.add_argument("--reap-every", type=float, default=5.0)
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="idle traffic measured before the submit")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--series", default="", help="label for --plot: generators, size, or main (the 256 x 100k run)")
    ap.add_argument("--plot", type=Path, help="draw the summary PNG from the JSON files given after the options")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    if args.plot:
        plot(args.files, args.plot)
        return
    if args.n < 2:
        ap.error("--n must be at least 2: with one candidate a prompt gets no row (no preference pair)")
    if args.prompts % args.jobs:
        ap.error(f"--prompts {args.prompts} is not a multiple of --jobs {args.jobs}")
    record = run(args)
    record["command"] = shlex.join(["bench/scale_sim.py", *sys.argv[1:]])
    keys = ("efficiency", "efficiency_rate", "rows_lost", "rows_duplicated", "redis_peak_memory_bytes",
            "redis_commands_per_shard", "redis_cpu_seconds", "reaper_seconds_per_pass", "submit_seconds",
            "job_seconds", "fleet_seconds", "ideal_seconds", "host_busy_cores", "others_cpu_cores", "statuses")
    print(json.dumps({k: record[k] for k in keys}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
