"""`producer report`: one self-contained HTML page, rendered by a real headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_producer, write_jsonl
from kits.fleet import run_cli

pytest.importorskip("matplotlib", reason="matplotlib (the test and report extras) is not installed")

SIMULATED = ["--model", "x", "--sampler_engine", "simulated", "--engine_kwargs", '{"shard_seconds": 0.01}',
             "--num_return_sequences", "8", "--max_new_tokens", "60", "--shard_size", "2"]
# passes samples 0-2 of the prompts whose id starts with 0-7: the others get no row
FORMAT_ORM = ["--orm_model", "format", "--orm_kwargs", json.dumps({"pattern": "answer [0-2] to [0-7]"})]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


def _run(tmp_path: Path, name: str, *extra: str) -> Path:
    data = write_jsonl(tmp_path / "q.jsonl", [{"query": f"question {i}"} for i in range(8)])
    proc = run_producer(str(data), *SIMULATED, *extra, "--output_file", name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path / "sample_output" / name


def _report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("report", *args, broker="", cwd=tmp_path)


def _render(page: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A screenshot of the page by headless Chromium, and the console lines it logged."""
    shot = tmp_path / f"{page.stem}.png"
    proc = subprocess.run([shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                           "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    return shot, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_report_is_one_self_contained_page_with_every_chart(tmp_path):
    out = _run(tmp_path, "scored.jsonl", *FORMAT_ORM)
    proc = _report(tmp_path, str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.with_name("scored.report.html")
    assert proc.stdout.strip() == f"wrote {page}"
    text = page.read_text()
    manifest = json.loads(out.with_name("scored.manifest.json").read_text())
    dropped = manifest["counts"]["dropped_prompts"]
    assert 0 < dropped < 8 and text.count(": no candidate passed") == dropped
    assert text.count('<img alt="') == 5 and text.count('src="data:image/png;base64,') == 5
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text) and "<script" not in text
    for needle in ("pass@4", "ORM score of every candidate", "pass@k over the dataset", "Candidate lengths",
                   "Samples and tokens per second", f"Prompts that got no row ({dropped})", "num_return_sequences"):
        assert needle in text
    custom = tmp_path / "elsewhere.html"
    assert _report(tmp_path, str(out), "--output", str(custom)).returncode == 0 and custom.is_file()


def test_report_without_an_orm_draws_lengths_and_throughput(tmp_path):
    out = _run(tmp_path, "plain.jsonl")
    assert _report(tmp_path, str(out)).returncode == 0
    text = out.with_name("plain.report.html").read_text()
    assert text.count("<img") == 2 and "No ORM in this run" in text


def test_report_of_a_missing_or_unfinished_output_is_one_line(tmp_path):
    proc = _report(tmp_path, str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"producer: error: report {tmp_path / 'nope.jsonl'}: no such output file (a fleet job id needs --broker "
        "or SAMPLEFLEET_BROKER_URL)")
    (tmp_path / "half.jsonl").write_text("")
    proc = _report(tmp_path, str(tmp_path / "half.jsonl"))
    assert proc.returncode == 2 and "no manifest at" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium installed (Debian: apt-get install "
                    "chromium; `make test` installs it where apt is available)")
def test_chromium_renders_the_report_without_console_errors(tmp_path):
    import numpy as np
    from PIL import Image

    out = _run(tmp_path, "scored.jsonl", *FORMAT_ORM)
    assert _report(tmp_path, str(out)).returncode == 0
    shot, console = _render(out.with_name("scored.report.html"), tmp_path)
    assert console == []
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int).reshape(-1, 3)
    ink = (pixels != 255).any(axis=1).mean()
    assert ink > 0.05, f"screenshot nearly blank ({ink:.1%} non-white)"
    bar_blue = np.array([0x44, 0x72, 0xC4])  # the charts' bars: the inline images were decoded and drawn
    assert (np.abs(pixels - bar_blue).max(axis=1) < 12).sum() > 1000
    # the console check sees errors when there are some
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body>x<script>missing_function();</script></body></html>")
    assert any("ReferenceError" in line for line in _render(bad, tmp_path)[1])


def test_report_by_fleet_job_id(tmp_path, redis_server, workers):
    data = write_jsonl(tmp_path / "q.jsonl", [{"query": f"question {i}"} for i in range(3)])
    workers.start()
    proc = run_cli("submit", str(data), *SIMULATED, *FORMAT_ORM, "--output_file", "fleet.jsonl", "--wait",
                   "--no_progress", broker=redis_server.url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = proc.stdout.split()[0]
    proc = run_cli("report", job, broker=redis_server.url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "sample_output" / "fleet.report.html").is_file()
