"""Records that flow between the stages: prompt shard -> generated shard -> output rows.

All are frozen pydantic models whose JSON is the wire and disk format.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
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


def fingerprint(prompts: Iterable["Prompt"]) -> str:
    """A shard's identity: a hash of its prompts' ids and positions (changed data changes it)."""
    return hashlib.md5("\n".join(f"{p.row}:{p.id}" for p in prompts).encode()).hexdigest()[:16]


def rows_note(prompts: Sequence["Prompt"], shown: int = 5) -> str:
    """" [rows: ...]" for a shard's error: where its prompts came from (the first few and a count)."""
    sources = [p.source for p in prompts[:shown]]
    more = f"; ... {len(prompts)} prompts in all" if len(prompts) > shown else ""
    return " [rows: " + "; ".join(sources) + more + "]"


def check_unchanged(before: dict[int, str | None], shards: Iterable["PromptShard"]) -> None:
    """Refuse data whose shards hold other prompts than when the run began (shards not in ``before`` pass)."""
    from schemas.errors import DataError

    for shard in shards:
        was = before.get(shard.index)
        if was and was != fingerprint(shard.prompts):
            raise DataError(f"the data changed since the run began: shard {shard.index}{rows_note(shard.prompts)} "
                            "holds other prompts than before; resume with the same data, or start over "
                            "(a new job, or --override_exist_file true)")


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
    orms: dict[str, float] | None = Field(None, description="With several ORMs: each one's score (``orm`` is "
                                          "their weighted sum).")
    verdict: str | None = Field(None, description="Why an ORM that runs tests (``code``) passed or failed the "
                                "candidate: 'pass', 'wrong: test 2 ...', 'timeout: test 1', 'memory: ...', ...")
    answer_read: bool | None = Field(None, description="With the math ORM: whether a final answer was found and "
                                     "parsed (a failing candidate that states a wrong answer is preferred as "
                                     "rejected_response over one that states none); not written to output rows.")

    @property
    def orm_pass(self) -> bool:
        """Passes the ORM: score > 0, or with several ORMs, > 0 for every one of them."""
        if self.orms:
            return all(v > 0 for v in self.orms.values())
        return self.orm is not None and self.orm > 0


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
            hidden = {"answer_read"} | {k for k in ("orms", "verdict") if getattr(self.scores, k) is None}
            line["scores"] = self.scores.model_dump(exclude=hidden)
        for key, value in self.extra.items():
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False) + "\n"


class PromptStats(_Record):
    """How hard one prompt is for the policy: one line of ``<output name>.stats.jsonl``."""

    id: str
    samples: int = Field(description="Candidates sampled (the dataset's answer not counted).")
    correct: int | None = Field(description="Samples that pass the ORM(s); None when the prompt was not scored.")
    pass_at_k: dict[int, float] = Field(default_factory=dict, description="Unbiased pass@k, for each k <= samples.")
    maj_at_n: float | None = Field(None, description="1 when the most frequent answer passes (a tie: the share "
                                   "of tied answers that pass).")
    distinct_answers: int = Field(0, description="Different final answers, compared as the ORM compares them.")
    stopped: str | None = Field(None, description="Adaptive sampling: why sampling of the prompt stopped.")
    failures: dict[str, int] = Field(default_factory=dict, description="With the code ORM: failing samples per "
                                     "verdict (the failing test, or the limit that stopped them).")

    def to_json_line(self) -> str:
        line = self.model_dump(mode="json", exclude={k for k in ("stopped", "failures") if not getattr(self, k)})
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
    fingerprint: str | None = Field(None, description="Hash of the shard's prompts (``fingerprint``): a resume "
                                    "over changed data is refused.")
    stats: list[PromptStats] = Field(default_factory=list, description="Per prompt, in order, with an ORM: the "
                                     "stats file's lines (the finaliser only concatenates them).")
    histograms: dict[str, dict[str, int]] = Field(default_factory=dict, description="Fixed-bin counts over the "
                                                  "shard's candidates (tokens, orm, prm), summed in the manifest.")
