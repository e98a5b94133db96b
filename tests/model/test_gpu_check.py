"""``bench/gpu/check.sh --cpu``: the GPU check end to end on the CPU with tiny sizes, so the script cannot rot.

It runs the real script (the gpu-marked tests on the CPU, then every benchmark) and reads what it leaves behind;
no figure is judged here (speed targets live in bench/).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path, model_path):
    proc = subprocess.run(["bash", "bench/gpu/check.sh", "--cpu", "--carry", str(tmp_path / "no-carry"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = tmp_path / "out"
    log = (out / "gpu-tests.log").read_text() if (out / "gpu-tests.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-3000:]
    assert " passed" in log and "failed" not in log and "error" not in log.lower(), log[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert [g["model"] for g in report["generation"]] == ["smollm2", "llama-1b"]
    for g in report["generation"]:
        runs = g["variants"]
        assert set(runs) == {"ours", "generate", "cb"}
        # fixed lengths: the three did the same work, every sequence max_new_tokens long
        assert {r["tokens"] for r in runs.values()} == {runs["ours"]["sequences"] * g["max_new_tokens"]}
        assert g["ours_vs_best"] > 0
    assert [p["prm"].split()[0] for p in report["prm"]] == ["judge", "step", "seqcls"]
    assert all(p["speedup"] > 0 and p["max_abs_score_diff"] < 1e-3 for p in report["prm"])
    table = (out / "gpu-check.md").read_text()
    assert "| smollm2 |" in table and "| llama-1b |" in table and "PRM batching" in table
    assert "--- summary" in proc.stdout and "gpu tests:" in proc.stdout
