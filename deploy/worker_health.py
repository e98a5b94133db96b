"""Is this worker alive, is it ready? ``python deploy/worker_health.py live|ready NAME`` exits 0 if so, 1 with why.

``live`` (liveness probes, compose health checks): whether the worker process itself is stuck, read from the
heartbeat file it writes on this host (``workers.heartbeat``); Redis is never asked, so a Redis outage of any
length restarts no worker (Celery rides it out and reconnects). A worker fails it when it is frozen or its main
thread has not run Python for SAMPLEFLEET_HEARTBEAT_STALE seconds (120).

``ready`` (readiness probes; the default when only NAME is given): the worker is connected: it answers a ping,
or holds a live lease on a shard. A ``--pool solo`` worker answers no ping while it runs a shard (its one
thread is busy), so a ping alone would call every busy GPU worker unready. The ping goes to this worker
only: a probe on every pod must not make every worker answer every other pod's probe.
"""
from __future__ import annotations

import sys

from schemas.errors import SampleFleetError
from schemas.settings import settings

USAGE = "usage: worker_health.py [live|ready] WORKER_NAME (as given to celery worker -n)"


def ready(name: str, *, timeout: float = 1.0) -> str | None:
    """How ``name`` was seen (``ping`` or ``lease``), or None."""
    from producer.fleet import Fleet  # here: the liveness check imports neither Celery nor redis
    from producer.metrics import live_holders
    from workers.lifecycle.state import active_jobs

    fleet = Fleet.from_settings(settings().broker_url)
    app = fleet.celery
    with app.connection_for_write() as conn:
        if app.control.ping(destination=[name], timeout=timeout, connection=conn):
            return "ping"
    for job_id in active_jobs(fleet.db):
        if name in live_holders(fleet.status(job_id)):
            return "lease"
    return None


def main(argv: list[str]) -> int:
    args = argv[1:]
    mode = args.pop(0) if len(args) == 2 else "ready"
    if len(args) != 1 or mode not in ("live", "ready"):
        print(USAGE, file=sys.stderr)
        return 2
    name = args[0]
    try:
        if mode == "live":
            from workers.heartbeat import check

            problem = check(name, settings())
            if problem:
                print(f"worker {name}: not live: {problem}", file=sys.stderr)
                return 1
            print(f"worker {name}: live")
            return 0
        seen = ready(name)
    except SampleFleetError as exc:
        print(f"worker {name}: {exc}", file=sys.stderr)
        return 1
    if seen is None:
        print(f"worker {name}: no pong and no shard held", file=sys.stderr)
        return 1
    print(f"worker {name}: alive ({seen})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
