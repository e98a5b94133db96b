"""The `simulated` engine: a benchmark and fault-injection tool, not a sampler.

It loads no model. For each shard it sleeps a latency model, ``shard_seconds + token_seconds x
tokens``, where every candidate's length is drawn from (prompt id, sample, seed), and returns
placeholder candidates that are the same on every run with the same seed. That lets one 2-core
machine run dozens of "GPU workers" to measure the broker, scorer and aggregator, and lets fault
tests check that a re-run shard gives exactly the same rows.

``--engine_kwargs`` (JSON): ``shard_seconds`` (default 0.05), ``token_seconds`` (default 0),
``min_tokens`` (default 1); for fault tests ``fail_on`` (a prompt containing this text raises, like
an engine bug) and ``exit_on`` (a prompt containing this text kills the worker process, like an
out-of-memory kill). For adaptive-sampling benchmarks, ``pass_rate_column`` names a dataset column holding
each prompt's pass rate: a candidate then ends with ``\\boxed{<the reference answer>}`` with that probability
(drawn from prompt id, sample and seed), else with a wrong box, for the math or accuracy ORM to grade.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from schemas import Candidate, Generation, JobSpec, Prompt, SamplingParams
from schemas.errors import ConfigError
from workers.engines.base import Engine


@dataclass
class SimulatedEngine(Engine):  # not frozen: the caller sets ``on_progress`` while a shard runs
    shard_seconds: float = 0.05
    token_seconds: float = 0.0
    min_tokens: int = 1
    fail_on: str | None = None
    exit_on: str | None = None
    pass_rate_column: str | None = None
    name = "simulated"

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "SimulatedEngine":
        try:
            return cls(**spec.engine_kwargs)
        except TypeError as exc:
            raise ConfigError(f"--engine_kwargs for the simulated engine: {exc}") from None

    def _length(self, prompt: Prompt, sample: int, seed: int, cap: int) -> int:
        digest = hashlib.blake2b(f"{prompt.id}:{sample}:{seed}".encode(), digest_size=8).digest()
        low = min(self.min_tokens, cap)
        return low + int.from_bytes(digest, "big") % (cap - low + 1)

    def _answer(self, prompt: Prompt, sample: int, seed: int) -> str:
        """With --engine_kwargs pass_rate_column: the reference answer's box with the prompt's pass rate."""
        if self.pass_rate_column is None:
            return ""
        digest = hashlib.blake2b(f"pass:{prompt.id}:{sample}:{seed}".encode(), digest_size=8).digest()
        right = int.from_bytes(digest, "big") / 2**64 < float(prompt.extra.get(self.pass_rate_column, 0.0))
        return f" \\boxed{{{prompt.ground_truth if right else 'wrong ' + str(sample)}}}"

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        out, tokens = [], 0
        for prompt in prompts:
            text = " ".join(m.content for m in prompt.messages)
            if self.exit_on and self.exit_on in text:
                os._exit(17)
            if self.fail_on and self.fail_on in text:
                raise RuntimeError(f"simulated engine failure on prompt row {prompt.row}")
            candidates = []
            for sample in range(params.num_return_sequences):
                length = self._length(prompt, sample, seed, params.max_new_tokens)
                tokens += length
                candidates.append(Candidate(text=f"simulated answer {sample} to {prompt.id[:8]} ({length} tokens, "
                                                 f"seed {seed}){self._answer(prompt, sample, seed)}", tokens=length,
                                            finish_reason="length" if length == params.max_new_tokens else "stop"))
            out.append(Generation(prompt=prompt, candidates=candidates))
        deadline = time.monotonic() + self.shard_seconds + self.token_seconds * tokens
        while (left := deadline - time.monotonic()) > 0:  # in slices, as a decode loop steps: a time limit can stop it
            time.sleep(min(left, 0.1))
        return out

    def describe(self) -> dict[str, str]:
        return {"engine": self.name, "note": "simulated: a benchmark tool, the candidates are placeholders"}
