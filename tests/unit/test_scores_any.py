"""Any finite score ranks as it is: logits, lengths, negative penalties, ints and numpy scalars, through every
score path (validation, ranking, n-best, thresholds, weights, step minimum, histograms, manifest, stats, report,
exports, adaptive stops, resume). NaN, inf or a non-number is one clear error naming the plugin, the prompt and
the value.

Property-based (hypothesis) over score values and shapes, end to end through the reference's stage 2
(``--sampler_engine no --cache_files stage1.jsonl --prm_model custom --external_plugins plugin.py``), with
plugin files written here in swift's documented styles.
"""
from __future__ import annotations

import json
import math
import tempfile
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import read_jsonl, write_jsonl
from producer.cli import main
from schemas import Candidate, GeneratedShard, Generation, JobSpec, Message, Prompt, Scores, ShardSummary
from schemas.errors import PermanentError
from workers.aggregate import select
from workers.score import Scorer
from workers.scoring.base import validate_scores
from workers.stats import SCORE_BINS, TOKEN_BINS, merge_histograms

FINITE = st.floats(allow_nan=False, allow_infinity=False)
BOUNDED = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
SHAPES = ("float", "int", "numpy", "steps", "chat", "chat_dict", "text")

# swift's documented CustomPRM: `infer` returning, per request, a number in one of several shapes; the candidate
# text says which shape and value ("cand 3|steps|-12.5").
SHAPED_PRM = '''
import numpy as np
from swift.rewards import PRM, prms


class _Message:
    def __init__(self, content):
        self.content = content


class _Choice:
    def __init__(self, content):
        self.message = _Message(content)


class _Completion:
    def __init__(self, content):
        self.choices = [_Choice(content)]


def shaped(text):
    _, shape, value = text.split("|")
    x = float(value)
    return {"float": x, "int": int(x) if x == int(x) else x, "numpy": np.float64(x), "steps": [x + 1.0, x],
            "chat": _Completion(repr(x)), "chat_dict": {"choices": [{"message": {"content": repr(x)}}]},
            "text": repr(x)}[shape]


class CustomPRM(PRM):
    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)

    def infer(self, infer_requests, ground_truths, **kwargs):
        return [shaped(r["messages"][-1]["content"]) for r in infer_requests]


prms["custom"] = CustomPRM
'''

# the same style as the seed's example: `swift.plugin`, a module-level dict, lengths as scores (unbounded),
# negative for candidates that say "neg"; raises on a prompt while $FAIL_ON names it (to stop a run half-way)
LENGTH_PRM = '''
import os
from swift.plugin import PRM


class CustomPRM(PRM):
    def infer(self, infer_requests, ground_truths, **kwargs):
        out = []
        for r in infer_requests:
            question, text = r["messages"][0]["content"], r["messages"][-1]["content"]
            if os.environ.get("FAIL_ON") and os.environ["FAIL_ON"] == question:
                raise RuntimeError("judge unavailable")
            out.append(len(text) * 1000.5 * (-1 if "neg" in text else 1))
        return out


prms = {"custom": CustomPRM}
'''

UNBOUNDED_ORM = '''
from swift.rewards import ORM, orms


class Spread(ORM):
    """An unbounded ORM: a candidate's text hashed into [-1e6, 1e6]; > 0 passes."""
    needs_ground_truth = False

    def __call__(self, completions, **kwargs):
        return [(sum(map(ord, c)) * 7919 % 2000001) - 1e6 for c in completions]


orms["spread"] = Spread
'''


