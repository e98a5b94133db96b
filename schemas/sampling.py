"""One sampling-parameters record for every engine.

Each engine adapter translates this into its own object (transformers logits
processors, vLLM ``SamplingParams``, an OpenAI request); nothing else does.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingParams(BaseModel):
    """How candidates are drawn; the defaults are what `swift sample` ends up using."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_return_sequences: int = Field(64, ge=1, description="Candidates sampled per prompt (N).")
    max_new_tokens: int = Field(2048, ge=1, description="Most tokens generated per candidate.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 means greedy.")
    top_k: int = Field(50, ge=0, description="Keep the k most likely tokens; 0 turns it off. 50 is what "
                       "swift's transformers engine applies when --top_k is not given.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1.0 turns it off.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="CTRL-style penalty on repeated tokens; 1.0 is off.")
    stop_words: list[str] = Field(default_factory=list, description="Strings that end a candidate "
                                  "(not included in its text).")
    seed: int = Field(42, description="Sampling seed; each shard derives its own from it, so a run "
                      "(or a resumed run, or a fleet run) gives the same candidates.")

    @field_validator("stop_words")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("an empty string cannot be a stop word")
        return v

    def shard_seed(self, shard_index: int) -> int:
        """Seed for one shard: independent of which worker or run samples it."""
        return (self.seed * 1_000_003 + shard_index) % (2**63)
