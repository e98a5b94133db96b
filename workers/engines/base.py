"""The engine interface: a whole batch of prompts in, N candidates per prompt out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from schemas import Generation, Prompt, SamplingParams


def sampling_kwargs(params: SamplingParams, seed: int | None, n: int | None = None) -> dict[str, Any]:
    """Our sampling record in the names vLLM's ``SamplingParams`` and the OpenAI API share (``n``: default N; no
    ``seed`` when None). The one mapping: each engine renames, drops or adds only what its own API needs."""
    kwargs: dict[str, Any] = {"n": params.num_return_sequences if n is None else n,
                              "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                              "top_p": params.top_p, "top_k": params.top_k,
                              "repetition_penalty": params.repetition_penalty}
    if params.stop_words:
        kwargs["stop"] = list(params.stop_words)
    if seed is not None:
        kwargs["seed"] = seed
    return kwargs


class Engine(ABC):
    """A loaded generator. Built once per process (it holds the weights), then fed whole shards."""

    name: str = "engine"
    #: Set by the caller while a shard runs: called with (tokens generated, samples finished) since the last
    #: call. Engines that can tell call it as they decode, so a long shard shows signs of life.
    on_progress: Callable[[int, int], None] | None = None

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        """One Generation per prompt, in the order given; a prompt that cannot be sampled is ``skipped``."""

    def describe(self) -> dict[str, str]:
        """Engine and model versions, for the manifest."""
        return {"engine": self.name}

    def close(self) -> None:
        """Free the engine's resources; the default has none to free."""
