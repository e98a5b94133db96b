"""The `client` engine: any OpenAI-compatible chat endpoint (vllm serve, SGLang, lmdeploy api_server,
llama.cpp server, TGI, hosted APIs) over async HTTP with bounded concurrency.

One request per prompt with ``n=N``; some servers answer n>1 with a single choice and no error, so
the engine notices short answers and asks for the rest with separate seeded requests (and stops
asking for n>1 from then on). 429, 5xx and timeouts are retried with exponential backoff; other
errors fail the shard with the status and an excerpt of the body. A server's Retry-After (429, 503) sets the
wait instead, and once the retries are spent it reaches the failure policy as ``RetryAfter``: the shard's next
attempt waits what the server asked, not the policy's own back-off. The API key comes from the
environment (``--engine_kwargs '{"api_key_env": "NAME"}'``, default OPENAI_API_KEY), never the spec.
Other ``--engine_kwargs``: concurrency (16), timeout (600 s), max_retries (5), send_seed (true; false for
servers that break on a per-request seed, such as vLLM's CPU build).

With ``--sampler_type distill`` the teacher's reasoning, when the endpoint returns it separately
(``reasoning_content`` / ``reasoning``), is written before the answer as ``<think>...</think>``.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from schemas import Candidate, Generation, JobSpec, Prompt, SamplingParams
from schemas.errors import ConfigError, PermanentError, PromptRefused, RetryAfter, TransientError
from workers.engines.base import Engine, sampling_kwargs

log = logging.getLogger(__name__)
OPTIONS = {"api_key_env", "concurrency", "timeout", "max_retries", "send_seed"}


def request_body(model: str, messages: list[dict[str, str]], params: SamplingParams, n: int,
                 seed: int | None) -> dict[str, Any]:
    """The chat-completions request for one prompt (pure, so it is tested without a server)."""
    body = {"model": model, "messages": messages, **sampling_kwargs(params, seed, n)}
    if params.top_k == 0:
        del body["top_k"]  # an extension most open servers accept: sent only when it is on
    if params.repetition_penalty == 1.0:
        del body["repetition_penalty"]  # likewise
    return body


def candidate(choice: dict[str, Any], tokens: int, distill: bool) -> Candidate:
    """One choice as a Candidate; in distill mode, separately returned reasoning goes first in <think>."""
    message = choice.get("message") or {}
    text = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if distill and reasoning and "<think>" not in text:
        text = f"<think>\n{reasoning}\n</think>\n\n{text}"
    return Candidate(text=text, tokens=tokens, finish_reason="length" if choice.get("finish_reason") == "length"
                     else "stop")


def retry_after(headers: Any) -> float | None:
    """The seconds a reply's Retry-After header asks for (delta-seconds or an HTTP date), else None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


PROMPT_REFUSALS = {400, 413, 422}  # about this request (too long, bad content); 401/403/404 are about the job


class ClientEngine(Engine):
    name = "client"

    def __init__(self, model: str, base_url: str, *, distill: bool = False, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = set(options) - OPTIONS
        if unknown:
            raise ConfigError(f"--engine_kwargs {sorted(unknown)}: unknown for the client engine; "
                              f"known: {', '.join(sorted(OPTIONS))}")
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.distill = distill
        self.concurrency = int(options.get("concurrency", 16))
        self.timeout = float(options.get("timeout", 600))
        self.max_retries = int(options.get("max_retries", 5))
        # false for servers that break on a per-request seed (vLLM's CPU build: "CPU Generator does not use offset")
        self.send_seed = bool(options.get("send_seed", True))
        key = os.environ.get(options.get("api_key_env", "OPENAI_API_KEY"))
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._key = key
        self.honours_n = True

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "ClientEngine":
        return cls(spec.model, spec.base_url or "", distill=spec.sampler_type == "distill",
                   options=spec.engine_kwargs)

    def describe(self) -> dict[str, str]:
        return {"engine": self.name, "model": self.model, "endpoint": self.url}

    def _scrub(self, text: str) -> str:
        """An endpoint's reply without the API key (some proxies quote the key they refuse)."""
        return text.replace(self._key, "***") if self._key else text

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        return asyncio.run(self._generate(prompts, params, seed))

    async def _generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        import httpx

        limit = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as http:
            async def one(i: int, prompt: Prompt) -> Generation:
                async with limit:
                    try:
                        cands = await self._sample(http, prompt, params, seed + i * 1009)
                    except PromptRefused as exc:  # e.g. longer than the served context: skip it, keep the shard
                        return Generation(prompt=prompt, skipped=str(exc))
                return Generation(prompt=prompt, candidates=cands)

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    async def _sample(self, http, prompt: Prompt, params: SamplingParams, seed: int) -> list[Candidate]:
        messages = [m.model_dump() for m in prompt.messages]
        want, out = params.num_return_sequences, []
        while len(out) < want:
            n = want - len(out) if self.honours_n else 1
            body = request_body(self.model, messages, params, n, seed + len(out) if self.send_seed else None)
            reply = await self._post(http, body, prompt)
            choices = reply.get("choices") or []
            if not choices:
                raise PermanentError(f"{prompt.source}: the endpoint returned no choices: {str(reply)[:300]}")
            if n > 1 and len(choices) < n:
                log.warning("%s answered n=%d with %d choices: asking one at a time from now on", self.url, n,
                            len(choices))
                self.honours_n = False
            tokens = int((reply.get("usage") or {}).get("completion_tokens", 0)) // max(len(choices), 1)
            out += [candidate(c, tokens, self.distill) for c in choices[: want - len(out)]]
        return out

    async def _post(self, http, body: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
        import httpx

        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                response = await http.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.json()
                problem = f"HTTP {response.status_code}: {self._scrub(response.text[:300])}"
                if response.status_code in PROMPT_REFUSALS:
                    raise PromptRefused(f"{self.url} refused this prompt: {problem}")
                if response.status_code != 429 and response.status_code < 500:
                    raise PermanentError(f"{prompt.source}: {self.url} refused the request: {problem}")
                wait = retry_after(response.headers)
            if attempt < self.max_retries:
                await asyncio.sleep(min(60.0, wait) if wait is not None else
                                    min(60.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))
        message = f"{prompt.source}: {self.url} failed {self.max_retries + 1} times; last: {problem}"
        raise TransientError(message) if wait is None else RetryAfter(f"{message} (Retry-After {wait:.0f} s)", wait)
