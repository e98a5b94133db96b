"""Resuming a job (`producer resume`): which shards to send again.

Those neither aggregated, nor under a live lease (a worker has it, or the reaper sent it again), nor waiting
in the broker's queues. A failed or partial job is reopened (its failures and attempts forgotten); a done job
is refused. The producer checks the data first and sends the shards (``producer.fleet.Fleet.resume``).
"""
from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import redis

from schemas.fleet import QUEUE_AGGREGATE, QUEUE_SCORE
from schemas.jobstate import JobRecord
from workers.broker import redis_options
from workers.lifecycle.state import JobState


def waiting(broker: str, record: JobRecord) -> set[int]:
    """The job's shards whose task waits in a queue of the broker, read from the tasks' ``argsrepr``
    ("('JOB', SHARD, ..."). A task a worker took but has not begun is not counted: if that worker is alive
    it begins at once (and a copy sent now finds its lease), if it died, its task is lost until the
    visibility timeout, so sending it again is right."""
    if urlsplit(broker).scheme not in ("redis", "rediss", "unix"):
        return set()  # RabbitMQ's queues cannot be read without taking the messages: a copy sent again skips
    db = redis.Redis.from_url(broker, **redis_options())
    pattern = re.compile(r"\('" + re.escape(record.id) + r"', (\d+)")
    found: set[int] = set()
    for queue in (record.queue, QUEUE_SCORE, QUEUE_AGGREGATE):
        for start in range(0, db.llen(queue), 1000):
            for raw in db.lrange(queue, start, start + 999):
                if m := pattern.match(json.loads(raw).get("headers", {}).get("argsrepr") or ""):
                    found.add(int(m.group(1)))
    return found


def reopen(state: JobState, record: JobRecord, broker: str) -> list[int]:
    """Reopen the job; the shards to send again (StateError when it is done, or changed meanwhile)."""
    return state.resume(record.status, record.shards, waiting(broker, record))
