"""Storage behaviour, the same tests on a local folder and on a real S3 server (SeaweedFS, see tests/kits/s3.py),
plus what only S3 has: multipart concat, credential and bucket checks, retries then TransientError."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kits.fleet import free_port
from kits.s3 import S3Server, start_moto, start_seaweedfs

from schemas import DatasetSpec, JobSpec, Message, OutputRow, ShardSummary
from schemas.errors import OutputError, TransientError
from workers.output import JobOutput
from workers.storage import LocalStorage, Storage, open_storage

MiB = 1024 * 1024


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's endpoint and credentials in the environment, where S3Storage's credential chain looks."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def shared_bucket(s3_server: S3Server) -> str:
    return s3_server.bucket()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(str(tmp_path / "store"))
    request.getfixturevalue("s3_env")
    return open_storage(f"s3://{request.getfixturevalue('shared_bucket')}/t/{uuid.uuid4().hex[:8]}")


def calls(storage: Storage, operation: str) -> list[dict]:
    """Records every S3 call of ``operation`` (one entry per call, not per retry)."""
    seen: list[dict] = []
    storage.client.meta.events.register(f"before-call.s3.{operation}", lambda params, **_: seen.append(params))
    return seen


# --- the shared behaviour ---------------------------------------------------------------------------------------

def test_write_read_exists(storage):
    storage.check_writable()
    assert not storage.exists("a/b.txt")
    storage.write("a/b.txt", b"hello\n")
    assert storage.exists("a/b.txt") and storage.read("a/b.txt") == b"hello\n"
    storage.write("empty", b"")
    assert storage.read("empty") == b""
    with pytest.raises(FileNotFoundError):
        storage.read("a/missing.txt")


def test_overwrite_replaces_without_duplicates(storage):
    storage.write("p/part.jsonl", b"first\n")
    storage.write("p/part.jsonl", b"second\n")
    assert storage.list("p/") == ["p/part.jsonl"]
    assert storage.read("p/part.jsonl") == b"second\n"


def test_list_is_sorted_recursive_and_relative(storage):
    for key in ("p/b", "p/a", "p/sub/c", "pq/x", "other"):
        storage.write(key, key.encode())
    assert storage.list("p/") == ["p/a", "p/b", "p/sub/c"]
    assert storage.list("nothing/") == []


def test_delete_prefix_removes_only_that_prefix(storage):
    for key in ("p/a", "p/sub/b", "pq/keep", "keep"):
        storage.write(key, b"x")
    storage.delete_prefix("p/")
    assert storage.list("p/") == [] and not storage.exists("p/sub/b")
    assert storage.exists("pq/keep") and storage.exists("keep")
    storage.delete_prefix("absent/")  # no error


def test_concat_in_the_given_order_and_dest_absent_until_complete(storage):
    for index in (2, 0, 1):
        storage.write(f"parts/{index}", f"row {index}\n".encode())
    seen_dest: list[bool] = []

    def keys() -> Iterator[str]:
        for index in (0, 1, 2):
            yield f"parts/{index}"
            seen_dest.append(storage.exists("final.jsonl"))

    storage.concat(keys(), "final.jsonl")
    assert storage.read("final.jsonl") == b"row 0\nrow 1\nrow 2\n"
    assert seen_dest == [False, False, False]
    storage.concat([], "empty.jsonl")
    assert storage.read("empty.jsonl") == b""


def test_failed_concat_leaves_no_dest_and_keeps_an_old_one(storage):
    storage.write("parts/0", b"a\n")
    with pytest.raises(FileNotFoundError):
        storage.concat(["parts/0", "parts/missing"], "final.jsonl")
    assert not storage.exists("final.jsonl")
    storage.write("final.jsonl", b"old\n")
    with pytest.raises(FileNotFoundError):
        storage.concat(["parts/0", "parts/missing"], "final.jsonl")
    assert storage.read("final.jsonl") == b"old\n"


def test_large_concat_is_byte_identical(storage):
    """17 MiB in three parts: on S3 a multipart upload of 8 MiB parts, invisible until completed."""
    blobs = [os.urandom(n) for n in (6 * MiB + 3, 7 * MiB, 4 * MiB + 11)]
    for index, blob in enumerate(blobs):
        storage.write(f"big/{index}", blob)
    multipart = calls(storage, "CreateMultipartUpload") if hasattr(storage, "client") else None
    uploads = calls(storage, "UploadPart") if multipart is not None else None
    seen_dest: list[bool] = []

    def keys() -> Iterator[str]:
        for index in range(len(blobs)):
            yield f"big/{index}"
            seen_dest.append(storage.exists("big.bin"))

    storage.concat(keys(), "big.bin")
    assert hashlib.sha256(storage.read("big.bin")).digest() == hashlib.sha256(b"".join(blobs)).digest()
    assert seen_dest == [False, False, False]
    if multipart is not None:
        assert len(multipart) == 1 and len(uploads) == 3   # 8 + 8 + 1 MiB


# --- S3 only ------------------------------------------------------------------------------------------------------

def test_s3_small_concat_is_one_put(s3_env, shared_bucket):
    storage = open_storage(f"s3://{shared_bucket}/small")
    storage.write("a", b"1\n")
    multipart, puts = calls(storage, "CreateMultipartUpload"), calls(storage, "PutObject")
    storage.concat(["a", "a"], "dest")
    assert storage.read("dest") == b"1\n1\n" and not multipart and len(puts) == 1


def test_s3_failed_multipart_concat_is_aborted(s3_env, shared_bucket):
    storage = open_storage(f"s3://{shared_bucket}/abort-{uuid.uuid4().hex[:6]}")
    storage.write("big", os.urandom(9 * MiB))
    with pytest.raises(FileNotFoundError):
        storage.concat(["big", "missing"], "dest")
    assert not storage.exists("dest")
    pending = s3_env.client().list_multipart_uploads(Bucket=shared_bucket, Prefix=storage.root).get("Uploads", [])
    assert pending == []


def test_s3_list_and_delete_beyond_one_page(s3_env, shared_bucket):
    """More than 1000 keys: list_objects_v2 pages and delete_objects batches."""
    storage = open_storage(f"s3://{shared_bucket}/many-{uuid.uuid4().hex[:6]}")
    keys = [f"p/{i:05d}" for i in range(1003)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: storage.write(k, b""), keys))
    assert storage.list("p/") == keys
    storage.delete_prefix("p/")
    assert storage.list("p/") == []


def test_s3_check_writable_missing_bucket(s3_env):
    storage = open_storage("s3://no-such-bucket-sf/x")
    with pytest.raises(OutputError, match="no-such-bucket-sf") as err:
        storage.check_writable()
    assert "does not exist" in str(err.value) and s3_env.secret_key not in str(err.value)


@pytest.mark.parametrize("wrong", ["secret", "access_key"])
def test_s3_wrong_credentials_are_refused_without_leaking_the_secret(s3_env, shared_bucket, monkeypatch, wrong):
    if not s3_env.auth_enforced:
        pytest.skip(f"{s3_env.kind} does not check credentials")
    bad_secret = "bad-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret if wrong == "secret" else s3_env.secret_key)
    if wrong == "access_key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEYID")
    storage = open_storage(f"s3://{shared_bucket}/creds")
    with pytest.raises(OutputError, match=shared_bucket) as err:
        storage.check_writable()
    assert "refused" in str(err.value)
    with pytest.raises(OutputError, match="put_object") as err2:  # a later call: names the operation and key
        storage.write("some/key.jsonl", b"x")
    for message in (str(err.value), str(err2.value)):
        assert bad_secret not in message and s3_env.secret_key not in message
    assert "creds/some/key.jsonl" in str(err2.value)


def test_s3_unreachable_endpoint_fails_check_fast(s3_env, monkeypatch):
    monkeypatch.setenv("SAMPLEFLEET_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(OutputError, match="cannot use S3 endpoint"):
        open_storage("s3://bucket-x/p").check_writable()
    assert time.monotonic() - start < 15


def test_s3_stopped_server_retries_then_transient(s3_env, monkeypatch):
    """A real server that goes away mid-job: bounded retries, then TransientError (the fleet retries later)."""
    server = start_seaweedfs() if s3_env.kind == "seaweedfs" else start_moto()
    try:
        bucket = server.bucket()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("SAMPLEFLEET_S3_MAX_ATTEMPTS", "3")
        storage = open_storage(f"s3://{bucket}/job")
        storage.write("part", b"ok")
        server.stop()
        attempts: list[int] = []
        storage.client.meta.events.register("before-send.s3.GetObject", lambda **_: attempts.append(1))
        start = time.monotonic()
        with pytest.raises(TransientError, match="after 3 attempts"):
            storage.read("part")
        assert len(attempts) == 3 and time.monotonic() - start < 20
    finally:
        server.stop()


class _Throttling(BaseHTTPRequestHandler):
    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def test_s3_throttling_is_retried_then_transient(s3_env, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SAMPLEFLEET_S3_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("SAMPLEFLEET_S3_MAX_ATTEMPTS", "3")
        with pytest.raises(TransientError, match="SlowDown") as err:
            open_storage("s3://bucket-x/p").write("k.jsonl", b"x")
        assert _Throttling.hits == 3 and "bucket-x/p/k.jsonl" in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_joboutput_end_to_end_on_s3(s3_env, shared_bucket):
    prefix = f"jobs/{uuid.uuid4().hex[:8]}"
    spec = JobSpec(model="m", output_file="run.jsonl", output_dir=f"s3://{shared_bucket}/{prefix}",
                   datasets=[DatasetSpec.parse("d.jsonl")])
    output = JobOutput(spec)
    assert output.open() == set()
    for index in (2, 0, 1):  # shards finish in any order, one is delivered twice
        for _ in range(2 if index == 1 else 1):
            rows = [OutputRow(messages=[Message(role="user", content=f"s{index}p{k}"),
                                        Message(role="assistant", content="a")], id=f"id{index}{k}") for k in (0, 1)]
            output.write_shard(rows, ShardSummary(job_id="j", index=index, prompts=2, rows=2, candidates=2,
                                                  tokens=20, seconds=0.1))
    assert output.finalise({"rows": 6}) == f"s3://{shared_bucket}/{prefix}/run.jsonl"
    output.drop_parts()
    client = s3_env.client()
    text = client.get_object(Bucket=shared_bucket, Key=f"{prefix}/run.jsonl")["Body"].read().decode()
    prompts = [json.loads(line)["messages"][0]["content"] for line in text.splitlines()]
    assert prompts == ["s0p0", "s0p1", "s1p0", "s1p1", "s2p0", "s2p1"]
    manifest = client.get_object(Bucket=shared_bucket, Key=f"{prefix}/run.manifest.json")["Body"].read()
    assert json.loads(manifest) == {"rows": 6}
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=shared_bucket, Prefix=prefix).get("Contents", [])]
    assert sorted(keys) == [f"{prefix}/run.jsonl", f"{prefix}/run.manifest.json"]


def test_s3_endpoint_from_aws_endpoint_url(s3_env, shared_bucket, monkeypatch):
    monkeypatch.delenv("SAMPLEFLEET_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    storage = open_storage(f"s3://{shared_bucket}/env-endpoint")
    storage.write("k", b"v")
    assert storage.endpoint == s3_env.endpoint and storage.read("k") == b"v"
