"""Is this worker alive? ``python deploy/worker_health.py NAME`` exits 0 if so, 1 with the reason if not.

The compose health check and the Kubernetes probes of every pool. Alive means what
``samplefleet_worker_up`` means: the worker answers a ping, or holds a live lease on a shard. A
``--pool solo`` worker answers no ping while it runs a shard (its one thread is busy), so a ping alone
would call every busy GPU worker dead, and a liveness probe would kill it mid-shard. The ping goes to
this worker only: a probe on every pod must not make every worker answer every other pod's probe.
"""
from __future__ import annotations

import sys

from producer.fleet import Fleet
from producer.metrics import live_holders
from schemas.errors import SampleFleetError
from schemas.settings import settings
from schemas.state import active_jobs


def alive(fleet: Fleet, name: str, *, timeout: float = 1.0) -> str | None:
    """How ``name`` was seen (``ping`` or ``lease``), or None."""
    app = fleet.celery
    with app.connection_for_write() as conn:
        if app.control.ping(destination=[name], timeout=timeout, connection=conn):
            return "ping"
    for job_id in active_jobs(fleet.db):
        if name in live_holders(fleet.status(job_id)):
            return "lease"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: worker_health.py WORKER_NAME (as given to celery worker -n)", file=sys.stderr)
        return 2
    try:
        seen = alive(Fleet.from_settings(settings().broker_url), argv[1])
    except SampleFleetError as exc:
        print(f"worker {argv[1]}: {exc}", file=sys.stderr)
        return 1
    if seen is None:
        print(f"worker {argv[1]}: no pong and no shard held", file=sys.stderr)
        return 1
    print(f"worker {argv[1]}: alive ({seen})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
