"""The fleet's contract between the producer and the workers: task and queue names (the Celery settings both
sides use: ``workers.broker``; job state and its Redis keys: ``workers.lifecycle``). The producer sends tasks
by name, so it never imports the workers' tasks (nor torch).
"""
from __future__ import annotations

import re

# Task names (readable in Flower) and the queues they go to.
TASK_OPEN = "samplefleet.open_job"
TASK_GENERATE = "samplefleet.generate"
TASK_SCORE = "samplefleet.score"
TASK_AGGREGATE = "samplefleet.aggregate"
TASK_FINALISE = "samplefleet.finalise"  # sent by the reaper for a job whose shards are all settled
QUEUE_GENERATE = "generate"
QUEUE_SCORE = "score"
QUEUE_AGGREGATE = "aggregate"
QUEUE_CONTROL = "control"  # small jobs: open_job
DEFAULT_QUEUES = (QUEUE_GENERATE, QUEUE_SCORE, QUEUE_AGGREGATE, QUEUE_CONTROL)


def model_queue(model: str | None) -> str:
    """``generate.<model>``: generator workers of one model listen here, so its weights stay warm."""
    model = model or "none"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.rstrip("/").rsplit("/", 2)[-1] if "/" in model else model)
    return f"{QUEUE_GENERATE}.{slug.strip('-') or 'model'}"
