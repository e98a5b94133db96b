"""The fleet's connections: the Redis client options for job state, and the Celery settings the workers and
the producer's sending client share (task and queue names: ``schemas.fleet``)."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from schemas.fleet import (QUEUE_AGGREGATE, QUEUE_CONTROL, QUEUE_SCORE, TASK_AGGREGATE, TASK_FINALISE, TASK_OPEN,
                           TASK_SCORE)
from schemas.settings import settings

if TYPE_CHECKING:
    import redis


@lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    """One client per URL per process (redis-py pools connections, reconnects and retries by itself)."""
    import redis

    return redis.Redis.from_url(url, **redis_options())


def redis_options() -> dict[str, Any]:
    """Client options for job state: ride out a Redis restart or failover of up to about a minute.

    Connection errors are retried with backoff. Writes are built to bear a retry: shard sets, NX locks
    holding a token, per-shard fields. A retry after a lost reply can only over-count a delivery (the
    poison limit leaves room) or leave a shard out of the progress counters shown by `producer status`
    (the manifest counts from the stored parts).
    """
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError
    from redis.retry import Retry

    return {"socket_timeout": 30, "socket_connect_timeout": 5, "health_check_interval": 30,
            "retry": Retry(ExponentialBackoff(cap=5, base=0.2), retries=14),
            "retry_on_error": [ConnectionError]}


def tls_options(url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` / ``redis_backend_use_ssl`` for a ``rediss://`` URL, None for any other.

    The URL is the one place TLS is configured (``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile`` in its query), read by redis-py for job state and by Celery through these settings.
    The server's certificate is verified unless the URL says ``ssl_cert_reqs=none``: without the settings,
    kombu would connect unverified and Celery's result backend would refuse a URL with no ``ssl_cert_reqs``.
    """
    import ssl
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    modes = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    if reqs not in modes:
        raise ValueError(f"ssl_cert_reqs={query['ssl_cert_reqs']!r} in a rediss:// URL: expected required, "
                         "optional or none")
    return {"ssl_cert_reqs": modes[reqs],
            **{k: query[k] for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if query.get(k)}}


def celery_settings(broker: str | None = None, result: str | None = None) -> dict[str, Any]:
    """Settings for the workers and for the producer's sending client. Why each is what it is:

    - JSON only: nothing on the wire can run code when it is loaded (pickle is refused).
    - acks_late + reject_on_worker_lost: a shard is acknowledged after it is done, so a worker that
      dies mid-shard hands it back instead of losing it; writes are idempotent, so a rerun is safe.
    - prefetch 1: a GPU worker holds one shard at a time; others are not stuck behind it.
    - visibility_timeout: with Redis an unacknowledged message is redelivered after this many seconds,
      so it must exceed the longest shard (default 6 h), or a slow shard would run twice (harmless, but
      wasted work). The same on the result backend. It is only the last resort: a lost worker's shard
      comes back within seconds through its lease (``workers.lifecycle``), whatever this is set to.
    - SIGTERM is Celery's warm shutdown, plus samplefleet's hand-back (``workers.preemption``): the stage
      gets SAMPLEFLEET_SOFT_SHUTDOWN seconds (default 5) to finish, then its shard is handed back and sent
      again at once, and the stage is stopped; the worker is gone within 13 s. Celery's own soft shutdown
      (``worker_soft_shutdown_timeout``, a cold shutdown only) is left off: under ``--pool solo`` it sleeps
      on the task's own thread, then fails the task with the solo pool's NotImplementedError.
    - events on: Flower shows tasks live.
    - publish retries for about a minute: a worker passing a shard to the next stage while Redis restarts
      waits for it instead of failing the shard.
    - running tasks are not cancelled when the broker connection drops: the shard's result is still
      written (and reused by the redelivered task), rather than thrown away.
    - stage tasks store no results (``ignore_result`` on the task): job state lives in our own keys.
    - TLS (``rediss://``): verified against the URL's ``ssl_ca_certs`` (else the system's CAs); see ``tls_options``.

    ``broker`` / ``result``: the URLs to use (default: from the environment).
    """
    env = settings()
    broker = broker or env.broker_url
    result = result or env.result_url or broker
    visibility = env.visibility_timeout
    # kombu looks for expired unacknowledged messages every interval x throttle seconds (default 100 s):
    # sweep at a third of the timeout (at most every 10 s), so a killed worker's shard is back soon after.
    transport = {"visibility_timeout": visibility, "fanout_prefix": True, "fanout_patterns": True,
                 "unacked_restore_interval": max(1, min(10, visibility // 3)), "unacked_restore_throttle": 1}
    return {
        "broker_url": broker,
        "result_backend": result,
        "broker_use_ssl": tls_options(broker),
        "redis_backend_use_ssl": tls_options(result),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "result_expires": 7 * 24 * 3600,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": QUEUE_CONTROL,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 30, "interval_start": 0, "interval_step": 0.5,
                                      "interval_max": 2},
        "broker_connection_timeout": 5,
        "task_routes": {TASK_OPEN: {"queue": QUEUE_CONTROL}, TASK_SCORE: {"queue": QUEUE_SCORE},
                        TASK_AGGREGATE: {"queue": QUEUE_AGGREGATE}, TASK_FINALISE: {"queue": QUEUE_AGGREGATE}},
    }
