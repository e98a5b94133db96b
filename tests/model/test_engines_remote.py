"""The client and lmdeploy engines: request mappings (pure), and the client against a real
`vllm serve` on 127.0.0.1 started from the vLLM environment (.venv-vllm, `make vllm-venv`; tests/kits/vllm.py)."""
from __future__ import annotations

import time

import pytest

from kits.fleet import free_port
from schemas import JobSpec, Message, Prompt, SamplingParams
from schemas.errors import ConfigError, PermanentError, TransientError
from workers.engines.client import ClientEngine, candidate, request_body
from workers.engines.lmdeploy import backend_config, generation_configs

PARAMS = SamplingParams(num_return_sequences=3, max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9,
                        repetition_penalty=1.05, stop_words=["\n\n"])


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl", **kw})


def test_client_request_carries_every_sampling_option():
    body = request_body("m", [{"role": "user", "content": "q"}], PARAMS, 3, 11)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "q"}], "n": 3, "max_tokens": 8,
                    "temperature": 0.8, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05, "stop": ["\n\n"],
                    "seed": 11}


def test_distill_puts_separate_reasoning_first():
    choice = {"message": {"content": "42", "reasoning_content": "6*7"}, "finish_reason": "stop"}
    assert candidate(choice, 5, distill=True).text == "<think>\n6*7\n</think>\n\n42"
    assert candidate(choice, 5, distill=False).text == "42"
    assert candidate({"message": {"content": "x"}, "finish_reason": "length"}, 1, True).finish_reason == "length"


def test_client_options_and_spec_rules():
    with pytest.raises(ConfigError, match="unknown for the client engine"):
        ClientEngine("m", "http://127.0.0.1:1/v1", options={"concurency": 2})
    with pytest.raises(ValueError, match="needs --base_url"):
        spec(sampler_engine="client")
    with pytest.raises(ValueError, match="works with --sampler_engine client"):
        spec(sampler_type="distill")


def test_lmdeploy_sends_n_seeded_copies():
    configs = generation_configs(PARAMS, 100)
    assert [c["random_seed"] for c in configs] == [100, 101, 102] and all(c["n"] == 1 for c in configs)
    assert configs[0] | {"random_seed": 0} == {"n": 1, "max_new_tokens": 8, "do_sample": True, "temperature": 0.8,
                                                "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
                                                "stop_words": ["\n\n"], "random_seed": 0}
    greedy = generation_configs(SamplingParams(num_return_sequences=1, temperature=0), 0)[0]
    assert greedy["do_sample"] is False and greedy["top_k"] == 1


def test_lmdeploy_backend_from_engine_kwargs():
    assert backend_config(spec(engine_kwargs={"backend": "pytorch", "tp": 2}, torch_dtype="bfloat16")) == (
        "pytorch", {"tp": 2, "dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="use turbomind or pytorch"):
        backend_config(spec(engine_kwargs={"backend": "tensorrt"}))


@pytest.mark.gpu
@pytest.mark.skip(reason="LMDeploy needs CUDA and an older torch: it cannot be installed on this CPU-only machine")
def test_lmdeploy_engine_end_to_end(model_path):
    from workers.engines.lmdeploy import LMDeployEngine

    engine = LMDeployEngine(model_path, "pytorch", {})
    gens = engine.generate([Prompt(id="p", row=0, source="t", messages=[Message(role="user", content="Hi")])],
                           PARAMS, seed=0)
    assert len(gens[0].candidates) == 3


@pytest.mark.model
def test_client_engine_against_vllm_serve(vllm_server):
    # vLLM's CPU build dies on a per-request seed, so this server gets none
    engine = ClientEngine("smol", vllm_server, options={"concurrency": 4, "max_retries": 1, "send_seed": False})
    prompts = [Prompt(id=str(i), row=i, source=f"t row {i}", messages=[Message(role="user", content=q)])
               for i, q in enumerate(["What is 2+3?", "Name a colour."])]
    gens = engine.generate(prompts, SamplingParams(num_return_sequences=3, max_new_tokens=8), seed=0)
    assert [len(g.candidates) for g in gens] == [3, 3] and engine.honours_n
    assert all(1 <= c.tokens <= 8 for g in gens for c in g.candidates)
    too_long = Prompt(id="x", row=2, source="t row 2", messages=[Message(role="user", content="word " * 900)])
    kept, skipped = engine.generate([prompts[0], too_long], SamplingParams(num_return_sequences=1, max_new_tokens=2),
                                    seed=0)
    assert len(kept.candidates) == 1 and "refused this prompt: HTTP 400" in skipped.skipped  # the shard goes on
    wrong = ClientEngine("no-such-model", vllm_server, options={"max_retries": 0, "send_seed": False})
    with pytest.raises(PermanentError, match=r"t row 0: .* refused the request: HTTP 404"):
        wrong.generate(prompts[:1], SamplingParams(num_return_sequences=1, max_new_tokens=2), seed=0)


def test_client_engine_unreachable_endpoint_retries_then_fails():
    engine = ClientEngine("m", f"http://127.0.0.1:{free_port()}/v1", options={"max_retries": 1, "timeout": 2})
    prompt = Prompt(id="p", row=0, source="t row 0", messages=[Message(role="user", content="q")])
    with pytest.raises(TransientError, match="failed 2 times; last: ConnectError"):
        engine.generate([prompt], SamplingParams(num_return_sequences=1, max_new_tokens=2), seed=0)


@pytest.fixture
def throttling_server():
    """A real HTTP server on 127.0.0.1 that answers every chat request 429 with the Retry-After the test sets."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"retry_after": "7", "requests": 0}

    class Throttle(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            state["requests"] += 1
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(429)
            self.send_header("Retry-After", state["retry_after"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Throttle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    thread.join()


def test_a_servers_retry_after_reaches_the_failure_policy(throttling_server):
    from email.utils import formatdate

    from schemas.errors import RetryAfter
    from workers.lifecycle.policy import FailurePolicy

    url, state = throttling_server
    prompt = Prompt(id="p", row=0, source="t row 0", messages=[Message(role="user", content="q")])
    params = SamplingParams(num_return_sequences=1, max_new_tokens=2)
    with pytest.raises(RetryAfter, match=r"failed 1 times; last: HTTP 429.*Retry-After 7 s") as caught:
        ClientEngine("m", url, options={"max_retries": 0}).generate([prompt], params, seed=0)
    assert caught.value.seconds == 7 and FailurePolicy(most=3).backoffs(caught.value)[0] == 7
    state["retry_after"], state["requests"] = "0", 0  # waited as asked between the engine's own tries
    with pytest.raises(RetryAfter):
        ClientEngine("m", url, options={"max_retries": 2}).generate([prompt], params, seed=0)
    assert state["requests"] == 3
    state["retry_after"] = formatdate(time.time() + 30, usegmt=True)  # the HTTP-date form
    with pytest.raises(RetryAfter) as caught:
        ClientEngine("m", url, options={"max_retries": 0}).generate([prompt], params, seed=0)
    assert 25 <= caught.value.seconds <= 30
