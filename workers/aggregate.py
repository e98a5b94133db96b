"""The aggregate stage: a shard's candidates -> the rows written out.

Without a reward model every candidate is written (P x N rows), as in swift.
"""
from __future__ import annotations

from schemas import GeneratedShard, Message, OutputRow, ShardSummary


def output_rows(shard: GeneratedShard) -> list[OutputRow]:
    """One row per candidate: the prompt turns plus the candidate as the assistant's answer."""
    return [OutputRow(messages=[*g.prompt.messages, Message(role="assistant", content=c.text)],
                      id=g.prompt.id, extra=g.prompt.extra)
            for g in shard.generations for c in g.candidates]


def summarise(shard: GeneratedShard, rows: int, seconds: float) -> ShardSummary:
    gens = shard.generations
    return ShardSummary(job_id=shard.job_id, index=shard.index, prompts=len(gens), rows=rows,
                        candidates=sum(len(g.candidates) for g in gens),
                        tokens=sum(c.tokens for g in gens for c in g.candidates),
                        skipped={g.prompt.row: g.skipped for g in gens if g.skipped}, seconds=round(seconds, 3))
