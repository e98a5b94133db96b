"""One run per output: a lock beside the final file, held from the first check until the final file is written.

A second run on the same ``--output_file`` (resumed or not) is refused while the first is alive, with a
message naming the live run; a lock left by a run that died is taken over, so ``--resume true`` works after
a crash. Local folders use ``filelock`` (an OS lock that dies with its process; on file systems without one,
filelock's soft lock, whose leftover is taken over when its owner's pid is gone on this host). S3 uses a lock
object created with a conditional PUT (``If-None-Match: *``) whose owner rewrites it every ``HEARTBEAT``
seconds; one not rewritten for ``STALE`` seconds is taken over with ``If-Match`` on its ETag, so two takers
cannot both win. Its age is told by S3's clock alone: the server's ``Date`` on the reply that read it minus the
object's ``LastModified`` (both stamped by the server), never this host's clock against the ``heartbeat`` the
owner's host wrote (hosts' clocks need not agree; the record's times are for people). Beside the lock, an owner
record says who holds it: pid, host, start time and command.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from schemas import JobSpec
from schemas.errors import OutputError
from workers.keepalive import KeepAlive
from workers.storage import LocalStorage, Storage

log = logging.getLogger(__name__)

HEARTBEAT = 10.0  # seconds between renewals of an S3 lock
STALE = 60.0      # an S3 lock not renewed for this long (by S3's clock) belongs to a dead run


@dataclass
class Owner:
    """Who holds an output's lock (kept as JSON beside it)."""

    pid: int
    host: str
    started: float
    command: str
    heartbeat: float = field(default_factory=time.time)

    @classmethod
    def me(cls, spec: JobSpec) -> "Owner":
        data = " ".join(str(d) for d in spec.datasets)
        model = f" --model {spec.model}" if spec.model else ""
        command = f"producer submit {data}{model} --output_dir {spec.output_dir} --output_file {spec.output_file}"
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.time(), command=command)

    @classmethod
    def parse(cls, text: bytes | str) -> "Owner | None":
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def dump(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on {self.host}, started {since} ({self.command})"

    def dead_here(self) -> bool:
        """True only when this host can tell for sure that the owner's process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def s3_age(reply: dict[str, Any]) -> float | None:
    """Seconds since the object of a get/head reply was last written, by the server's clock (its ``Date`` header
    minus ``LastModified``); None when the reply lacks either."""
    date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = reply.get("LastModified")
    if not date or modified is None:
        return None
    try:
        return (parsedate_to_datetime(date) - modified).total_seconds()
    except (TypeError, ValueError):
        return None


def _refused(where: str, owner: Owner | None) -> OutputError:
    who = owner.describe() if owner else "another run (its owner record is unreadable)"
    return OutputError(f"{where} is being written by a live run: {who}; wait for it to finish or stop it "
                       "(then --resume true continues it)")


class OutputLock(ABC):
    """Held while a run may write the output; ``ensure_held`` before the final write."""

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @abstractmethod
    def acquire(self) -> None:
        """Take the lock, taking over one left by a dead run; OutputError naming the live owner otherwise."""

    @abstractmethod
    def release(self) -> None: ...

    def ensure_held(self) -> None:
        """Raise OutputError when the lock was lost (an S3 heartbeat that failed); the default never loses it."""


class LocalLock(OutputLock):
    def __init__(self, storage: LocalStorage, name: str, owner: Owner) -> None:
        self.where = storage.where(name)
        self.path = Path(storage.root) / f".{name}.lock"
        self.record = Path(storage.root) / f".{name}.lock.json"
        self.owner = owner
        self._lock = FileLock(self.path, timeout=0, thread_local=False)

    def _holder(self) -> Owner | None:
        try:
            return Owner.parse(self.record.read_bytes())
        except OSError:
            return None

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except Timeout:
            holder = self._holder()
            if holder is None or not holder.dead_here():
                raise _refused(self.where, holder) from None
            # An OS lock dies with its process, so only a soft lock outlives its dead owner: remove and retake.
            log.warning("%s: taking over the lock of a run that died (%s)", self.where, holder.describe())
            self.path.unlink(missing_ok=True)
            try:
                self._lock.acquire()
            except Timeout:
                raise _refused(self.where, self._holder()) from None
        tmp = self.record.with_name(f"{self.record.name}.tmp{os.getpid()}")
        tmp.write_bytes(self.owner.dump())
        os.replace(tmp, self.record)

    def release(self) -> None:
        if self._lock.is_locked:
            self.record.unlink(missing_ok=True)
            self._lock.release()


class S3Lock(OutputLock):
    def __init__(self, storage: Any, name: str, owner: Owner) -> None:
        self.storage, self.owner = storage, owner
        self.key = f".{name}.lock"
        self.where = storage.where(name)
        self._etag: str | None = None
        self._lost: str | None = None
        self._heartbeat: KeepAlive | None = None

    def _put(self, **condition: str) -> str | None:
        """PUT our record under a condition; None when the condition did not hold (someone else has it)."""
        from botocore.exceptions import ClientError

        self.owner.heartbeat = time.time()
        try:
            reply = self.storage.client.put_object(Bucket=self.storage.bucket, Key=self.storage._key(self.key),
                                                   Body=self.owner.dump(), **condition)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):
                return None
            self.storage._raise(exc, "put_object", self.key)
        return reply["ETag"]

    def acquire(self) -> None:
        self._etag = self._put(IfNoneMatch="*")
        if self._etag is None:
            found = self.storage._get("get_object", self.key)
            holder = Owner.parse(found["Body"].read()) if found else None
            age = s3_age(found) if found else None
            if found is None:  # released between our PUT and our read
                self._etag = self._put(IfNoneMatch="*")
            elif age is not None and age > STALE:
                log.warning("%s: taking over the lock of a run that stopped renewing it %.0fs ago by S3's clock (%s)",
                            self.where, age, holder.describe() if holder else "unreadable")
                self._etag = self._put(IfMatch=found["ETag"])
            elif age is None:
                log.warning("%s: S3 gave no Date/LastModified for the lock: it is never judged stale here; delete "
                            "%s by hand once its run is gone", self.where, self.key)
            if self._etag is None:
                raise _refused(self.where, holder)
        # a failed beat is logged and the next one tries again: STALE allows several
        self._heartbeat = KeepAlive(self._beat, HEARTBEAT, what=f"{self.where}: lock heartbeat").start()

    def _beat(self) -> bool:
        """Rewrite the lock if it is still ours; False once another run took it over."""
        etag = self._put(IfMatch=self._etag)
        if etag is None:
            self._lost = "another run took over this output's lock (our heartbeat was late)"
            return False
        self._etag = etag
        return True

    def ensure_held(self) -> None:
        if self._lost:
            raise OutputError(f"{self.where}: {self._lost}; the output was not replaced")

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._etag is not None and not self._lost:
            try:
                self.storage.client.delete_object(Bucket=self.storage.bucket, Key=self.storage._key(self.key))
            except Exception as exc:  # the next run sees a stale lock and takes it over
                log.warning("%s: could not remove the lock: %s", self.where, exc)
            self._etag = None


def lock_output(spec: JobSpec, storage: Storage) -> OutputLock:
    """The lock of ``spec``'s output on ``storage`` (not taken yet); a location that cannot be written fails here."""
    storage.check_writable()
    owner = Owner.me(spec)
    if isinstance(storage, LocalStorage):
        return LocalLock(storage, spec.output_file, owner)
    return S3Lock(storage, spec.output_file, owner)
