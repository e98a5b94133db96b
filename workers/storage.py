"""Where a job's files live: a local folder or an S3 prefix, behind one small interface.

Every write is atomic (local: temp file then rename; S3: a single PUT or a completed multipart
upload), so a reader sees a whole object or none, and writing a key again replaces it: that is
what makes a redelivered shard overwrite its own part instead of adding rows.
"""
from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from workers.registry import Registry


class Storage(ABC):
    """Keys are '/'-separated paths relative to the storage's root."""

    url: str

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace ``key`` atomically."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder-like prefix ending in '/'), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def concat(self, keys: Iterable[str], dest: str) -> None:
        """Write the concatenation of ``keys`` to ``dest`` atomically (streamed, never all in memory)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise OutputError now when writes would fail later (missing bucket, refused credentials)."""

    def where(self, key: str) -> str:
        """A user-facing location of ``key`` for messages and summaries."""
        return f"{self.url.rstrip('/')}/{key}"


class LocalStorage(Storage):
    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _temp(self, path: Path) -> Path:
        """Unique to this write: every solo worker in a container is PID 1, so a PID alone would collide."""
        return path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:12]}")

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp(path)
        try:
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())  # on disk before the rename makes it visible: a crash leaves old or new
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and ".tmp" not in p.name)

    def delete_prefix(self, prefix: str) -> None:
        """Raises OutputError when something is left: a caller must not take what remains for its own."""
        from schemas.errors import OutputError

        try:
            shutil.rmtree(self._path(prefix))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot delete {self.where(prefix)}: {exc}") from exc

    def concat(self, keys: Iterable[str], dest: str) -> None:
        path = self._path(dest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp(path)
        try:
            with tmp.open("wb") as out:
                for key in keys:
                    with self._path(key).open("rb") as part:
                        shutil.copyfileobj(part, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def check_writable(self) -> None:
        from schemas.errors import OutputError

        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--output_dir {self.root}: cannot create it: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise OutputError(f"--output_dir {self.root}: not writable")


STORAGES: Registry[Storage] = Registry("storage", "--output_dir", {
    "file": LocalStorage,
    "s3": "workers.storage_s3:S3Storage",
})


def open_storage(output_dir: str) -> Storage:
    """``s3://bucket/prefix`` -> S3, anything else -> a local folder."""
    scheme = output_dir.split("://", 1)[0] if "://" in output_dir else "file"
    return STORAGES.create(scheme, output_dir.removeprefix("file://"))
