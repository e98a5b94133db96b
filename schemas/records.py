"""Records that flow between the stages: prompt shard -> generated shard -> output rows.

All are frozen pydantic models whose JSON is the wire and disk format.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.job import SCHEMA_VERSION

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(_Record):
    role: Role
    content: str


class Prompt(_Record):
    """One dataset row, normalised: the turns to answer, its reference answer, and the row's other columns."""

    id: str = Field(description="md5 of the source row's JSON (swift's id).")
    row: int = Field(description="Position in the job's prompt stream, 0-based; unique within a job.")
    source: str = Field(description="Where it came from, e.g. 'data.jsonl line 12', for error messages.")
    messages: list[Message] = Field(min_length=1)
    ground_truth: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="Other columns, copied to the output row.")


class PromptShard(_Record):
    """The unit of work, retry and resume."""

    version: int = SCHEMA_VERSION
    job_id: str
    index: int = Field(ge=0)
    prompts: list[Prompt] = Field(min_length=1)


class Scores(_Record):
    """A candidate's reward-model scores, raw (before the per-prompt normalisation used for ranking)."""

    orm: float | None = None
    prm: float | None = Field(None, description="The PRM score; for a step PRM the minimum of the steps.")
    prm_steps: list[float] | None = None


class Candidate(_Record):
    text: str
    tokens: int = Field(ge=0, description="Generated tokens, up to and including the stop token.")
    finish_reason: FinishReason
    reference: bool = Field(False, description="The dataset's own answer, ranked only with --include_ground_truth.")
    scores: Scores | None = Field(None, description="Set by the score stage.")


class Generation(_Record):
    """A prompt's candidates, or why it got none."""

    prompt: Prompt
    candidates: list[Candidate] = Field(default_factory=list)
    skipped: str | None = Field(None, description="Reason the prompt was not sampled (e.g. longer than the context).")


class GeneratedShard(_Record):
    version: int = SCHEMA_VERSION
    job_id: str
    index: int = Field(ge=0)
    generations: list[Generation]
    seconds: float = Field(0.0, description="Time spent on the shard so far (generation, then scoring).")


class OutputRow(_Record):
    """One jsonl line: the prompt turns plus a candidate as the last assistant turn."""

    messages: list[Message]
    id: str
    rejected_response: str | None = None
    scores: Scores | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_json_line(self) -> str:
        """swift's layout: messages, rejected_response (only when scored), id, then the row's other columns."""
        line: dict[str, Any] = {"messages": [m.model_dump() for m in self.messages]}
        if self.rejected_response is not None:
            line["rejected_response"] = self.rejected_response
        line["id"] = self.id
        if self.scores is not None:
            line["scores"] = self.scores.model_dump()
        for key, value in self.extra.items():
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False) + "\n"


class ShardSummary(_Record):
    """What one shard produced; the done-marker of a shard and the input of the manifest."""

    version: int = SCHEMA_VERSION
    job_id: str
    index: int
    prompts: int
    rows: int
    candidates: int
    tokens: int
    skipped: dict[int, str] = Field(default_factory=dict, description="Prompt row -> reason it got no candidates.")
    dropped: dict[int, str] = Field(default_factory=dict, description="Prompt row -> reason the selection "
                                    "wrote no row for it (no passing candidate, too easy, unscorable, ...).")
    short: dict[int, int] = Field(default_factory=dict, description="Prompt row -> candidates it had, when "
                                  "fewer than N (e.g. scored from a cache file).")
    seconds: float
