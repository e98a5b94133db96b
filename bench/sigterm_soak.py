"""SIGTERM soak: generators stopped again and again during fixed-N and adaptive jobs, default settings.

    flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/sigterm_soak.py [--jobs 3] [--per-job 4]

A throwaway fleet (bench/fleet.py): three generators (one of them idle at any time, as a fleet with room to
take a handed-back shard), a scorer, an aggregator; no SAMPLEFLEET_* timing is set. Each job (2 shards of 2
prompts, the `simulated` engine, 40 s a shard or 10 s a wave, scored by the accuracy ORM; fixed-N and
adaptive in turn) gets ``--per-job`` SIGTERMs: each goes to a generator 1-3 s into a generate stage it holds,
a replacement generator starts at once (as Kubernetes starts a new pod), and the next SIGTERM waits until the
victim has exited, its shard runs again and the replacement is up. Measured per SIGTERM: seconds to the
victim's exit (and its exit code), seconds until another worker runs the shard (the same step or a later
one). Per job: rows against an in-process run of the same job (0 lost, 0 duplicated expected).
One JSON line per SIGTERM and one per job in ``bench/results/sigterm-soak.jsonl``; the summary in
``bench/results/sigterm-soak.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from fleet import PY, REPO, RESULTS, Fleet, job_id_of, machine, stats

GENERATORS = 3
SHARD_SECONDS = {"fixed": 40.0, "adaptive": 10.0}


def job_args(kind: str, shard_seconds: float) -> list[str]:
    engine = {"shard_seconds": shard_seconds, "pass_rate_column": "pass_rate"}
    args = ["--model", "sim", "--sampler_engine", "simulated", "--engine_kwargs", json.dumps(engine),
            "--orm_model", "accuracy", "--max_new_tokens", "16", "--shard_size", "2", "--seed", "11",
            "--num_return_sequences", "8" if kind == "adaptive" else "3", "--no_progress"]
    return args + (["--target_correct", "2", "--wave_size", "2"] if kind == "adaptive" else [])


class Soak:
    def __init__(self, fleet: Fleet, workdir: Path) -> None:
        self.fleet, self.workdir, self.count = fleet, workdir, 0
        self.env = {"SAMPLEFLEET_HEARTBEAT_DIR": str(fleet.workdir / "heartbeat")}
        self.generators: list[str] = []

    def generator(self) -> str:
        name = f"gen{self.count}"
        self.count += 1
        self.fleet.worker("generate", name, **self.env)
        self.generators.append(name)
        return name

    def up(self, name: str, timeout: float = 120) -> None:
        """Wait until one worker is consuming (its log says so: it may take a shard at once, and a busy solo worker
        answers no ping; ``Fleet.ready`` pings them all)."""
        deadline = time.monotonic() + timeout
        while f"{name}@127.0.0.1 ready." not in self.fleet.log(name):
            if time.monotonic() > deadline or self.fleet.workers[name].poll() is not None:
                raise RuntimeError(f"worker {name} did not start: {self.fleet.log(name)[-2000:]}")
            time.sleep(0.1)

    def held(self, state) -> tuple[int, str, object] | None:
        """(shard, worker, lease) of a generate stage a live generator has run for 1 s or more."""
        for index, (lease, age, _) in state.leases().items():
            proc = self.fleet.workers.get(lease.owner.split("@")[0])
            if lease.stage == "generate" and lease.state == "running" and proc and proc.poll() is None and age >= 1:
                return index, lease.owner.split("@")[0], lease
        return None

    def trial(self, state, rng: random.Random, kind: str, job_no: int) -> dict | None:
        deadline = time.monotonic() + 60
        while (found := self.held(state)) is None:
            if time.monotonic() > deadline or "finished" in self.fleet.job(state.id):
                print(f"job {state.id}: no generate stage left to stop", flush=True)
                return None
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 2))
        index, victim, lease = found
        proc = self.fleet.workers[victim]
        if proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        replacement = self.generator()
        again = None
        while again is None and time.monotonic() - sent < 120:
            now = state.leases().get(index)
            if (now and now[0].owner.split("@")[0] not in (victim, "reaper") and now[0].state == "running"
                    and now[0].rank >= lease.rank) or index in state.aggregated():  # rank: the step's place
                again = time.monotonic() - sent
            time.sleep(0.02)
        code = proc.wait(60)
        exited = time.monotonic() - sent
        del self.fleet.workers[victim]  # gone: Fleet.ready() would count it as a failed start
        self.up(replacement)  # before the next SIGTERM
        print(f"replacement {replacement} up {time.monotonic() - sent:.1f}s after the SIGTERM", flush=True)
        log = self.fleet.log(victim)
        return {"kind": "sigterm", "job": job_no, "mode": kind, "shard": index, "stage": lease.stage,
                "wave": lease.wave, "victim": victim, "replacement": replacement, "exit_code": code,
                "sigterm_to_exit_s": round(exited, 2), "sigterm_to_running_again_s": round(again, 2) if again else None,
                "handed_back": "handed back and sent again" in log}

    def job(self, kind: str, job_no: int, per_job: int, rng: random.Random) -> list[dict]:
        from workers.lifecycle.state import JobState

        data = self.workdir / "data.jsonl"
        out = f"{kind}-{job_no}.jsonl"
        submitted = subprocess.run([PY, "-m", "producer", "submit", str(data), *job_args(kind, SHARD_SECONDS[kind]),
                                    "--output_dir", str(self.workdir), "--output_file", out], cwd=REPO,
                                   env=self.fleet.env(), capture_output=True, text=True, check=True)
        state = JobState(self.fleet.db, job_id_of(submitted.stdout))
        trials = []
        while len(trials) < per_job:
            trial = self.trial(state, rng, kind, job_no)
            if trial is None:
                break
            trials.append(trial)
            print(json.dumps(trial), flush=True)
        record = self.fleet.wait_job(state.id, timeout=900)
        expected = Counter((self.workdir / f"reference-{kind}.jsonl").read_text().splitlines())
        written = Counter((self.workdir / out).read_text().splitlines()) if (self.workdir / out).exists() else Counter()
        deliveries = {k.decode(): int(v) for k, v in self.fleet.db.hgetall(state.keys.deliveries).items()}
        summary = {"kind": "job", "job": job_no, "mode": kind, "id": state.id, "status": record.get("status"),
                   "sigterms": len(trials), "requeues": int(record.get("requeues", 0)),
                   "expected_rows": sum(expected.values()), "written_rows": sum(written.values()),
                   "lost": sum((expected - written).values()), "duplicated": sum((written - expected).values()),
                   "most_deliveries": max(deliveries.values(), default=0)}
        print(json.dumps(summary), flush=True)
        return [*trials, summary]


def reference(workdir: Path, kind: str) -> None:
    """The same job in one process (no broker): the rows every fleet run must match."""
    env = {k: v for k, v in os.environ.items() if k != "SAMPLEFLEET_BROKER_URL"}
    subprocess.run([PY, "-m", "producer", "submit", str(workdir / "data.jsonl"), *job_args(kind, 0),
                    "--output_dir", str(workdir), "--output_file", f"reference-{kind}.jsonl"],
                   cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)


def table(lines: list[dict], command: str, conditions: dict) -> str:
    terms = [x for x in lines if x["kind"] == "sigterm"]
    jobs = [x for x in lines if x["kind"] == "job"]
    exit_s = stats([t["sigterm_to_exit_s"] for t in terms])
    again_s = stats([t["sigterm_to_running_again_s"] for t in terms if t["sigterm_to_running_again_s"] is not None])
    by_mode = Counter(t["mode"] for t in terms)
    return (f"# SIGTERM soak\n\n`{command}`\n\n"
            f"conditions: {json.dumps(conditions)}\n\n"
            "| | |\n| --- | --- |\n"
            f"| SIGTERMs | {len(terms)} ({by_mode['fixed']} during fixed-N jobs, {by_mode['adaptive']} during adaptive "
            f"ones; {sum(t['handed_back'] for t in terms)} handed their shard back, the others finished it within "
            "the budget) |\n"
            f"| exit codes | {dict(Counter(t['exit_code'] for t in terms))} |\n"
            f"| SIGTERM -> exit | median **{exit_s['median']:.2f} s**, min {exit_s['min']:.2f}, max "
            f"**{exit_s['max']:.2f} s** (target <= 15 s) |\n"
            f"| SIGTERM -> shard running again on another worker | median **{again_s['median']:.2f} s**, min "
            f"{again_s['min']:.2f}, max **{again_s['max']:.2f} s** (target <= 10 s) |\n"
            f"| jobs | {len(jobs)}, statuses {dict(Counter(j['status'] for j in jobs))} |\n"
            f"| rows expected / written / lost / duplicated | {sum(j['expected_rows'] for j in jobs)} / "
            f"{sum(j['written_rows'] for j in jobs)} / **{sum(j['lost'] for j in jobs)} / "
            f"{sum(j['duplicated'] for j in jobs)}** |\n"
            f"| most deliveries of one step of one shard | {max(j['most_deliveries'] for j in jobs)} (a hand-back is "
            "not counted: no poison shard) |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="jobs of each mode (fixed-N, adaptive)")
    parser.add_argument("--per-job", type=int, default=4, help="SIGTERMs per job")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    conditions = {**machine(), "generators": GENERATORS, "shard_seconds": SHARD_SECONDS, "settings": "defaults",
                  "date": time.strftime("%Y-%m-%d")}
    lines: list[dict] = []
    with Fleet() as fleet:
        workdir = fleet.workdir / "jobs"
        workdir.mkdir()
        rows = [{"query": f"problem {i}", "response": str(i), "pass_rate": [0.5, 0.3, 0.7, 0.2][i]} for i in range(4)]
        (workdir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for kind in ("fixed", "adaptive"):
            reference(workdir, kind)
        soak = Soak(fleet, workdir)
        for _ in range(GENERATORS):
            soak.generator()
        fleet.worker("score", "scorer", **soak.env)
        fleet.worker("aggregate,control", "aggregator", **soak.env)
        fleet.ready()
        for job_no in range(2 * args.jobs):
            kind = ("fixed", "adaptive")[job_no % 2]
            lines += soak.job(kind, job_no, args.per_job, rng)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sigterm-soak.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    command = f"flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/sigterm_soak.py --jobs {args.jobs} " \
              f"--per-job {args.per_job} --seed {args.seed}"
    markdown = table(lines, command, conditions)
    (RESULTS / "sigterm-soak.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
