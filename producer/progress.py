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
