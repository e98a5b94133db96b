"""The progress bar of a run: prompts done, samples/s, tokens/s and ETA (tqdm on stderr)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from schemas import ShardSummary


class Progress:
    """Fed one ShardSummary per finished shard, and (``working``) what the engine did inside the shard that is
    running, so a long shard shows signs of life; rates count only work done by this run."""

    EVERY = 2.0  # seconds between two refreshes from inside a shard

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, unit="prompt", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.started = self.shown = time.perf_counter()
        self.samples = self.tokens = self.rows = self.resumed = 0
        self.live_tokens = self.live_samples = 0  # inside the running shard

    def _rates(self, extra: str = "") -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens = self.tokens + self.live_tokens
        self.bar.set_postfix_str(f"{(self.samples + self.live_samples) / elapsed:.1f} samples/s, "
                                 f"{tokens / elapsed:.0f} tok/s{extra}", refresh=False)

    def working(self, tokens: int, samples: int) -> None:
        """Tokens generated and samples finished in the running shard since the last call."""
        self.live_tokens += tokens
        self.live_samples += samples
        now = time.perf_counter()
        if now - self.shown >= self.EVERY:
            self.shown = now
            self._rates(f"; this shard: {self.live_samples} samples done, {self.live_tokens} tokens")
            self.bar.refresh()

    def __call__(self, summary: ShardSummary, resumed: bool) -> None:
        self.rows += summary.rows
        self.live_tokens = self.live_samples = 0
        if resumed:
            self.resumed += summary.prompts
        else:
            self.samples += summary.candidates
            self.tokens += summary.tokens
        self._rates()
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
