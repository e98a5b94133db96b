"""The job-state transitions (workers.lifecycle.state) against a real redis-server, duplicates interleaved.

Lease times here are short so that expiry can be seen in a unit test; the fault suite (test_faults.py)
runs with the defaults a user gets.
"""
from __future__ import annotations

import time

import pytest
import redis

from schemas import JobSpec
from schemas.errors import StateError
from schemas.jobstate import JobRecord, Lease, Status
from schemas.settings import Settings, SettingsError, settings
from workers.lifecycle.keys import Keys
from workers.lifecycle.reaper import Reaper
from workers.lifecycle.state import JobState, active_jobs

SHARDS = 4


@pytest.fixture
def db(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def new_job(db: redis.Redis, job_id: str = "j1", shards: int = SHARDS) -> JobState:
    spec = JobSpec(model="m", datasets=[{"source": "d.jsonl"}], output_file="o.jsonl")
    record = JobRecord(id=job_id, spec=spec, shards=shards, prompts=shards, rows_read=shards, created=time.time(),
                       queue="generate.m")
    return JobState.create(db, record)


def lease(index: int, token: str, stage: str = "generate", owner: str = "w1", wave: int = 0) -> Lease:
    return Lease(stage=stage, index=index, wave=wave, token=token, owner=owner, task=f"samplefleet.{stage}",
                 args=["j1", index, "é/≠ payload"], queue="generate.m", since=0)


def begin(state: JobState, index: int, token: str, stage: str = "generate", seconds: float = 30, **kw):
    return state.begin(lease(index, token, stage, **kw), seconds=seconds, most_deliveries=6)


def settle(state: JobState, index: int, token: str) -> None:
    assert begin(state, index, token, "aggregate").run
    state.stage_done("aggregate", index, token, candidates=3, tokens=30, rows=2)


def test_record_round_trips_and_the_job_is_active(db):
    state = new_job(db)
    record = state.record()
    assert record.status is Status.RUNNING and record.shards == SHARDS and record.spec.model == "m"
    assert record.engine == {} and record.requeues == 0
    state.record_engine({"engine": "transformers"})
    state.record_engine({"engine": "other"})  # the first one stays
    assert state.record().engine == {"engine": "transformers"}
    assert active_jobs(db) == ["j1"]


def test_a_stage_runs_once_per_live_lease_and_a_duplicate_is_skipped(db):
    state = new_job(db)
    first = begin(state, 0, "t1")
    assert first.run and first.deliveries == 1
    twin = begin(state, 0, "t2", owner="w2")
    assert not twin.run and twin.reason == "leased by w1"
    # the next stage takes the shard over from the hand-over in progress; the earlier stage cannot come back
    state.stage_done("generate", 0, "t1")
    assert begin(state, 0, "t3", "score", owner="w3").run
    assert not begin(state, 0, "t4", "generate").run
    state.release(0, "t1")  # not ours any more: the scorer's lease stays
    assert state.leases()[0][0].token == "t3"


def test_counters_and_settlement_count_once_whatever_the_order_of_duplicates(db):
    state = new_job(db)
    settle(state, 0, "a")
    assert not begin(state, 0, "b", "aggregate").run  # settled: a late duplicate does nothing
    assert state.stage_done("aggregate", 0, "b", candidates=3, tokens=30, rows=2) is False
    assert not state.failed(0, "b", "late duplicate failing")  # aggregated already: not failed
    assert state.counters() == {"candidates": 3, "tokens": 30, "rows": 2}
    # failed first, then aggregated by a redelivered twin: counted once, as aggregated
    assert state.failed(1, "c", "boom") and not state.failed(1, "c2", "boom again")
    state.stage_done("aggregate", 1, "d", candidates=3, tokens=30, rows=2)
    assert state.settled() == (2, 0) and state.failures() == {}
    assert not state.complete(SHARDS)
    settle(state, 2, "e")
    settle(state, 3, "f")
    assert state.complete(SHARDS)


def test_an_expired_lease_is_re_armed_once_and_taken_over(db):
    state = new_job(db)
    assert begin(state, 0, "t1", seconds=0.2).run
    assert begin(state, 1, "t2", seconds=30).run
    assert state.reap(30) == []
    time.sleep(0.3)
    again = state.reap(30)
    assert [(l.index, l.token, l.state, l.owner) for l in again] == [(0, "t1", "requeued", "reaper")]
    assert again[0].args == ["j1", 0, "é/≠ payload"]  # what is sent again is what was sent
    assert state.reap(30) == []  # re-armed: not sent twice in a row
    assert state.record().requeues == 1 and state.requeued() == {0: 1}
    assert not state.renew(0, "t1", 30)  # the lost worker, back after all, learns it lost the shard
    assert begin(state, 0, "t9", owner="w9").run  # the resent task takes over the re-armed lease
    assert state.renew(0, "t9", 30)


def test_a_stopping_worker_hands_its_running_lease_back_once_and_the_delivery_is_not_counted(db):
    state = new_job(db)
    assert begin(state, 0, "t1").run and begin(state, 1, "t2").run
    assert state.hand_back(lease(0, "t9"), 30) is None  # not our token
    again = state.hand_back(lease(0, "t1"), 30)
    assert (again.index, again.state, again.owner, again.args) == (0, "requeued", "reaper", ["j1", 0, "é/≠ payload"])
    assert state.hand_back(lease(0, "t1"), 30) is None  # once
    assert state.reap(30) == []  # re-armed with a fresh expiry: the reaper sends it only if it is lost again
    deliveries = {k.decode(): int(v) for k, v in db.hgetall(state.keys.deliveries).items()}
    assert deliveries == {"generate:0": 0, "generate:1": 1}  # a stop says nothing against the shard
    assert state.record().requeues == 1 and state.requeued() == {0: 1}
    assert not state.renew(0, "t1", 30)
    assert begin(state, 0, "t3", owner="w2").run  # the task sent again takes it at once


def test_a_renewed_lease_is_never_reaped(db):
    state = new_job(db)
    assert begin(state, 0, "t1", seconds=0.3).run
    for _ in range(5):
        time.sleep(0.1)
        assert state.renew(0, "t1", 0.3)
        assert state.reap(30) == []


def test_a_failed_attempt_waits_out_its_back_off_then_is_sent_again(db):
    state = new_job(db)
    assert begin(state, 0, "t1").run
    attempts, backoff = state.attempt_failed(0, "t1", most=3, base=0.1, cap=0.2)
    assert attempts == 1 and 0 <= backoff <= 0.2
    assert state.leases()[0][0].state == "retry"
    assert not begin(state, 0, "dup", owner="w2").run  # a duplicate does not cut the back-off short
    time.sleep(0.25)
    [again] = state.reap(30)
    assert again.token == "t1" and state.record().requeues == 0  # a retry is not a lost worker
    assert state.attempt_failed(0, "t1", most=3)[0] == 2
    assert state.attempt_failed(0, "t1", most=3)[0] == 3  # the caller fails the shard now


def test_a_shard_delivered_too_often_is_poison(db):
    state = new_job(db)
    for n in range(1, 7):
        got = state.begin(lease(0, f"t{n}"), seconds=0.01, most_deliveries=6)
        assert got.run and got.deliveries == n
        time.sleep(0.02)
    assert state.begin(lease(0, "t7"), seconds=30, most_deliveries=6).reason == "poison"


def test_adaptive_waves_keep_a_shards_steps_in_order(db):
    """Wave 1's generate task is sent while wave 0's score task still holds the lease: it takes the lease over;
    a late duplicate of the earlier step then skips. Each wave's deliveries count apart (no false poison)."""
    state = new_job(db)
    for wave in range(4):  # more waves than deliveries allow for one step
        assert begin(state, 0, f"g{wave}", wave=wave).run
        assert not begin(state, 0, f"old{wave}", "score", wave=wave - 1).run if wave else True
        assert begin(state, 0, f"s{wave}", "score", wave=wave).run
        late = begin(state, 0, f"dup{wave}", "generate", wave=wave)
        assert not late.run and late.reason == "leased by w1"
    assert begin(state, 0, "a", "aggregate", wave=0).run  # aggregate follows the last wave's score
    # failed attempts, too, are counted per wave: two waves' transient errors do not add up to the limit
    assert [state.attempt_failed(0, "a", most=3, wave=w)[0] for w in (1, 2, 2, 0)] == [1, 1, 2, 1]


def test_cancel_is_refused_for_a_finished_job_and_skips_the_rest_of_a_running_one(db):
    state = new_job(db)
    state.cancel()
    assert state.status() is Status.CANCELLED and active_jobs(db) == []
    got = begin(state, 0, "t1")
    assert not got.run and got.reason == "cancelled"
    with pytest.raises(StateError, match="only a running job"):
        state.cancel()
    done = new_job(db, "j2")
    assert done.finish(Status.DONE, "/out.jsonl")
    with pytest.raises(StateError, match="j2 is done"):
        done.cancel()


def test_finish_happens_once(db):
    state = new_job(db)
    assert state.finish(Status.PARTIAL, "/o.jsonl")
    assert not state.finish(Status.DONE, "/o.jsonl")
    assert state.record().status is Status.PARTIAL and active_jobs(db) == []


def test_resume_of_a_running_job_sends_only_shards_neither_waiting_leased_nor_done(db):
    state = new_job(db, shards=5)
    settle(state, 0, "a")  # done
    assert begin(state, 1, "b").run  # leased by a live worker
    # shard 2: its task waits in the broker
    assert begin(state, 3, "c", seconds=0.1).run  # leased by a lost worker
    time.sleep(0.2)
    # shard 4: its task was lost (e.g. Redis lost the queue)
    assert state.resume(Status.RUNNING, 5, waiting=[2]) == [3, 4]
    assert 3 not in state.leases()
    with pytest.raises(StateError, match="changed while resuming"):
        state.resume(Status.PARTIAL, 5)  # the caller read another status than there is now


def test_resume_of_a_partial_job_retries_the_failed_shards_and_refuses_a_done_one(db):
    state = new_job(db, shards=2)
    settle(state, 0, "a")
    assert state.failed(1, "b", "boom")
    assert state.finish(Status.PARTIAL, "/o.jsonl")
    assert state.resume(Status.PARTIAL, 2) == [1]
    assert state.status() is Status.RUNNING and state.failures() == {} and active_jobs(db) == ["j1"]
    settle(state, 1, "c")
    assert state.finish(Status.DONE, "/o.jsonl")
    with pytest.raises(StateError, match="nothing to resume"):
        state.resume(Status.DONE, 2)


def test_the_reaper_sends_lost_shards_and_orphaned_finalisations_one_reaper_at_a_time(db):
    env = Settings(reap_interval=1, lease_expire=30, lease_renew=5)
    sent: list[tuple] = []
    ours, theirs = Reaper(db, lambda *t: sent.append(t), env), Reaper(db, lambda *t: sent.append(("other", *t)), env)
    lost = new_job(db, "lost")
    assert begin(lost, 0, "t1", seconds=0.1).run
    orphan = new_job(db, "orphan", shards=1)
    settle(orphan, 0, "t2")  # settled, but its finaliser died before it took the lock
    time.sleep(0.2)
    assert ours.maybe_sweep() == 2
    assert theirs.maybe_sweep() == 0  # the lock is ours
    assert sorted(sent) == [("samplefleet.finalise", ["orphan"], "aggregate"),
                            ("samplefleet.generate", ["j1", 0, "é/≠ payload"], "generate.m")]
    with orphan.finalise_lock(30):  # a finaliser at work: not sent again
        assert ours.maybe_sweep() == 0


def test_settings_name_the_variable_of_a_bad_value(monkeypatch):
    monkeypatch.setenv("SAMPLEFLEET_LEASE_EXPIRE", "soon")
    with pytest.raises(SettingsError, match="SAMPLEFLEET_LEASE_EXPIRE='soon'"):
        settings()
    monkeypatch.setenv("SAMPLEFLEET_LEASE_EXPIRE", "6")
    monkeypatch.setenv("SAMPLEFLEET_LEASE_RENEW", "5")
    with pytest.raises(SettingsError, match="at least twice SAMPLEFLEET_LEASE_RENEW"):
        settings()
    monkeypatch.delenv("SAMPLEFLEET_LEASE_EXPIRE")
    monkeypatch.delenv("SAMPLEFLEET_LEASE_RENEW")
    env = settings()
    assert (env.lease_renew, env.lease_expire, env.reap_interval) == (5, 30, 5)
    assert Keys("x").job == "samplefleet:job:{x}"  # the id is a hash tag: one Redis Cluster slot per job
