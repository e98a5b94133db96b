"""Flower for samplefleet: ``celery -A workers.app flower --conf=deploy/flowerconfig.py``.

Credentials come from ``FLOWER_BASIC_AUTH=user:password`` in the environment (in the images, from the file
named by ``FLOWER_BASIC_AUTH_FILE``), never from the command line; Flower refuses to start without them.
Flower answers ``/metrics`` and ``/healthcheck`` without asking for them (they are not behind its auth), so
it listens on 127.0.0.1 unless ``--address`` says otherwise: the compose file publishes the port on the
host's loopback only, and in Kubernetes its Service is cluster-internal.
"""
import os

if not os.environ.get("FLOWER_BASIC_AUTH"):
    raise SystemExit("flower: set FLOWER_BASIC_AUTH=user:password (or FLOWER_BASIC_AUTH_FILE in the images): "
                     "Flower can cancel tasks, so it never runs open")

address = "127.0.0.1"
port = 5555
# The task list shows the job and shard: args are "('<job id>', <shard>, <N prompts>)" and the queue
# (routing key) is the stage's, generate.<model> for generation; the result tells a skipped shard
# apart from one that ran.
tasks_columns = "name,args,state,result,routing_key,received,started,runtime,worker,retries,uuid"
# Keep the task history across restarts (a volume in compose and Kubernetes).
persistent = True
db = os.environ.get("FLOWER_DB", "flower.db")  # the images set /data/flower.db
state_save_interval = 60_000  # ms: also saved every minute, not only at shutdown
max_tasks = 100_000
# purge_offline_workers stays unset: a `--pool solo` worker sends no heartbeat while it runs a shard, so
# Flower shows a busy one as offline; it must not be dropped from the list.