def _plugin(folder: Path, name: str, text: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- validation -----------------------------------------------------------------------------------------------

NUMBERS = st.one_of(FINITE, st.integers(min_value=-(10**300), max_value=10**300), st.booleans(),
                    FINITE.map(np.float64), st.integers(-2**62, 2**62).map(np.int64),
                    st.floats(width=32, allow_nan=False, allow_infinity=False).map(np.float32))


@given(st.lists(st.one_of(NUMBERS, st.lists(NUMBERS, min_size=1, max_size=4)), min_size=1, max_size=8))
def test_any_finite_number_is_taken_as_it_is(scores):
    out = validate_scores("p", scores, len(scores))
    for given_score, got in zip(scores, out):
        if isinstance(given_score, list):
            assert got == [float(v) for v in given_score] and all(type(v) is float for v in got)
        else:
            assert got == float(given_score) and type(got) is float


@pytest.mark.parametrize("bad, says", [("math.nan", "is NaN"), ("math.inf", "is not finite: inf"),
                                       ("-math.inf", "is not finite: -inf"), ("np.float64('nan')", "is NaN"),
                                       ("'high'", "is not a number: 'high'"), ("None", "is not a number: None"),
                                       ("10**400", "is beyond the float range"), ("[1.0, math.inf]", "not finite")])
def test_nan_inf_or_a_non_number_names_the_plugin_the_prompt_and_the_value(tmp_path, bad, says):
    path = _plugin(tmp_path, "bad", f"""
        import math
        import numpy as np
        from swift.rewards import ORM, orms

        class Bad(ORM):
            needs_ground_truth = False

            def __call__(self, completions, **kwargs):
                return [0.5] + [{bad}] * (len(completions) - 1)

        orms["bad"] = Bad
        """)
    spec = JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                   "orm_model": "bad", "external_plugins": [path]})
    prompt = Prompt(id="id7", row=0, source="d.jsonl line 8", messages=[Message(role="user", content="q")])
    shard = GeneratedShard(job_id="j", index=0, generations=[Generation(prompt=prompt, candidates=[
        Candidate(text=t, tokens=1, finish_reason="stop") for t in ("a", "b")])])
    with pytest.raises(PermanentError) as err:
        Scorer(spec).score(shard)
    message = str(err.value)
    assert message.startswith("reward model 'bad': score of request 1 ") and says in message
    assert message.endswith("(prompt 'id7', d.jsonl line 8)")


# --- histograms -----------------------------------------------------------------------------------------------

@given(FINITE, FINITE)
def test_every_finite_score_has_one_bin_in_value_order(a, b):
    low, high = sorted((a, b))
    index = {label: i for i, label in enumerate(SCORE_BINS.labels)}
    assert index[SCORE_BINS.label(low)] <= index[SCORE_BINS.label(high)]


@pytest.mark.parametrize("value, label", [(0.0, "[0.0, 0.1)"), (0.3, "[0.3, 0.4)"), (1.0, "[0.9, 1.0]"),
                                          (-0.1, "[-0.1, 0.0)"), (-1.0, "[-1.0, -0.9)"), (1.5, "(1, 10]"),
                                          (10.0, "(1, 10]"), (-10.0, "[-10, -1)"), (-10.5, "[-100, -10)"),
                                          (1e6, "(100000, 1e+06]"), (1.7e308, "> 1e+308"), (-1.7e308, "< -1e+308")])
def test_score_bins_are_the_documented_scheme(value, label):
    assert SCORE_BINS.label(value) == label


def test_merging_never_parses_a_label_back():
    """The bug: '>1' from a plugin's lengths crashed the manifest; an older done-marker's labels still merge."""
    def summary(hist):
        return ShardSummary(job_id="j", index=0, prompts=1, rows=0, candidates=1, tokens=1, seconds=0.0,
                            fingerprint="f", histograms=hist)

    merged = merge_histograms([summary({"prm": {">1": 2, "<0": 1, "0.5": 1}, "tokens": {"8": 1}}),
                               summary({"prm": SCORE_BINS.counts([3.0, -4.0, 0.55, 1e9]),
                                        "tokens": TOKEN_BINS.counts([5, 900])})])
    assert list(merged["prm"]) == ["[-10, -1)", "[0.5, 0.6)", "(1, 10]", "(1e+08, 1e+09]", "0.5", "<0", ">1"]
    assert list(merged["tokens"]) == ["8", "1024"] and merged["tokens"]["8"] == 2


# --- ranking --------------------------------------------------------------------------------------------------

def _gen(orm: list[float] | None, prm: list[float] | None) -> Generation:
    n = len(orm if orm is not None else prm)
    prompt = Prompt(id="p", row=0, source="t", messages=[Message(role="user", content="q")], ground_truth="a")
    return Generation(prompt=prompt, candidates=[
        Candidate(text=f"c{i}", tokens=1, finish_reason="stop",
                  scores=Scores(orm=None if orm is None else orm[i], prm=None if prm is None else prm[i]))
        for i in range(n)])


def _spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                   "sampling": {"num_return_sequences": 8}, **kw})


@settings(max_examples=300)
@given(st.lists(FINITE, min_size=1, max_size=8), st.integers(1, 8), st.sampled_from([0.0, -1e6, 5.0]))
def test_a_prm_alone_ranks_exactly_by_its_scores(prm, n_best, threshold):
    sel = select(_spec(prm_model="p", n_best_to_keep=n_best, prm_threshold=threshold), _gen(None, prm))
    by_hand = sorted(range(len(prm)), key=lambda i: -prm[i])
    assert sel.order == by_hand
    assert sel.chosen == [i for i in by_hand if prm[i] > threshold and i != by_hand[-1]][:n_best]


