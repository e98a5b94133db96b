"""The Celery app: ``celery -A workers.app worker [-Q QUEUES] [--pool solo]``.

Configured from the environment: every ``SAMPLEFLEET_*`` variable is a field of ``schemas.settings``
(broker, state and result URLs, lease timings, attempts, time limits); the Celery settings built from
them, with the reason for each, are in ``workers.broker.celery_settings``. Each worker also runs the
reaper (``workers.lifecycle.reaper``) that sends a lost worker's shard again once its lease expires.

Queues: ``generate.<model>`` (one per model, so a worker's loaded weights stay warm), ``score``,
``aggregate``, ``control``. A worker started without ``-Q`` serves every queue; one started with
``-Q generate`` serves generation for every model; ``-Q generate.<model>`` only that model. Workers
that serve every model start consuming a new model's queue when the producer announces it.
GPU workers: ``--pool solo`` (or threads) and one worker per GPU (``CUDA_VISIBLE_DEVICES``); the
engine is loaded lazily in the worker process, never in a forked parent. ``SAMPLEFLEET_PRELOAD_MODEL``
(with ``SAMPLEFLEET_PRELOAD_ENGINE``, default transformers) loads it at start instead, so a worker for a
model that cannot load exits at once with the reason rather than failing every shard it takes.
Stopping (SIGTERM): the shard in hand goes back to the queue within seconds (``workers.preemption``).
Liveness: a local heartbeat file (``workers.heartbeat``), read by ``deploy/worker_health.py live``.
"""
from __future__ import annotations

import logging
import os
import sys

from celery import Celery, signals
from celery.worker.control import control_command
from kombu import Queue

from schemas.errors import SampleFleetError
from schemas.fleet import DEFAULT_QUEUES, QUEUE_GENERATE
from schemas.settings import SettingsError, settings
from workers.broker import celery_settings, connect
from workers.heartbeat import Heartbeat
from workers.lifecycle.keys import Keys
from workers.lifecycle.reaper import Reaper
from workers.preemption import STOPPER

log = logging.getLogger(__name__)

try:
    _conf = celery_settings()
except SettingsError as exc:  # one line naming the variable, not a traceback from Celery's app loader
    sys.exit(f"samplefleet worker: error: {exc}")
app = Celery("samplefleet")
app.conf.update(_conf)
app.conf.task_queues = [Queue(name) for name in DEFAULT_QUEUES]


def send(task: str, args: list, queue: str) -> None:
    """Send a shard's task again (the reaper, a stopping worker's hand-back); defined before the tasks import it."""
    app.send_task(task, args=args, queue=queue)


app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


@signals.worker_init.connect
def _liveness_and_stop(sender, **kwargs) -> None:
    """In the main thread, before a preloaded model: the poke handler, the heartbeat, the stop budget."""
    env = settings()
    if os.environ.get("REMAP_SIGTERM"):
        log.warning("REMAP_SIGTERM=%s: SIGTERM runs Celery's cold shutdown, which cannot stop a --pool solo task "
                    "(its shard waits out a back-off); unset it: SIGTERM hands the shard back on its own",
                    os.environ["REMAP_SIGTERM"])
    STOPPER.install()
    heartbeat = Heartbeat(sender.hostname, env)
    STOPPER.on_poke.append(heartbeat.tick)
    heartbeat.start()
    if _prefork(sender):  # its stages run in child processes the stop sequence cannot reach: Celery's warm shutdown
        log.warning("--pool prefork: a SIGTERM waits for the running shard (use --pool solo or threads to hand it "
                    "back in seconds)")
        return
    budget = env.soft_shutdown
    signals.worker_shutting_down.connect(lambda **kw: STOPPER.stop(budget), weak=False)


def _prefork(worker) -> bool:
    return "prefork" in type(worker.pool_cls).__name__.lower() or "prefork" in str(worker.pool_cls).lower()


def _follows_models(consumer) -> bool:
    """A worker consuming the bare ``generate`` queue (or started without -Q) serves every model."""
    return QUEUE_GENERATE in consumer.app.amqp.queues.consume_from


@signals.worker_ready.connect
def _follow_known_models(sender, **kwargs) -> None:
    if _follows_models(sender):
        for queue in connect(settings().state).smembers(Keys.queues):
            sender.add_task_queue(queue.decode())


@signals.worker_ready.connect
def _start_reaper(sender, **kwargs) -> None:
    """Every worker runs a reaper thread; one at a time does the work (see ``workers.lifecycle.reaper``)."""
    env = settings()
    Reaper(connect(env.state), send, env).start()


@control_command(args=[("queue", str)], signature="<queue>")
def samplefleet_follow(state, queue: str) -> dict:
    """Sent by the producer for a new model queue; only workers that serve every model obey."""
    if not _follows_models(state.consumer):
        return {"ok": "pinned to other queues"}
    state.consumer.call_soon(state.consumer.add_task_queue, queue)
    return {"ok": f"following {queue}"}


@signals.worker_init.connect
def _preload(sender, **kwargs) -> None:
    env = settings()
    model = env.preload_model
    if not model:
        return
    if _prefork(sender):
        log.warning("SAMPLEFLEET_PRELOAD_MODEL is ignored with the prefork pool (it would load in the parent); "
                    "use --pool solo or threads")
        return
    from workers.warm import preload

    try:
        preload(model, env.preload_engine)
    except SampleFleetError as exc:
        log.critical("worker cannot serve --model %s: %s", model, exc)
        os._exit(3)
