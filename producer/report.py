"""``producer report``: one self-contained HTML page about a finished run, for people to look at.

Read from what the run left beside its output (the manifest, and with an ORM the stats file): reward and
pass-rate histograms, the pass@k curve with its bootstrap intervals, candidate lengths, samples/s and
tokens/s over the run's shards, the prompts that got no row and why, and the run's options. Images are
PNGs drawn with matplotlib and inlined as data URIs; the page has no script and loads nothing.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError
from schemas.output_names import OutputNames

MAX_LISTED = 200  # prompts without a row listed on the page (the manifest has them all)


@dataclass
class Run:
    """A finished run as the report reads it."""

    output: Path
    manifest: dict[str, Any]
    stats: list[dict[str, Any]] = field(default_factory=list)


def load_run(output: str | Path) -> Run:
    """The run whose output file is ``output``; a clear error when its manifest is not beside it."""
    if str(output).startswith("s3://"):
        raise ConfigError(f"report {output}: reads a local output; copy the .jsonl, .manifest.json and "
                          ".stats.jsonl files from S3 first (aws s3 cp) and pass the local .jsonl")
    path = Path(output)
    names = OutputNames(path.name)
    manifest_path = path.with_name(names.manifest)
    if not manifest_path.is_file():
        raise ConfigError(f"report {output}: no manifest at {manifest_path} (is this a finished run's output?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"report {output}: {manifest_path} is not valid JSON ({exc})") from None
    stats_path = path.with_name(names.stats)
    stats = []
    if stats_path.is_file():
        for number, line in enumerate(stats_path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                stats.append(json.loads(line))
            except ValueError as exc:
                raise ConfigError(f"report {output}: {stats_path} line {number} is not JSON ({exc})") from None
    return Run(path, manifest, stats)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bars(plt: Any, counts: dict[str, int], title: str, xlabel: str) -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(counts), list(counts.values()), color="#4472c4")
    ax.set(title=title, xlabel=xlabel, ylabel="candidates")
    ax.tick_params(axis="x", labelrotation=45)
    return _png(fig)


def figures(run: Run) -> list[tuple[str, str]]:
    """(caption, PNG data URI) for each chart the run's data allows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("producer report draws with matplotlib: pip install 'samplefleet[report]' "
                          "(or matplotlib>=3.8)") from None
    hist = run.manifest.get("histograms", {})
    out: list[tuple[str, str]] = []
    try:
        for name, label in (("orm", "ORM score"), ("prm", "PRM score")):
            if hist.get(name):
                out.append((f"{label} of every candidate", _bars(plt, hist[name], f"{label} distribution", label)))
        scored = [s for s in run.stats if s.get("correct") is not None and s.get("samples")]
        if scored:
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.hist([s["correct"] / s["samples"] for s in scored], bins=10, range=(0, 1), color="#70ad47")
            ax.set(title="Pass rate per prompt", xlabel="share of samples passing the ORM", ylabel="prompts")
            out.append(("How hard each prompt is: the share of its samples that pass", _png(fig)))
        stats = run.manifest.get("stats", {})
        ks = sorted(int(k.split("@")[1]) for k in stats.get("mean", {}) if k.startswith("pass@"))
        if ks:
            means = [stats["mean"][f"pass@{k}"] for k in ks]
            lows = [m - stats["ci95"][f"pass@{k}"][0] for k, m in zip(ks, means)]
            highs = [stats["ci95"][f"pass@{k}"][1] - m for k, m in zip(ks, means)]
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.errorbar(ks, means, yerr=[lows, highs], marker="o", capsize=3)
            ax.set(title="pass@k (unbiased, 95% bootstrap CI)", xlabel="k", ylabel="pass@k", ylim=(0, 1.05))
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            out.append(("pass@k over the dataset", _png(fig)))
        if hist.get("tokens"):
            out.append(("Candidate lengths (bins up to a power of two)",
                        _bars(plt, hist["tokens"], "Candidate length", "tokens (up to)")))
        shards = [s for s in run.manifest.get("shards", []) if s.get("seconds")]
        if shards:
            fig, ax = plt.subplots(figsize=(5, 3))
            index = [s["index"] for s in shards]
            ax.plot(index, [s["candidates"] / s["seconds"] for s in shards], marker=".", label="samples/s")
            ax.set(title="Throughput per shard", xlabel="shard", ylabel="samples/s")
            twin = ax.twinx()
            twin.plot(index, [s["tokens"] / s["seconds"] for s in shards], marker=".", color="#ed7d31",
                      label="tokens/s")
            twin.set_ylabel("tokens/s")
            fig.legend(loc="upper right")
            out.append(("Samples and tokens per second over the run's shards", _png(fig)))
    finally:
        plt.close("all")
    return out


