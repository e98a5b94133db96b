"""The engine interface: a whole batch of prompts in, N candidates per prompt out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from schemas import Generation, Prompt, SamplingParams


class Engine(ABC):
    """A loaded generator. Built once per process (it holds the weights), then fed whole shards."""

    name: str = "engine"

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        """One Generation per prompt, in the order given; a prompt that cannot be sampled is ``skipped``."""

    def describe(self) -> dict[str, str]:
        """Engine and model versions, for the manifest."""
        return {"engine": self.name}

    def close(self) -> None:
        """Free the engine's resources; the default has none to free."""
