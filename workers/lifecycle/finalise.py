"""Finalising a fleet job: its final file and manifest, once every shard is settled.

Finalising is done by the one aggregator that holds the job's lock (redis-py's ``Lock``, extended while it
works, so a finaliser that dies frees it within ``SAMPLEFLEET_LEASE_EXPIRE`` seconds and the reaper sends a
new one). Under the lock the job is checked again: still running, every shard settled, every aggregated
shard's part in place. The parts are dropped only after the job is recorded finished, so a finaliser
killed at any point leaves either the parts (and a running job, finalised again) or a finished job.

Output integrity: a job whose shards all aggregated gets its final file only with every planned shard's part
(``JobOutput.finalise(planned=...)``). A job with failed shards ends ``failed``: no final file, only the
manifest (status ``failed``, ``missing_shards``), and its parts kept for ``producer resume``; with
``--allow_partial true`` it ends ``partial`` with a final file short of those shards (listed the same way).
"""
from __future__ import annotations

import logging
import time

import redis

from schemas.jobstate import JobRecord, Status
from schemas.settings import settings
from workers.keepalive import KeepAlive
from workers.lifecycle.state import JobState
from workers.manifest import build_manifest
from workers.output import JobOutput

log = logging.getLogger(__name__)


def finalise_once(state: JobState) -> str | None:
    """Assemble the output if every shard is settled and no other aggregator is at it; the location or None."""
    env = settings()
    record = state.record()
    if record.status is not Status.RUNNING or not state.complete(record.shards):
        return None
    lock = state.finalise_lock(env.lease_expire)
    if not lock.acquire(blocking=False):
        return None
    failed: dict[int, str] = {}
    try:
        with KeepAlive(lambda: bool(lock.extend(env.lease_expire, replace_ttl=True)), env.lease_renew,
                       what=f"job {state.id} finalise"):
            record = state.record()  # again, under the lock
            if record.status is not Status.RUNNING or not state.complete(record.shards):
                return None
            location, failed = _assemble(state, record)
            if location is None or not state.finish(_outcome(record, failed), location):
                return None
    except Exception as exc:
        state.finalise_failed(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:  # expired and taken by another finaliser: theirs now
            pass
    if not failed:  # a failed or partial job keeps its parts, so that resuming it can assemble the whole output
        JobOutput(record.spec).drop_parts()
    log.info("job %s finalised: %s%s", state.id, location, f" ({len(failed)} shards failed)" if failed else "")
    return location


def _outcome(record: JobRecord, failed: dict[int, str]) -> Status:
    if not failed:
        return Status.DONE
    return Status.PARTIAL if record.spec.allow_partial else Status.FAILED


def _assemble(state: JobState, record: JobRecord) -> tuple[str | None, dict[int, str]]:
    """Write the final file (unless the job failed) and the manifest; its location, or (None, ...) when the
    parts are not all there."""
    output = JobOutput(record.spec)
    failed = state.failures()
    summaries = output.summaries()
    if not state.aggregated() <= {s.index for s in summaries}:  # another finaliser is dropping the parts
        log.warning("job %s: parts missing while finalising; another finaliser is at work", state.id)
        return None, failed
    manifest = build_manifest(record.spec, summaries, job_id=state.id, engine=record.engine,
                              planned_prompts=record.prompts, bad_rows=record.bad_rows, started=record.created,
                              finished=time.time(), failed=failed)
    manifest["status"] = _outcome(record, failed).value
    manifest["missing_shards"] = sorted(failed)
    manifest["recovery"] = {"requeues": record.requeues, "requeued_shards": state.requeued()}
    if failed and not record.spec.allow_partial:
        log.warning("job %s failed: shards %s failed; no final file, parts kept for `producer resume %s`",
                    state.id, ", ".join(map(str, sorted(failed))), state.id)
        return output.write_manifest(manifest), failed
    planned = None if failed else record.shards  # every planned shard's part, or no final file
    return output.finalise(manifest, summaries=summaries, planned=planned), failed
