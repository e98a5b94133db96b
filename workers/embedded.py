"""The embedded default: the whole pipeline in this process, shard by shard, no broker.

generate -> aggregate -> write the shard's part; shards already done (``--resume``)
are skipped; after the last shard the parts become the final jsonl and manifest.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from schemas import JobSpec, PromptShard, ShardSummary
from workers.aggregate import output_rows, summarise
from workers.generate import generate_shard, load_engine
from workers.output import JobOutput

log = logging.getLogger(__name__)


def run_job(spec: JobSpec, shards: Iterable[PromptShard], *, planned_prompts: int, bad_rows: list[str],
            on_shard: Callable[[ShardSummary, bool], None] = lambda summary, resumed: None) -> tuple[Path, dict]:
    """Run every shard not yet done, then finalise; returns the final file and the manifest.

    ``planned_prompts`` and ``bad_rows`` come from the producer's reading of the data, for the manifest;
    ``on_shard(summary, resumed)`` is called per shard (``resumed``: done by an earlier run).
    """
    started = time.time()
    output = JobOutput(spec)
    done = output.open()
    engine = load_engine(spec)  # once, before any shard: a model that cannot load fails here
    loaded = time.time()
    previous = {s.index: s for s in output.summaries()}
    try:
        for shard in shards:
            if shard.index in done:
                on_shard(previous[shard.index], True)
                continue
            t0 = time.perf_counter()
            generated = generate_shard(engine, spec, shard)
            rows = output_rows(generated)
            summary = summarise(generated, len(rows), time.perf_counter() - t0)
            output.write_shard(rows, summary)
            log.info("job %s shard %d: %d rows in %.1fs", shard.job_id, shard.index, len(rows), summary.seconds)
            on_shard(summary, False)
        summaries = output.summaries()
        manifest = _manifest(spec, planned_prompts, bad_rows, summaries, engine.describe(), started, loaded)
        return output.finalise(manifest), manifest
    finally:
        engine.close()


def _manifest(spec: JobSpec, planned_prompts: int, bad_rows: list[str], summaries: list[ShardSummary], engine: dict[str, str],
              started: float, loaded: float) -> dict[str, Any]:
    finished = time.time()
    skipped = {row: reason for s in summaries for row, reason in s.skipped.items()}
    return {
        "spec": spec.model_dump(mode="json"),
        "engine": engine,
        "counts": {
            "prompts": sum(s.prompts for s in summaries),
            "rows": sum(s.rows for s in summaries),
            "candidates": sum(s.candidates for s in summaries),
            "tokens": sum(s.tokens for s in summaries),
            "shards": len(summaries),
            "planned_prompts": planned_prompts,
            "skipped_prompts": len(skipped),
            "bad_rows": len(bad_rows),
        },
        "skipped_prompts": skipped,
        "bad_rows": bad_rows,
        "timings": {
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "finished": datetime.fromtimestamp(finished, timezone.utc).isoformat(),
            "load_seconds": round(loaded - started, 3),
            "seconds": round(finished - started, 3),
            "shard_seconds": round(sum(s.seconds for s in summaries), 3),
        },
    }
