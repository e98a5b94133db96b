"""Running untrusted code: a pool of warm, sandboxed fork servers, one per core the scorer may use.

Each server (``sandbox_server.py``) runs inside one of these, the strongest this machine allows:

- ``bwrap`` (bubblewrap, Debian's ``bubblewrap``): new user, pid, network, ipc, uts and cgroup namespaces;
  a filesystem of ``/usr`` (and the interpreter's prefix) read-only, a private ``/proc``, ``/dev`` and a
  size-capped tmpfs ``/tmp``: no project files, no home, no ``/etc``; an empty environment; killed with its
  parent. Started as ``nobody`` when we are root, so its processes are never a uid that owns anything.
- ``unshare`` (root without bubblewrap): network, pid and mount namespaces, then ``setpriv`` to ``nobody``;
  empty tmpfs mounts over ``/tmp``, ``/var/tmp``, ``/dev/shm``, the homes, this project and the working folder;
  the rest of the host's files stay visible (readable where the world may read them, writable only where the
  world may write).
- ``rlimits`` (asked for by name only): no namespaces; ``nobody`` when root, else our own user.

In every mode each candidate runs in its own session with CPU-time, address-space, file-size, process-count
and descriptor rlimits, in a fresh temporary folder, stdin empty and stdout/stderr discarded or size-capped;
the server kills everything the candidate left (the whole pid namespace but itself) after each one.
docs/SECURITY.md says what is enforced where, as measured.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

SERVER_SOURCE = Path(__file__).with_name("sandbox_server.py")
#: The unprivileged user candidates run as when we are root.
SANDBOX_USER = 65534  # nobody
TMPFS_BYTES = 256 << 20
START_TIMEOUT = 30.0
#: Host-side backstop: a server silent this much longer than a test's timeout is killed and restarted.
SILENCE_GRACE = 10.0
MODES = ("auto", "bwrap", "unshare", "rlimits")


@dataclass(frozen=True)
class Limits:
    """What one candidate may use; ``timeout`` is per test case (one call, or one stdin/stdout run)."""

    timeout: float = 5.0
    memory_mb: int = 1024
    output_bytes: int = 8 << 20
    processes: int = 32


def _drop_user() -> dict[str, Any]:
    """Popen arguments that start the sandbox as ``nobody`` when we are root, nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    return {"user": SANDBOX_USER, "group": SANDBOX_USER, "extra_groups": []}


