"""The manifest written beside every output: options, engine, counts, what was left out and why, timings.

One builder for the embedded run and the fleet, so both report the same fields. Beyond swift's counts: the
dataset-level statistics (means with bootstrap intervals, ``workers.stats``), fixed-bin histograms of
lengths and rewards, and each shard's size and time (what ``producer report`` draws).
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from schemas import JobSpec, ShardSummary
from workers.stats import dataset_stats, merge_histograms

MASK = "***"
# Option names that hold a credential (split at _ - .): engine_kwargs such as token, hf_token, api_key.
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential", "credentials",
                 "auth", "authorization"}
_URL_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]+@")


def _secret_name(name: str) -> bool:
    parts = re.split(r"[_\-.]", name.lower())
    return parts[-1] != "env" and bool(_SECRET_WORDS & set(parts))  # api_key_env names a variable


def _mask_kwargs(value: Any) -> Any:
    """Engine options with the values of credential-named keys replaced, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if _secret_name(str(k)) and value[k] not in (None, "") else _mask_kwargs(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_kwargs(v) for v in value]
    return value


def _mask_urls(value: Any) -> Any:
    """Passwords inside URLs (``http://user:pass@host``) replaced, in every string at any depth."""
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", value) if isinstance(value, str) else value


def masked_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec as the manifest shows it: a manifest is shared with the data, the credentials are not.

    ``--engine_kwargs`` values under credential names (token, api_key, password, ...) and passwords in
    URLs (``--base_url``) become ``***``; workers still get the real values through the job record.
    """
    dump = spec.model_dump(mode="json")
    return _mask_urls({**dump, "engine_kwargs": _mask_kwargs(dump["engine_kwargs"])})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def build_manifest(spec: JobSpec, summaries: list[ShardSummary], *, job_id: str, engine: dict[str, str],
                   planned_prompts: int, bad_rows: list[str], started: float, finished: float,
                   load_seconds: float | None = None, failed: dict[int, str] | None = None) -> dict[str, Any]:
    failed = failed or {}
    skipped = {row: reason for s in summaries for row, reason in s.skipped.items()}
    dropped = {row: reason for s in summaries for row, reason in s.dropped.items()}
    short = {row: count for s in summaries for row, count in s.short.items()}
    beyond: dict[str, Any] = {"histograms": merge_histograms(summaries),
                              "shards": [{"index": s.index, "prompts": s.prompts, "candidates": s.candidates,
                                          "tokens": s.tokens, "seconds": s.seconds} for s in summaries]}
    if spec.orm_model:
        lines = [line for s in summaries for line in s.stats]
        beyond["stats"] = dataset_stats(spec, lines)
        if spec.target_correct is not None:
            beyond["adaptive"] = {"samples": sum(line.samples for line in lines),
                                  "samples_per_prompt": [line.samples for line in lines],  # stats file order
                                  "stopped": dict(Counter(line.stopped for line in lines if line.stopped))}
    return {
        "job_id": job_id,
        "status": "partial" if failed else "done",
        "spec": masked_spec(spec),
        "engine": _mask_urls(engine),
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
        **beyond,
    }
