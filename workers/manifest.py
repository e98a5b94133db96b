"""The manifest written beside every output: options, engine, counts, what was left out and why, timings.

One builder for the embedded run and the fleet, so both report the same fields.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from schemas import JobSpec, ShardSummary


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def build_manifest(spec: JobSpec, summaries: list[ShardSummary], *, job_id: str, engine: dict[str, str],
                   planned_prompts: int, bad_rows: list[str], started: float, finished: float,
                   load_seconds: float | None = None, failed: dict[int, str] | None = None) -> dict[str, Any]:
    failed = failed or {}
    skipped = {row: reason for s in summaries for row, reason in s.skipped.items()}
    dropped = {row: reason for s in summaries for row, reason in s.dropped.items()}
    short = {row: count for s in summaries for row, count in s.short.items()}
    return {
        "job_id": job_id,
        "status": "partial" if failed else "done",
        "spec": spec.model_dump(mode="json"),
        "engine": engine,
        "counts": {
            "planned_prompts": planned_prompts,
            "prompts": sum(s.prompts for s in summaries),
            "rows": sum(s.rows for s in summaries),
            "candidates": sum(s.candidates for s in summaries),
            "tokens": sum(s.tokens for s in summaries),
            "shards": len(summaries) + len(failed),
            "shards_failed": len(failed),
            "skipped_prompts": len(skipped),
            "dropped_prompts": len(dropped),
            "short_prompts": len(short),
            "bad_rows": len(bad_rows),
        },
        "failed_shards": {str(k): v for k, v in sorted(failed.items())},
        "skipped_prompts": skipped,
        "dropped_prompts": dropped,
        "short_prompts": short,
        "bad_rows": bad_rows,
        "timings": {
            "started": _iso(started),
            "finished": _iso(finished),
            "seconds": round(finished - started, 3),
            **({"load_seconds": round(load_seconds, 3)} if load_seconds is not None else {}),
            "shard_seconds": round(sum(s.seconds for s in summaries), 3),
        },
    }
