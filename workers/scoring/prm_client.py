"""``--prm_model client`` and ``--prm_model qwen_max``: a chat model behind an OpenAI-compatible endpoint judges
each candidate, as swift's ClientPRM / QwenMaxPRM do.

The judge gets a system prompt asking for a reward from -1.0 (worst) to 1.0 (best), reasons first and the
value last as ``**Reward: value**``, and a query holding the conversation before the candidate (as JSON, its
system turn left out), the reference answer and the candidate. The score is the number after the reply's last
``Reward:``, taken as it is; a reply without a readable one scores 0.0 (swift's rule), and so does a request
the endpoint refuses (400/413/422, e.g. longer than its context), with a warning. Requests go through the
client engine (``workers.engines.client``): bounded concurrency, retries on 429/5xx/timeouts, the API key from
the environment, never from the spec.

``--prm_kwargs``: ``base_url``, ``model``, ``api_key_env``, ``concurrency`` (16), ``timeout`` (s, 600),
``max_retries`` (5), ``max_tokens`` (the judge's reply, 1024), ``temperature`` (0: the same candidate gets the
same judgement; swift sends none, so the server's default applies there).

- ``client``: the endpoint is ``base_url``, else ``--base_url``, else DashScope's compatible mode (swift's
  default); model ``qwen-plus`` (swift's default); the key from ``api_key_env``, else ``OPENAI_API_KEY``, else
  ``DASHSCOPE_API_KEY``.
- ``qwen_max``: DashScope's compatible mode (``base_url`` overrides it), model ``qwen-max``, the key from
  ``DASHSCOPE_API_KEY`` (or ``api_key_env``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, ClassVar

from schemas import Message, Prompt, SamplingParams
from schemas.errors import ConfigError
from workers.scoring.base import PRM, InferRequest, Score, validate_scores
from workers.scoring.prm_common import check_inputs

log = logging.getLogger(__name__)

DASHSCOPE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"

SYSTEM = """You judge answers as a process reward model. Give the answer below a reward:

1. The reward is a number from -1.0 (the worst answer) to 1.0 (the best). Reason step by step first; end your
reply with the reward in exactly this form: **Reward: your-reward-value**

2. The answer may stop before it is finished: judge the part that is there, for coherent meaning, correct
logic and clarity.

3. You are also given a ground-truth answer. Treat it as a reference example, not necessarily the best answer.
"""

QUERY = """The question, or the conversation so far:

{query}

The ground-truth answer, for reference:

{ground_truth}

With the above in mind, give your reward (-1.0 to 1.0) for this answer:

{response}
"""

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_REWARD = re.compile(r"Reward:[\s*]*(" + _NUMBER + ")")
_OPTIONS = {
    "base_url": (lambda v: isinstance(v, str) and v.startswith(("http://", "https://")), "an http(s) URL"),
    "model": (lambda v: isinstance(v, str) and v != "", "a model name the endpoint serves"),
    "api_key_env": (lambda v: isinstance(v, str) and v != "", "the name of an environment variable"),
    "concurrency": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"),
    "timeout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "seconds > 0"),
    "max_retries": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0"),
    "max_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"),
    "temperature": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
}


def judge_messages(request: InferRequest, ground_truth: str) -> list[dict[str, str]]:
    """The judge's conversation for one candidate (pure, so it is tested without a server)."""
    previous = list(request.messages[:-1])
    if previous and previous[0].get("role") == "system":
        previous = previous[1:]
    query = QUERY.format(query=json.dumps(previous), ground_truth=ground_truth, response=request.response)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}]


def read_reward(reply: str | None) -> float:
    """The number after the reply's last ``Reward:`` (``**Reward: 0.7**``), else 0.0 as in swift."""
    found = _REWARD.findall(reply or "")
    value = float(found[-1]) if found else 0.0
    return value if math.isfinite(value) else 0.0


class ClientPRM(PRM):
    """A judge model at an OpenAI-compatible endpoint (see the module's docstring)."""

    name: ClassVar[str] = "client"
    model_default: ClassVar[str] = "qwen-plus"
    key_envs: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY", "DASHSCOPE_API_KEY")
    needs_ground_truth = True

    def __init__(self, base_url: str, *, model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 600.0, max_retries: int = 5, max_tokens: int = 1024,
                 temperature: float = 0.0) -> None:
        from workers.engines.client import ClientEngine

        env = api_key_env or next((e for e in self.key_envs if os.environ.get(e)), self.key_envs[0])
        if base_url.rstrip("/") == DASHSCOPE_URL and not os.environ.get(env):
            raise ConfigError(f"--prm_model {self.name}: judging at DashScope ({DASHSCOPE_URL}) needs its API key in "
                              f"${env}; or point --prm_kwargs base_url at another endpoint")
        self.model = model or self.model_default
        self.engine = ClientEngine(self.model, base_url, options={
            "api_key_env": env, "concurrency": concurrency, "timeout": timeout, "max_retries": max_retries,
            "send_seed": False})
        self.params = SamplingParams(num_return_sequences=1, max_new_tokens=max_tokens, temperature=temperature,
                                     top_k=0, top_p=1.0)

    @classmethod
    def options(cls, spec: Any) -> dict[str, Any]:
        """``--prm_kwargs``, checked: an unknown key or a bad value is a ConfigError naming it."""
        given = dict(spec.prm_kwargs)
        for key, value in sorted(given.items()):
            if key not in _OPTIONS:
                raise ConfigError(f"--prm_kwargs {key!r}: not an option of --prm_model {cls.name}; allowed: "
                                  f"{', '.join(sorted(_OPTIONS))}")
            check, wants = _OPTIONS[key]
            if not check(value):
                raise ConfigError(f"--prm_kwargs {key!r}: {value!r} is not {wants}")
        return given

    @classmethod
    def endpoint(cls, spec: Any, given: dict[str, Any]) -> str:
        return given.pop("base_url", None) or spec.base_url or DASHSCOPE_URL

    @classmethod
    def from_spec(cls, spec: Any) -> "ClientPRM":
        given = cls.options(spec)
        return cls(cls.endpoint(spec, given), **given)

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Score]:
        check_inputs(self.name, infer_requests, ground_truths)
        prompts = [Prompt(id=str(i), row=i, source=f"judge request {i} ({self.engine.url})",
                          messages=[Message(**m) for m in judge_messages(r, gt or "")])
                   for i, (r, gt) in enumerate(zip(infer_requests, ground_truths))]
        scores: list[Score] = []
        for gen in self.engine.generate(prompts, self.params, seed=0) if prompts else []:
            if gen.skipped:
                log.warning("PRM %s: %s; that candidate scores 0.0", self.name, gen.skipped)
            scores.append(read_reward(gen.candidates[0].text if gen.candidates else None))
        return validate_scores(self.name, scores, len(infer_requests))


class QwenMaxPRM(ClientPRM):
    """swift's qwen_max: DashScope's qwen-max as the judge."""

    name: ClassVar[str] = "qwen_max"
    model_default: ClassVar[str] = "qwen-max"
    key_envs: ClassVar[tuple[str, ...]] = ("DASHSCOPE_API_KEY",)

    @classmethod
    def endpoint(cls, spec: Any, given: dict[str, Any]) -> str:
        return given.pop("base_url", None) or DASHSCOPE_URL