def _interpreter() -> str:
    """The sandbox's Python: this one's base interpreter when nobody may run it, else the system's python3."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if os.geteuid() != 0 or _world_executable(base):
        return base
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if system is None:
        raise ConfigError(f"code ORM: no Python that the sandbox user may run ({base} is not world-readable); "
                          "install python3 (apt-get install python3)")
    return os.path.realpath(system)


def _world_executable(path: str) -> bool:
    """Every folder above ``path`` world-searchable and the file world-executable."""
    p = Path(path)
    return all(os.stat(d).st_mode & 0o001 for d in p.parents) and bool(os.stat(p).st_mode & 0o001)


def _bwrap_command(python: str) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox",
           "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    prefix = str(Path(python).parents[1])
    if not prefix.startswith("/usr"):
        cmd += ["--ro-bind", prefix, prefix]
    return cmd + ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
                  "--chdir", "/tmp"]


#: Hidden behind empty tmpfs mounts in the ``unshare`` mode: the shared temporary folders, homes, this project.
HIDDEN = ("/tmp", "/var/tmp", "/dev/shm", "/root", "/home", str(Path(__file__).resolve().parents[2]))


def _unshare_command() -> list[str]:
    hidden: list[str] = []
    for d in dict.fromkeys((*HIDDEN, os.getcwd())):  # a folder inside one already hidden is gone with it
        if os.path.isdir(d) and d != "/" and not any(Path(d).is_relative_to(h) for h in hidden):
            hidden.append(d)
    mounts = " && ".join(f"mount -t tmpfs -o size={TMPFS_BYTES},mode={1777 if d in HIDDEN[:3] else 755} sandbox '{d}'"
                         for d in hidden)
    return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
            "--", "sh", "-c", f'{mounts} && exec "$0" "$@"',
            "setpriv", f"--reuid={SANDBOX_USER}", f"--regid={SANDBOX_USER}", "--clear-groups"]


@cache
def _works(mode: str) -> bool:
    """Whether ``mode`` starts a Python here (probed once per process)."""
    try:
        wrap, extra = _wrapper(mode)
        done = subprocess.run([*wrap, _interpreter(), "-I", "-S", "-c", "pass"], capture_output=True,
                              timeout=START_TIMEOUT, **extra)
    except (OSError, subprocess.SubprocessError, ConfigError):
        return False
    if done.returncode:
        log.info("code sandbox: %s does not work here: %s", mode, done.stderr.decode(errors="replace")[-300:])
    return done.returncode == 0


def _wrapper(mode: str) -> tuple[list[str], dict[str, Any]]:
    if mode == "bwrap":
        if shutil.which("bwrap") is None:
            raise ConfigError("bwrap is not installed")
        return _bwrap_command(_interpreter()), _drop_user()
    if mode == "unshare":
        if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
            raise ConfigError("unshare needs root and util-linux")
        return _unshare_command(), {}
    return [], _drop_user()


def choose_mode(asked: str) -> str:
    """The sandbox to use: ``asked``, or for ``auto`` the strongest that works; a ConfigError saying what to do."""
    if asked not in MODES:
        raise ConfigError(f"--orm_kwargs sandbox={asked!r}: must be one of {', '.join(MODES)}")
    if asked == "rlimits":
        return asked
    for mode in ("bwrap", "unshare") if asked == "auto" else (asked,):
        if _works(mode):
            return mode
    how = ("install bubblewrap (apt-get install bubblewrap; it needs user namespaces), run the scorer as root, "
           "or accept rlimits only (no namespaces, the scorer's own user when not root) with "
           "--orm_kwargs '{\"sandbox\": \"rlimits\"}'; see docs/SECURITY.md")
    raise ConfigError(f"code ORM: sandbox {asked!r} does not work on this machine: {how}")


class _Server:
    """One fork server process and its line-reading state."""

    def __init__(self, mode: str) -> None:
        wrap, extra = _wrapper(mode)
        self.own_tmp = self._private_tmp() if mode == "rlimits" else None  # the others have a tmpfs /tmp
        args = ["own-pid-namespace"] if mode in ("bwrap", "unshare") else []
        self.process = subprocess.Popen(
            [*wrap, _interpreter(), "-I", "-S", "-c", SERVER_SOURCE.read_text(encoding="utf-8"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            env={"PATH": "/usr/bin:/bin"}, cwd="/", **extra)
        self._buffer = b""
        if self.readline(time.monotonic() + START_TIMEOUT) != b"ready":
            self.close()
            raise ConfigError(f"code ORM: the {mode} sandbox did not start (exit code {self.process.poll()})")

    @staticmethod
    def _private_tmp() -> str:
        """A folder only the sandbox user may use, for modes without a tmpfs of their own."""
        path = tempfile.mkdtemp(prefix="samplefleet-sandbox-")
        if os.geteuid() == 0:
            os.chown(path, SANDBOX_USER, SANDBOX_USER)
        return path

    def readline(self, deadline: float) -> bytes | None:
        """The next line from the server, or None when it is silent past ``deadline`` or gone."""
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def run(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The server's result for ``job``; None when it died or went silent (the caller replaces it)."""
        try:
            self.process.stdin.write(json.dumps({**job, "tmp": self.own_tmp or "/tmp"}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return None
        silence = job["timeout"] + SILENCE_GRACE
        while (line := self.readline(time.monotonic() + silence)) == b".":
            pass
        return json.loads(line) if line else None

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self.own_tmp:
            subprocess.run(["rm", "-rf", "--one-file-system", self.own_tmp], check=False)


class SandboxPool:
    """``size`` warm servers; ``run`` spreads jobs over them, one candidate per server at a time.

    Each server belongs to one long-lived thread of the pool, which started it: bubblewrap's
    ``--die-with-parent`` follows the thread that started it, not the process.
    """

    def __init__(self, size: int, mode: str = "auto") -> None:
        self.mode = choose_mode(mode)
        self.size = size
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="code-sandbox")
        self._local = threading.local()
        self._servers: set[_Server] = set()
        self._lock = threading.Lock()
        log.info("code sandbox: %d %s servers", size, self.mode)

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each job's result (``passed``, ``verdict``), in order."""
        return list(self._executor.map(self._one, jobs))

    def _one(self, job: dict[str, Any]) -> dict[str, Any]:
        server = getattr(self._local, "server", None)
        if server is None:
            server = self._local.server = _Server(self.mode)
            with self._lock:
                self._servers.add(server)
        result = server.run(job)
        if result is None:
            self._local.server = None
            with self._lock:
                self._servers.discard(server)
            server.close()
            result = {"passed": 0, "verdict": "crashed: the sandbox server died or hung, restarted"}
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for server in self._servers:
                server.close()
            self._servers.clear()
