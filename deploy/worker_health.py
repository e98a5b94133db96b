"""Is this worker alive? ``python deploy/worker_health.py NAME`` exits 0 if so, 1 with the reason if not.

The compose health check and the Kubernetes liveness probe of every pool. Alive means what
``samplefleet_worker_up`` means: the worker answers a ping, or holds a shard's lease. A ``--pool solo``
worker answers no ping while it runs a shard (its one thread is busy), so a ping alone would call every
busy GPU worker dead, and a liveness probe would kill it mid-shard.
"""
from __future__ import annotations

import sys

from producer.fleet import Fleet
from producer.metrics import registry
from schemas.errors import SampleFleetError
from schemas.settings import settings


def alive(fleet: Fleet, name: str) -> str | None:
    """How ``name`` was seen (``ping`` or ``lease``), or None."""
    for family in registry(fleet).collect():
        if family.name == "samplefleet_worker_up":
            for sample in family.samples:
                if sample.labels["worker"] == name and sample.value:
                    return sample.labels["seen"]
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