@settings(max_examples=300)
@given(st.lists(FINITE, min_size=1, max_size=8))
def test_an_orm_alone_ranks_exactly_by_its_scores(orm):
    sel = select(_spec(orm_model="o", n_best_to_keep=8), _gen(orm, None))
    assert sel.order == sorted(range(len(orm)), key=lambda i: -orm[i])
    assert [sel.passed[i] for i in range(len(orm))] == [v > 0 for v in orm]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), FINITE), min_size=1, max_size=8))
def test_a_passing_orm_ranks_above_any_prm_score(pairs):
    orm, prm = [o for o, _ in pairs], [p for _, p in pairs]
    sel = select(_spec(orm_model="o", prm_model="p", n_best_to_keep=8), _gen(orm, prm))
    assert sel.order == sorted(range(len(pairs)), key=lambda i: (-orm[i], -prm[i]))


@given(st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=6),
       st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=2, max_size=2))
def test_weighted_orms_stay_finite_and_between_their_parts(pairs, weights):
    from workers.score import _weighted

    spec = _spec(orm_model="a,b", orm_weights=weights)
    mixed = _weighted(spec, {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}, len(pairs))
    for (a, b), m in zip(pairs, mixed):
        assert math.isfinite(m) and min(a, b) - 1e-9 * abs(min(a, b)) <= m <= max(a, b) + 1e-9 * abs(max(a, b))


# --- end to end: the reference's stage 2 ----------------------------------------------------------------------

def _stage2(folder: Path, plugin: str, groups: list[list[str]], *extra: str) -> tuple[int, Path]:
    """Write the dataset and the stage-1 cache (one prompt per group of candidate texts) and run stage 2."""
    data = write_jsonl(folder / "data.jsonl", [{"query": f"q{i}", "response": "r"} for i in range(len(groups))])
    write_jsonl(folder / "stage1.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                        {"role": "assistant", "content": text}]}
                                          for i, texts in enumerate(groups) for text in texts])
    n = max(len(g) for g in groups)
    code = main(["submit", "--no_progress", "--sampler_engine", "no", "--cache_files", str(folder / "stage1.jsonl"),
                 "--dataset", str(data), "--dataset_shuffle", "false", "--prm_model", "custom", "--external_plugins",
                 plugin, "--num_return_sequences", str(n), "--write_scores", "true", "--output_dir",
                 str(folder / "out"), "--output_file", "o.jsonl", *extra])
    return code, folder / "out"


def _by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        out[row["messages"][0]["content"]].append(row)
    return dict(out)


def _by_hand(groups: list[list[str]], score, n_best: int, threshold: float = 0.0) -> dict[str, list[tuple]]:
    """The swift-format rows sorted by hand: per prompt, (chosen text, rejected text) of the n best."""
    want = {}
    for i, texts in enumerate(groups):
        order = sorted(range(len(texts)), key=lambda j: -score(texts[j]))
        chosen = [j for j in order if score(texts[j]) > threshold and j != order[-1]][:n_best]
        if chosen:
            want[f"q{i}"] = [(texts[j], texts[order[-1]]) for j in chosen]
    return want


CANDIDATE_GROUPS = st.lists(st.lists(st.tuples(st.sampled_from(SHAPES), BOUNDED), min_size=2, max_size=5),
                            min_size=1, max_size=3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CANDIDATE_GROUPS, st.integers(1, 4))
def test_stage_two_with_any_scores_and_shapes_keeps_the_n_best_sorted_by_hand(tmp_path_factory, drawn, n_best):
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    plugin = _plugin(tmp_path_factory.getbasetemp(), "shaped_prm", SHAPED_PRM)  # same file: imported once
    groups = [[f"cand {j}|{shape}|{float(int(v)) if shape == 'int' else v!r}" for j, (shape, v) in enumerate(g)]
              for g in drawn]
    n_best = min(n_best, min(len(g) for g in groups))
    code, out = _stage2(folder, plugin, groups, "--n_best_to_keep", str(n_best))
    assert code == 0
    value = lambda text: float(text.split("|")[2])  # noqa: E731
    rows = _by_prompt(read_jsonl(out / "o.jsonl"))
    assert {q: [(r["messages"][-1]["content"], r["rejected_response"]) for r in rs] for q, rs in rows.items()} == \
        _by_hand(groups, value, n_best)
    for rs in rows.values():
        for r in rs:
            assert r["scores"]["prm"] == value(r["messages"][-1]["content"])  # the raw score, as it was
    manifest = json.loads((out / "o.manifest.json").read_text())
    prm_hist = manifest["histograms"]["prm"]
    assert sum(prm_hist.values()) == sum(map(len, groups)) and set(prm_hist) <= set(SCORE_BINS.labels)
    assert list(prm_hist) == [lb for lb in SCORE_BINS.labels if lb in prm_hist]  # in the scheme's order


