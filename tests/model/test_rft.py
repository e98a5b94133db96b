"""examples/rft/: the RFT loop end to end (sample, keep the ORM-correct rows, fine-tune with TRL, sample again),
in a tiny version: a handful of prompts and samples, one training step."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import OFFLINE, ROOT

pytest.importorskip("trl", reason="trl (the test extra) is not installed")
pytestmark = pytest.mark.model


def test_the_rft_loop_runs_end_to_end(tmp_path, model_path):
    work = tmp_path / "rft"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "rft" / "run.py"), "--workdir", str(work),
                           "--train_prompts", "3", "--eval_prompts", "2", "--num_return_sequences", "4",
                           "--eval_samples", "2", "--max_new_tokens", "6", "--keep_orm", "copy_contains",
                           "--max_steps", "1", "--batch_size", "2", "--train_seconds", "60"],
                          cwd=tmp_path, env={**os.environ, **OFFLINE}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == json.loads((work / "rft_summary.json").read_text())
    assert summary["train_samples"] == 12 and 0 <= summary["pass@1_before"] <= 1
    if summary["kept_rows"] == 0:  # the seed gave no copy at all: the loop says so instead of training
        assert "nothing to train on" in summary["note"]
        return
    assert summary["training"]["steps"] == 1 and summary["training"]["rows"] == summary["kept_rows"]
    assert (work / "model" / "config.json").is_file() and 0 <= summary["pass@1_after"] <= 1
    before = [json.loads(line) for line in (work / "eval_before.stats.jsonl").read_text().splitlines()]
    assert len(before) == 2 and all(s["samples"] == 2 for s in before)
