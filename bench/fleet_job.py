#!/usr/bin/env python3
"""One job through a throwaway fleet, for run.py's fleet-overhead experiment (run it with our venv's python).

    .venv/bin/python bench/fleet_job.py --out RESULT.json -- DATASET [producer submit options...]

Starts a redis-server and exactly one `celery worker --pool solo` serving every queue (generate, score,
aggregate, control) on 127.0.0.1, so the fleet has the compute of the local run: one process, both cores.
``--layout split`` starts two instead, a generator (``-Q generate``) and a scorer (``-Q score,aggregate,control``),
with ``SAMPLEFLEET_THREADS`` set to ``--gen-threads`` / ``--score-threads`` (torch threads of the generator, math
checker processes of the scorer): the one-box layouts of bench/README.md.
A warm-up job (the dataset's first row, N=1, one new token, the same engine options) loads the model in
the worker first; then the job is submitted and timed from submit to its output written:
  job_s              the job record's `created` -> `finished` (Redis), the figure compared with local's warm s
  submit_to_done_s   from starting `producer submit --broker` to this script seeing the job finished (adds the
                     producer's own start-up and the 0.05 s poll)
Everything is stopped at exit; the worker's log is kept beside RESULT.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from fleet import Fleet, job_id_of, redis_binary

QUEUES = "generate,score,aggregate,control"
SPLIT = {"gen": "generate", "score": "score,aggregate,control"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where to write the timings (JSON)")
    ap.add_argument("--layout", choices=("one", "split"), default="one", help="one worker, or generator + scorer")
    ap.add_argument("--gen-threads", default="", help="SAMPLEFLEET_THREADS of the split layout's generator")
    ap.add_argument("--score-threads", default="", help="SAMPLEFLEET_THREADS of the split layout's scorer")
    ap.add_argument("submit", nargs=argparse.REMAINDER, help="-- DATASET and `producer submit` options")
    a = ap.parse_args()
    submit = a.submit[1:] if a.submit[:1] == ["--"] else a.submit
    data, options = Path(submit[0]), submit[1:]
    warm_data = a.out.parent / "warmup.jsonl"
    warm_data.write_text(data.read_text().splitlines()[0] + "\n")
    result: dict = {"redis_server": subprocess.run([redis_binary(), "--version"], capture_output=True,
                                                   text=True).stdout.strip()}
    t_start = time.time()
    with Fleet() as fleet:
        try:
            if a.layout == "one":
                fleet.worker(QUEUES, "worker1")
            else:
                for name, threads in (("gen", a.gen_threads), ("score", a.score_threads)):
                    fleet.worker(SPLIT[name], name, **({"SAMPLEFLEET_THREADS": threads} if threads else {}))
            result["layout"] = {"layout": a.layout, "gen_threads": a.gen_threads, "score_threads": a.score_threads}
            fleet.ready()
            result["fleet_start_s"] = round(time.time() - t_start, 3)
            t = time.time()
            warm = job_id_of(fleet.producer("submit", str(warm_data), *options, "--num_return_sequences", "1",
                                            "--max_new_tokens", "1", "--output_dir",
                                            str(a.out.parent / "warmup")).stdout)
            result["warmup_status"] = fleet.wait_job(warm, poll=0.05)["status"]
            result["warmup_s"] = round(time.time() - t, 3)

            t = time.time()
            job_id = job_id_of(fleet.producer("submit", str(data), *options).stdout)
            job = fleet.wait_job(job_id, poll=0.05)
            result.update(job_id=job_id, status=job["status"], submit_to_done_s=round(time.time() - t, 3),
                          job_s=round(float(job["finished"]) - float(job["created"]), 3))
        finally:
            for name in fleet.workers:
                (a.out.parent / f"{name}.log").write_text(fleet.log(name))
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
