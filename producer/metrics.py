"""``producer metrics``: queue depths and job progress in Prometheus' text format.

Flower exports task events but not how many messages wait in each queue; this reads both from Redis
(the broker keeps a queue as a list named after it) and serves them on ``/metrics``.
"""
from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from producer.fleet import FINISHED, Fleet
from schemas.fleet import DEFAULT_QUEUES, Keys

log = logging.getLogger(__name__)


def _line(name: str, value: float, **labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value}" if inner else f"{name} {value}"


def render(fleet: Fleet, *, recent_jobs: int = 20) -> str:
    """The metrics page: every queue's depth, then the stage counts of unfinished and recent jobs."""
    queues = set(DEFAULT_QUEUES) | {q.decode() for q in fleet.db.smembers(Keys.queues)}
    lines = ["# HELP samplefleet_queue_depth Messages waiting in a queue.", "# TYPE samplefleet_queue_depth gauge"]
    lines += [_line("samplefleet_queue_depth", fleet.db.llen(q), queue=q) for q in sorted(queues)]
    lines += ["# HELP samplefleet_job_shards Shards of a job past a stage.", "# TYPE samplefleet_job_shards gauge",
              "# HELP samplefleet_job_samples_total Candidates sampled for a job.",
              "# TYPE samplefleet_job_samples_total counter"]
    for job_id in (j.decode() for j in fleet.db.zrevrange(Keys.jobs, 0, recent_jobs - 1)):
        status = fleet.status(job_id)
        for stage, count in status.stages.items():
            lines.append(_line("samplefleet_job_shards", count, job=job_id, stage=stage))
        lines.append(_line("samplefleet_job_shards", status.shards, job=job_id, stage="total"))
        lines.append(_line("samplefleet_job_shards", len(status.failed), job=job_id, stage="failed"))
        lines.append(_line("samplefleet_job_samples_total", status.counters.get("candidates", 0), job=job_id))
        lines.append(_line("samplefleet_job_running", int(status.status not in FINISHED), job=job_id))
    return "\n".join(lines) + "\n"


def serve(fleet: Fleet, host: str, port: int) -> None:
    """Serve ``/metrics`` until interrupted."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            body = render(fleet).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug(fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