def test_the_seeds_custom_prm_returning_lengths_in_the_stage_two_command_and_its_resume(tmp_path, monkeypatch):
    plugin = _plugin(tmp_path, "plugin", LENGTH_PRM)
    groups = [[f"answer {'x' * (i * 7 % 23)} {i}" + (" neg" if i % 3 == 0 else "") for i in range(k, k + 5)]
              for k in range(0, 40, 5)]
    fresh_dir, resumed_dir = tmp_path / "fresh", tmp_path / "resumed"
    fresh_dir.mkdir()
    resumed_dir.mkdir()
    score = lambda text: len(text) * 1000.5 * (-1 if "neg" in text else 1)  # noqa: E731
    assert max(abs(score(t)) for g in groups for t in g) <= 1e6
    code, fresh = _stage2(fresh_dir, plugin, groups, "--n_best_to_keep", "3", "--shard_size", "2")
    assert code == 0
    rows = _by_prompt(read_jsonl(fresh / "o.jsonl"))
    assert {q: [(r["messages"][-1]["content"], r["rejected_response"]) for r in rs] for q, rs in rows.items()} == \
        _by_hand(groups, score, 3)
    monkeypatch.setenv("FAIL_ON", "q5")  # the shard holding q4 and q5 fails: a run stopped half-way
    code, partial = _stage2(resumed_dir, plugin, groups, "--n_best_to_keep", "3", "--shard_size", "2")
    assert code == 1 and (partial / ".o.jsonl.parts").is_dir() and not (partial / "o.jsonl").exists()
    monkeypatch.delenv("FAIL_ON")
    code, resumed = _stage2(resumed_dir, plugin, groups, "--n_best_to_keep", "3", "--shard_size", "2",
                            "--resume", "true")
    assert code == 0
    assert (resumed / "o.jsonl").read_text() == (fresh / "o.jsonl").read_text()
    fresh_m, resumed_m = (json.loads((d / "o.manifest.json").read_text()) for d in (fresh, resumed))
    assert resumed_m["histograms"] == fresh_m["histograms"]
    assert {"[-100000, -10000)", "(10000, 100000]"} <= set(fresh_m["histograms"]["prm"])
    from producer.report import write_report

    page = write_report(resumed / "o.jsonl").read_text()  # the report draws the unbounded histogram
    assert 'alt="PRM score of every candidate" src="data:image/png;base64,' in page


def test_exports_and_thresholds_take_unbounded_prm_scores(tmp_path):
    plugin = _plugin(tmp_path, "plugin", LENGTH_PRM)
    groups = [["neg a", "bb", "ccc neg", "dddddd"], ["e", "ffff"]]
    code, out = _stage2(tmp_path, plugin, groups, "--output_format", "trl_preference", "--pair_margin", "1500",
                        "--prm_threshold", "-3000")
    assert code == 0
    lines = read_jsonl(out / "o.jsonl")
    score = lambda text: len(text) * 1000.5 * (-1 if "neg" in text else 1)  # noqa: E731
    assert lines and all(score(ln["chosen"][0]["content"]) - score(ln["rejected"][0]["content"]) >= 1500
                         for ln in lines)
    assert {ln["rejected"][0]["content"] for ln in lines} == {"ccc neg", "e"}


def test_adaptive_sampling_stops_on_an_unbounded_orm(tmp_path):
    plugin = _plugin(tmp_path, "spread", UNBOUNDED_ORM)
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": f"question {i}"} for i in range(6)])
    code = main(["submit", "--no_progress", str(data), "--model", "sim", "--sampler_engine", "simulated",
                 "--engine_kwargs", '{"shard_seconds": 0}', "--orm_model", "spread", "--external_plugins", plugin,
                 "--num_return_sequences", "8", "--target_correct", "2", "--wave_size", "2", "--write_scores", "true",
                 "--output_dir", str(tmp_path / "out"), "--output_file", "o.jsonl"])
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "o.manifest.json").read_text())
    stats = read_jsonl(tmp_path / "out" / "o.stats.jsonl")
    assert manifest["adaptive"]["samples"] == sum(s["samples"] for s in stats)
    for line in stats:
        if line["stopped"] == "target reached":
            assert line["correct"] >= 2 and line["samples"] > line["correct"]
        else:
            assert line["samples"] == 8 or line["stopped"].startswith("settled")
    assert sum(manifest["histograms"]["orm"].values()) == manifest["adaptive"]["samples"]
