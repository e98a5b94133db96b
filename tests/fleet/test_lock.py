"""One run per output: the lock, its takeover after a dead run, and finalisation that never shrinks an output."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import OFFLINE, ROOT, read_jsonl, write_jsonl
from schemas import DatasetSpec, JobSpec, ShardSummary
from schemas.errors import OutputError
from workers import output_lock
from workers.output import JobOutput
from workers.output_lock import Owner, S3Lock, lock_output
from workers.storage import LocalStorage

SMALL = ["--model", "smollm2-135m-instruct", "--max_new_tokens", "12", "--num_return_sequences", "2",
         "--shard_size", "1"]


def _spec(out: Path | str, **kw) -> JobSpec:
    return JobSpec(model="m", datasets=[DatasetSpec(source="d.jsonl")], output_dir=str(out), output_file="o.jsonl",
                   **kw)


def _producer(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "producer", "submit", "--no_progress", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _first_run(args: list[str], cwd: Path, shards_done: int) -> Iterator[subprocess.Popen]:
    """A run of ``args`` that has finished ``shards_done`` shards and is still going; killed if left running."""
    proc = _producer(*args, cwd=cwd)
    try:
        parts, deadline = cwd / "sample_output" / ".o.jsonl.parts", time.monotonic() + 300
        while (len(list(parts.glob("*.done.json"))) < shards_done and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before the test could overlap it"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.model
def test_second_run_on_a_live_output_is_refused_resumed_or_not(tmp_path):
    """The sequence that once lost data: P1 runs; P2 (same command) and P3 (with --resume) start beside it."""
    data = write_jsonl(tmp_path / "facts.jsonl", [{"query": f"Tell me a fact about {i}."} for i in range(8)])
    args = [str(data), *SMALL, "--output_file", "o.jsonl"]
    with _first_run(args, tmp_path, 1) as p1:
        for extra in ([], ["--resume", "true"]):
            other = _producer(*args, *extra, cwd=tmp_path)
            _, err = other.communicate(timeout=300)
            assert other.returncode == 1, err
            assert f"being written by a live run: pid {p1.pid} on " in err, err
            assert "Traceback" not in err
        _, err = p1.communicate(timeout=600)
    assert p1.returncode == 0, err
    rows = read_jsonl(tmp_path / "sample_output" / "o.jsonl")
    assert len(rows) == 16  # P1's whole output, not replaced by a smaller one
    late = _producer(*args, "--resume", "true", cwd=tmp_path)
    _, err = late.communicate(timeout=300)
    assert late.returncode == 1 and "already complete" in err
    assert len(read_jsonl(tmp_path / "sample_output" / "o.jsonl")) == 16
    assert not (tmp_path / "sample_output" / ".o.jsonl.lock.json").exists()


@pytest.mark.model
def test_resume_after_sigkill_takes_the_dead_runs_lock_over(tmp_path):
    data = write_jsonl(tmp_path / "facts.jsonl", [{"query": f"Tell me a fact about {i}."} for i in range(5)])
    args = [str(data), *SMALL, "--output_file", "o.jsonl"]
    with _first_run(args, tmp_path, 2) as p1:
        os.kill(p1.pid, signal.SIGKILL)
    record = tmp_path / "sample_output" / ".o.jsonl.lock.json"
    assert json.loads(record.read_text())["pid"] == p1.pid  # the dead run's record is still there
    resumed = _producer(*args, "--resume", "true", cwd=tmp_path)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert len(read_jsonl(tmp_path / "sample_output" / "o.jsonl")) == 10


def test_lock_held_by_a_live_process_names_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from schemas import JobSpec, DatasetSpec; "
        "from workers.output_lock import lock_output; from workers.storage import LocalStorage; "
        "spec = JobSpec(model='m', datasets=[DatasetSpec(source='d.jsonl')], output_dir=sys.argv[2], "
        "output_file='o.jsonl'); lock = lock_output(spec, LocalStorage(sys.argv[2])); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = lock_output(_spec(tmp_path), LocalStorage(str(tmp_path)))
        with pytest.raises(OutputError, match=f"being written by a live run: pid {holder.pid} on "):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait()
    with lock_output(_spec(tmp_path), LocalStorage(str(tmp_path))):  # free once its holder is gone
        assert json.loads((tmp_path / ".o.jsonl.lock.json").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".o.jsonl.lock.json").exists()


def test_a_leftover_soft_lock_of_a_dead_pid_is_taken_over(tmp_path):
    """Where the file system has no OS locks, filelock's soft lock outlives its process: the dead owner's is retaken."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = Owner.me(_spec(tmp_path))
    owner.pid = int(dead.stdout)
    (tmp_path / ".o.jsonl.lock.json").write_bytes(owner.dump())
    assert owner.dead_here()
    lock = lock_output(_spec(tmp_path), LocalStorage(str(tmp_path)))
    lock.acquire()
    try:
        assert json.loads((tmp_path / ".o.jsonl.lock.json").read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def _summary(index: int) -> ShardSummary:
    return ShardSummary(job_id="j", index=index, prompts=1, candidates=1, rows=1, tokens=1, seconds=0.1)


def test_finalise_refuses_to_write_fewer_shards_than_planned(tmp_path):
    (tmp_path / "o.jsonl").write_text("a finished output\n")
    output = JobOutput(_spec(tmp_path, resume=True))
    output.write_shard([], _summary(2))  # the lone shard of a run that resumed beside another
    with pytest.raises(OutputError, match=r"2 of 3 shards have no part .* \(first: shard 0\)"):
        output.finalise({}, planned=3)
    assert (tmp_path / "o.jsonl").read_text() == "a finished output\n"


class _StuckStorage(LocalStorage):
    """A folder whose delete silently leaves files behind (a permission or mount problem)."""

    def delete_prefix(self, prefix: str) -> None:
        pass


def test_fresh_open_that_cannot_clear_old_parts_fails(tmp_path):
    storage = _StuckStorage(str(tmp_path))
    JobOutput(_spec(tmp_path), storage).write_shard([], _summary(0))
    with pytest.raises(OutputError, match="cannot clear the parts of the earlier run .*shard-000000"):
        JobOutput(_spec(tmp_path, override_exist_file=True), storage).open()


@pytest.fixture
def bucket_storage(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    from workers.storage_s3 import S3Storage

    return S3Storage(f"s3://{s3_server.bucket()}/run")


def test_s3_lock_refuses_a_second_run_and_takes_a_stale_one_over_by_s3s_clock(bucket_storage, monkeypatch):
    spec = _spec(bucket_storage.url)
    first = lock_output(spec, bucket_storage)
    assert isinstance(first, S3Lock)
    first.acquire()
    try:
        with pytest.raises(OutputError, match=f"being written by a live run: pid {os.getpid()} on "):
            lock_output(spec, bucket_storage).acquire()
    finally:
        first.release()
    assert not bucket_storage.exists(".o.jsonl.lock")

    # Staleness is S3's clock (Date minus LastModified), never this host's clock against the owner's `heartbeat`:
    behind = Owner.me(spec)  # a live run on a host whose clock is an hour behind: its lock was written just now
    behind.heartbeat = time.time() - 3600
    bucket_storage.write(".o.jsonl.lock", behind.dump())
    with pytest.raises(OutputError, match="being written by a live run"):
        lock_output(spec, bucket_storage).acquire()

    monkeypatch.setattr(output_lock, "STALE", 2.0)  # S3 stamps whole seconds
    stale = Owner.me(spec)  # a run that died without releasing its lock, on a host whose clock is an hour ahead
    stale.heartbeat = time.time() + 3600
    bucket_storage.write(".o.jsonl.lock", stale.dump())
    with pytest.raises(OutputError, match="being written by a live run"):
        lock_output(spec, bucket_storage).acquire()  # not stale yet by S3's clock, whatever its record says
    deadline = time.monotonic() + 20
    while output_lock.s3_age(bucket_storage._get("head_object", ".o.jsonl.lock")) <= output_lock.STALE:
        assert time.monotonic() < deadline, "S3's LastModified did not age"
        time.sleep(0.2)
    monkeypatch.setattr(output_lock, "HEARTBEAT", 0.2)
    taker = lock_output(spec, bucket_storage)
    taker.acquire()
    try:
        held = json.loads(bucket_storage.read(".o.jsonl.lock"))
        assert held["pid"] == os.getpid() and held["heartbeat"] < stale.heartbeat
        time.sleep(0.6)
        assert json.loads(bucket_storage.read(".o.jsonl.lock"))["heartbeat"] > held["heartbeat"]  # renewed
        taker.ensure_held()
        # Someone overwrote it (as a taker would after a long stall): the heartbeat notices, finalising is refused.
        bucket_storage.write(".o.jsonl.lock", stale.dump())
        time.sleep(0.6)
        with pytest.raises(OutputError, match="another run took over"):
            taker.ensure_held()
    finally:
        taker.release()
