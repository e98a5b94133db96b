"""The progress bar of a run: prompts done, samples/s, tokens/s and ETA (tqdm on stderr)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from schemas import ShardSummary


class Progress:
    """Fed one ShardSummary per finished shard; rates count only work done by this run."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, unit="prompt", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.started = time.perf_counter()
        self.samples = self.tokens = self.rows = self.resumed = 0

    def __call__(self, summary: ShardSummary, resumed: bool) -> None:
        self.rows += summary.rows
        if resumed:
            self.resumed += summary.prompts
        else:
            self.samples += summary.candidates
            self.tokens += summary.tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.samples / elapsed:.1f} samples/s, {self.tokens / elapsed:.0f} tok/s",
                                 refresh=False)
        self.bar.update(summary.prompts)

    def close(self) -> None:
        self.bar.close()


class StageBars:
    """One bar per fleet stage (shards done), fed from `producer status` polls."""

    def __init__(self, status, *, enabled: bool = True) -> None:
        stages = [s for s in ("generate", "score", "aggregate") if s != "score" or status.scored]
        self.bars = {stage: tqdm(total=status.shards, desc=f"{stage:>9}", unit="shard", disable=not enabled,
                                 file=sys.stderr, dynamic_ncols=True, position=k)
                     for k, stage in enumerate(stages)}
        self.update(status)

    def update(self, status) -> None:
        rate = status.counters.get("candidates", 0) / max(status.seconds, 1e-9)
        for stage, bar in self.bars.items():
            bar.n = status.stages[stage] + (len(status.failed) if stage == "aggregate" else 0)
            if stage == "aggregate":
                bar.set_postfix_str(f"{rate:.1f} samples/s, {len(status.failed)} failed", refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
