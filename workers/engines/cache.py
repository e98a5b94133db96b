"""The `no` engine: candidates come from earlier output (``--cache_files``), nothing is generated.

This is stage 2 of swift's two-stage memory control: sample without reward models first, then score
the saved candidates with only the reward models in memory. A cache line is one candidate in chat
layout, ``{"messages": [...prompt turns, {"role": "assistant", "content": CANDIDATE}], "id": ...}``,
as written by samplefleet and by ``swift sample``. A prompt is matched by ``id`` first (both tools compute it
the same way, see ``producer.rows.row_id``), then by its non-system turns (files with other or no ids).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from schemas import Candidate, Generation, JobSpec, Prompt, SamplingParams
from schemas.errors import DataError
from schemas.jsonl import read_jsonl
from workers.engines.base import Engine

log = logging.getLogger(__name__)

TurnsKey = tuple[tuple[str, str], ...]


def _turns_key(messages: Sequence[dict]) -> TurnsKey:
    return tuple((m["role"], m["content"]) for m in messages if m["role"] != "system")


class CacheEngine(Engine):
    """Serves each prompt the candidates the cache files hold for it."""

    name = "no"

    def __init__(self, cache_files: Sequence[str]) -> None:
        self.by_id: dict[str, list[str]] = defaultdict(list)
        self.by_turns: dict[TurnsKey, list[str]] = defaultdict(list)
        for file in cache_files:
            self._load(Path(file).expanduser())

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "CacheEngine":
        return cls(spec.cache_files)

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"--cache_files {path}: no such file")
        for where, row in read_jsonl(path, "--cache_files "):
            if isinstance(row, DataError):
                raise row
            messages = row.get("messages") if isinstance(row, dict) else None
            if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
                    and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str)):
                raise DataError(f"{where}: no candidate; expected messages ending with an assistant turn")
            if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                       for m in messages):
                raise DataError(f"{where}: every message needs a role and string content")
            text = messages[-1]["content"]
            if isinstance(row.get("id"), str):
                self.by_id[row["id"]].append(text)
            self.by_turns[_turns_key(messages[:-1])].append(text)
        log.info("cache %s: %d prompts by id, %d by turns", path, len(self.by_id), len(self.by_turns))

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        out = []
        for prompt in prompts:
            texts = self.by_id.get(prompt.id) or self.by_turns.get(_turns_key([m.model_dump() for m in prompt.messages]))
            if not texts:
                out.append(Generation(prompt=prompt, skipped="no candidates for this prompt in --cache_files"))
                continue
            out.append(Generation(prompt=prompt, candidates=[Candidate(text=t, tokens=0, finish_reason="stop")
                                                             for t in texts]))
        return out