def _table(rows: list[tuple[Any, Any]], head: tuple[str, str]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td></tr>" for a, b in rows)
    return f"<table><tr><th>{html.escape(head[0])}</th><th>{html.escape(head[1])}</th></tr>{body}</table>"


def _summary(manifest: dict[str, Any]) -> str:
    stats = manifest.get("stats")
    if not stats:
        return "<p>No ORM in this run: no pass rates (run with --orm_model for the statistics).</p>"
    rows = [(name, f"{mean:.4f}  [{stats['ci95'][name][0]:.4f}, {stats['ci95'][name][1]:.4f}]")
            for name, mean in stats["mean"].items()]
    return (f"<p>{stats['scored_prompts']} of {stats['prompts']} prompts scored; 95% intervals from "
            f"{stats['bootstrap_resamples']} bootstrap resamples of the prompts.</p>"
            + _table(rows, ("metric", "mean [95% CI]")))


def _failures(stats: list[dict[str, Any]], shown: int = 20) -> str:
    """The code ORM's verdicts over the run: failing samples per limit or kind, then the commonest reasons."""
    reasons: Counter[str] = Counter()
    for line in stats:
        reasons.update(line.get("failures") or {})
    if not reasons:
        return ""
    kinds: Counter[str] = Counter()
    for why, count in reasons.items():
        kinds[why.split(":")[0]] += count
    return ("<h2>Why candidates failed the tests</h2>" + _table(kinds.most_common(), ("verdict", "samples"))
            + _table(reasons.most_common(shown), ("failing test or limit", "samples")))


def render(run: Run) -> str:
    """The whole page as one HTML string."""
    m = run.manifest
    left_out = [(row, f"dropped: {why}") for row, why in m.get("dropped_prompts", {}).items()]
    left_out += [(row, f"skipped: {why}") for row, why in m.get("skipped_prompts", {}).items()]
    left_out += [(shard, f"shard failed: {why}") for shard, why in m.get("failed_shards", {}).items()]
    listed = _table(left_out[:MAX_LISTED], ("prompt row / shard", "why it got no row"))
    if len(left_out) > MAX_LISTED:
        listed += f"<p>... and {len(left_out) - MAX_LISTED} more (see the manifest).</p>"
    images = "".join(f'<figure><img alt="{html.escape(c)}" src="{uri}"><figcaption>{html.escape(c)}</figcaption>'
                     f"</figure>" for c, uri in figures(run))
    options = _table(sorted((k, json.dumps(v)) for k, v in m.get("spec", {}).items()), ("option", "value"))
    counts = _table(list(m.get("counts", {}).items()) + list(m.get("timings", {}).items()), ("count", "value"))
    title = html.escape(f"samplefleet run {m.get('job_id', '')}: {run.output.name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:2px 8px;text-align:left;font-size:13px}} figure{{display:inline-block;margin:1em}}
figcaption{{font-size:13px;color:#555}}</style></head>
<body><h1>{title}</h1>
<p>Status: <b>{html.escape(str(m.get("status", "?")))}</b>; output {html.escape(str(run.output))}</p>
<h2>Statistics</h2>{_summary(m)}{_failures(run.stats)}
<h2>Charts</h2>{images or "<p>No data to draw.</p>"}
<h2>Counts and timings</h2>{counts}
<h2>Prompts that got no row ({len(left_out)})</h2>{listed if left_out else "<p>None.</p>"}
<h2>Options</h2>{options}
</body></html>
"""


def write_report(output: str | Path, report: str | Path | None = None) -> Path:
    """Write the report of the run whose output is ``output``; default ``<output name>.report.html`` beside it."""
    run = load_run(output)
    target = Path(report) if report else run.output.with_name(OutputNames(run.output.name).report)
    target.write_text(render(run), encoding="utf-8")
    return target
