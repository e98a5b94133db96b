"""A shard's life in the fleet, read top to bottom; each part names the module that does it.

    producer submit                                                 JobState.create (state.py)
        |  one generate task per shard, on the model's queue
        v
    queued --begin--> leased --(stage runs, lease renewed)--> stage done --> next step's task --> ...
       ^                 |  \\                                                    (pipeline.py)
       |                 |   `--fails--> retried after a back-off, or failed (policy.py)
       |                 `--worker lost: lease expires--> reaped, sent again (reaper.py)
       `---- worker stopping: handed back, sent again at once (preemption.py, state.py)
    ... aggregate done --> settled; every shard settled --> finalised (finalise.py)
    a failed or partial job --> resumed: the unsettled shards sent again (resume.py)

1. Queued: the producer records the job (``state.JobState.create``; its Redis keys: ``keys.py``) and sends
   each shard's generate task; a shard's task waits in the broker.
2. Leased: a worker takes the task and the shard's lease for that step (``JobState.begin``, ``lua/begin.lua``).
   A duplicate, a task of an earlier step than the live lease's (``pipeline.Step.rank``), a task of a job
   that is not running, or of a settled shard, is skipped.
3. Renewed: while the stage runs, a thread renews the lease every SAMPLEFLEET_LEASE_RENEW seconds and
   enforces SAMPLEFLEET_STAGE_TIME_LIMIT (``lease.Hold``, on ``workers.keepalive.KeepAlive``).
4. Done, next step: the stage marks itself done and sends the next step's task, then drops its lease
   (``workers.tasks.ShardTask.pass_on``). What comes next is written once, in ``pipeline.after``:
   generate -> score (when scored) -> next wave (adaptive, prompts still open) -> aggregate.
5. Retried: a failed attempt goes to the one failure policy (``policy.FailurePolicy``): bad input fails the
   shard at once; anything else waits out a back-off under its lease (``lua/retry.lua``), then is sent again.
6. Reaped: a lease not renewed for SAMPLEFLEET_LEASE_EXPIRE seconds (its worker died), or whose back-off
   ended, is re-armed and its task sent again by the reaper every worker runs (``reaper.Reaper``).
7. Handed back: a worker told to stop gives its shard back at once and sends its task again
   (``JobState.hand_back``; the stop sequence: ``workers.preemption``).
8. Settled: aggregated (its rows are in place) or failed (``JobState.stage_done`` / ``failed``).
9. Finalised: once every shard is settled, one aggregator, under a lock, writes the final file and the
   manifest (``finalise.finalise_once``); the job ends done, partial or failed, and its keys expire.
10. Resumed: `producer resume` reopens a failed or partial job and sends again its shards that are neither
    aggregated, leased nor waiting in the broker (``resume.py``).

Every transition is one Lua script of ``lua/`` (or one MULTI), run through ``scripts.Script`` with its keys
and arguments by name. The records these steps read and write are in ``schemas.jobstate``. Nothing here
imports torch or the Celery tasks: the producer uses it too.
"""
