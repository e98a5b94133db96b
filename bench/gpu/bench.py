"""The GPU benchmarks of ``bench/gpu/check.sh``: our engine vs ``generate`` vs ``generate_batch``, PRM batching.

No weights travel to the GPU machine, so every model is built here from a config with random weights (seeded),
saved to a temporary folder with the SmolLM2 tokenizer and loaded the way a worker loads it:
  smollm2   SmolLM2-135M's own config (from ``--tokenizer``, the demo model folder or its carried copy);
  llama-1b  ``bench/gpu/llama-1b.json``, a Llama-3.2-1B-shaped config on SmolLM2's vocabulary (1.07 B parameters).
Generation: the (a)/(b)/(c) comparison of ``bench/continuous_batching.py`` on P prompts (bench20's questions,
numbered) x N, fixed lengths (``ignore_eos``: random weights rarely say EOS, and equal work makes tok/s a fair
figure), per model and batch size. PRMs: the judge (the smollm2 causal LM), the step PRM (a token-classification
head) and the sequence-classification PRM on K distinct multi-step candidates, one at a time vs batched.
Targets (read here, never asserted): ours >= 0.95x the better of generate and cb; PRM batching >= 3x.

PRMs run first (short, with a target of their own), then generation, largest batch first. Writes ``gpu-check.json``
and ``gpu-check.md`` to ``--out`` after every measurement (a run cut short keeps what it measured), starts no new
measurement after ``--budget-s`` seconds, and prints a summary.
``--cpu`` shrinks every size (and the models: 2 layers, width 64) so the same code runs here in seconds.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/: continuous_batching
sys.path.insert(0, str(HERE.parents[1]))  # the repository: schemas, workers

from continuous_batching import Case, measure  # noqa: E402

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}
GPU = {"prompts": 64, "n": 16, "max_new": 256, "batch_sizes": "1024,256", "rounds": 2, "dtype": "bfloat16",
       "prm_candidates": 256, "prm_batch": 32, "prm_steps": 8, "budget_s": 300.0}
CPU = {"prompts": 3, "n": 2, "max_new": 6, "batch_sizes": "4", "rounds": 1, "dtype": "float32",
       "prm_candidates": 6, "prm_batch": 3, "prm_steps": 3, "budget_s": 120.0}
STEP_TOKEN = "<extra_0>"


# --------------------------------------------------------------------------------------------- models
def model_config(name: str, tokenizer_dir: Path, tiny: bool) -> dict[str, Any]:
    source = tokenizer_dir / "config.json" if name == "smollm2" else HERE / f"{name}.json"
    if not source.is_file():
        raise SystemExit(f"--models {name}: no config at {source}")
    config = json.loads(source.read_text(encoding="utf-8"))
    return config | (TINY if tiny else {})


def build(name: str, head: str, config: dict[str, Any], tokenizer_dir: Path, root: Path, device: str,
          dtype: str) -> str:
    """A random-weight model (``head``: causal, seqcls or tokcls) saved with the tokenizer; returns its folder."""
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)

    folder = root / f"{name}-{head}"
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    extra: dict[str, Any] = {}
    if head == "tokcls":
        tok.add_tokens([STEP_TOKEN], special_tokens=True)
        extra = {"num_labels": 2, "architectures": ["LlamaForTokenClassification"]}
    elif head == "seqcls":
        extra = {"num_labels": 1, "architectures": ["LlamaForSequenceClassification"]}
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "dtype")}
    cfg = AutoConfig.for_model(config.get("model_type", "llama"), **(kwargs | extra | {"vocab_size": len(tok)}))
    loader = {"causal": AutoModelForCausalLM, "seqcls": AutoModelForSequenceClassification,
              "tokcls": AutoModelForTokenClassification}[head]
    torch.manual_seed(0)
    with torch.device(device):
        model = loader.from_config(cfg)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    return str(folder)


def prompts(count: int) -> list[Any]:
    """bench20's questions, numbered so that no two prompts are the same text."""
    from schemas import Message, Prompt

    rows = [json.loads(x) for x in (HERE.parent / "bench20.jsonl").read_text(encoding="utf-8").splitlines() if x]
    return [Prompt(id=f"q{i}", row=i, source="bench20",
                   messages=[Message(role="user", content=f"Question {i + 1}. {rows[i % len(rows)]['query']}")])
            for i in range(count)]


# ----------------------------------------------------------------------------------------------- PRMs
def prm_requests(count: int, steps: int) -> tuple[list[Any], list[str]]:
    """``count`` distinct candidates of ``steps`` reasoning steps each, with their questions' answers."""
    from workers.scoring.base import InferRequest

    reqs, answers = [], []
    for i in range(count):
        a, b = 17 + i, 25 + 3 * i
        body = "\n\n".join(f"Step {s + 1}: we add {a} and {b + s}, which gives {a + b + s}; then we check it "
                           f"by subtracting {b + s} again, which gives {a}." for s in range(steps))
        reqs.append(InferRequest(messages=[{"role": "user", "content": f"What is {a}+{b}? Put it in \\boxed{{}}."},
                                           {"role": "assistant", "content": body + f"\n\n\\boxed{{{a + b}}}"}]))
        answers.append(str(a + b))
    return reqs, answers


def prm_speedup(prm: Any, reqs: list[Any], answers: list[str], batch: int, rounds: int) -> dict[str, Any]:
    """One at a time vs ``batch`` at a time, alternating, after a warm-up call; scores compared too."""
    import torch

    def timed(bs: int) -> tuple[float, list[Any]]:
        prm.batch_size = bs
        if str(prm.device).startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        scores = prm(reqs, answers)
        if str(prm.device).startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t, scores

    timed(batch)
    times: dict[int, list[float]] = {1: [], batch: []}
    scores: dict[int, list[Any]] = {}
    for r in range(rounds):
        for bs in ((1, batch) if r % 2 == 0 else (batch, 1)):
            seconds, scores[bs] = timed(bs)
            times[bs].append(round(seconds, 3))
    flat = lambda xs: [v for x in xs for v in (x if isinstance(x, list) else [x])]  # noqa: E731
    one, many = round(statistics.median(times[1]), 3), round(statistics.median(times[batch]), 3)
    return {"candidates": len(reqs), "batch_size": batch, "seconds_one_at_a_time": one, "seconds_batched": many,
            "speedup": round(one / many, 2) if many else None, "rounds_one": times[1], "rounds_batched": times[batch],
            "max_abs_score_diff": max(abs(x - y) for x, y in zip(flat(scores[1]), flat(scores[batch])))}


# --------------------------------------------------------------------------------------------- report
def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device, "cuda": torch.version.cuda}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    return env


def markdown(report: dict[str, Any]) -> str:
    env, out = report["environment"], []
    out += ["# GPU check", "", f"{env.get('gpu', env['device'])}; torch {env['torch']}, transformers "
            f"{env['transformers']}, Python {env['python']}; {report['settings']}", ""]
    if report.get("tests"):
        out += [f"gpu tests: `{report['tests']}`", ""]
    out += ["## Generation (tok/s, fixed lengths)", "",
            "| model | batch | sequences x tokens | ours | generate | cb (generate_batch) | ours / best (>= 0.95) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in report["generation"]:
        if "error" in g or "skipped" in g:
            out.append(f"| {g['model']} | {g['batch_size']} | {g.get('error') or g.get('skipped')} | | | | |")
            continue
        v = g["variants"]
        cell = lambda k: f"{v[k]['tok_s']} ({v[k]['seconds']} s)" if k in v else "-"  # noqa: E731
        out.append(f"| {g['model']} | {g['batch_size']} | {v['ours']['sequences']} x {g['max_new_tokens']} | "
                   f"{cell('ours')} | {cell('generate')} | {cell('cb')} | **{g.get('ours_vs_best')}** |")
    cb = sorted({g["cb_samples"] for g in report["generation"] if "cb_samples" in g})
    if cb:
        out += ["", f"cb's N samples per prompt: {', '.join(cb)} (see bench/continuous_batching.py, run_cb)"]
    out += ["", "## PRM batching", "", "| PRM | candidates | one at a time s | batched s | batch | speed-up (>= 3) "
            "| max score diff |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["prm"]:
        if "error" in p or "skipped" in p:
            out.append(f"| {p['prm']} | {p.get('error') or p.get('skipped')} | | | | | |")
            continue
        out.append(f"| {p['prm']} | {p['candidates']} | {p['seconds_one_at_a_time']} | {p['seconds_batched']} | "
                   f"{p['batch_size']} | **{p['speedup']}x** | {p['max_abs_score_diff']:.2e} |")
    return "\n".join(out) + "\n"


def summary(report: dict[str, Any]) -> str:
    lines = []
    for g in report["generation"]:
        if "variants" in g:
            tok_s = ", ".join(f"{k} {v['tok_s']}" for k, v in g["variants"].items())
            lines.append(f"gen {g['model']} batch {g['batch_size']}: tok/s {tok_s}; ours/best {g.get('ours_vs_best')}")
        else:
            lines.append(f"gen {g['model']} batch {g['batch_size']}: {g.get('error') or g.get('skipped')}")
    for p in report["prm"]:
        lines.append(f"prm {p['prm']}: " + (f"{p['speedup']}x batched ({p['seconds_one_at_a_time']} s -> "
                                            f"{p['seconds_batched']} s)" if "speedup" in p
                                            else str(p.get("error") or p.get("skipped"))))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="folder with SmolLM2's tokenizer files and config.json")
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: proves the script runs")
    ap.add_argument("--models", default="smollm2,llama-1b")
    ap.add_argument("--variants", default="ours,generate,cb")
    ap.add_argument("--tests", default="", help="the gpu tests' summary line, put into the report")
    for key, value in GPU.items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                        help=f"default {value} (--cpu: {CPU[key]})")
    a = ap.parse_args()
    sizes = {k: getattr(a, k) if getattr(a, k) is not None else (CPU if a.cpu else GPU)[k] for k in GPU}

    import torch

    from workers.engines.hf import TransformersEngine
    from workers.scoring.prm_kinds import JudgePRM, SeqClsPRM, StepPRM

    if not a.cpu and not torch.cuda.is_available():
        raise SystemExit("bench/gpu/bench.py: no CUDA device (use --cpu for the tiny CPU run)")
    device, t0 = ("cpu" if a.cpu else "cuda"), time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"settings": sizes | {"models": a.models, "cpu": a.cpu}, "tests": a.tests,
                              "environment": environment(device), "generation": [], "prm": []}

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - t0, 1)
        (out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (out / "gpu-check.md").write_text(markdown(report), encoding="utf-8")

    def over_budget() -> str | None:
        spent = time.perf_counter() - t0
        return f"skipped: time budget {sizes['budget_s']:.0f} s spent ({spent:.0f} s)" if spent > sizes["budget_s"] else None

    tokenizer_dir, variants = Path(a.tokenizer), tuple(a.variants.split(","))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        built: dict[tuple[str, str], str] = {}

        def folder(name: str, head: str) -> str:
            if (name, head) not in built:
                config = model_config(name, tokenizer_dir, a.cpu)
                built[name, head] = build(name, head, config, tokenizer_dir, Path(tmp), device, sizes["dtype"])
            return built[name, head]

        # PRMs first: short, and a target of their own that the generation runs must not crowd out
        reqs, answers = prm_requests(sizes["prm_candidates"], sizes["prm_steps"])
        for kind, cls, head in [("judge", JudgePRM, "causal"), ("step", StepPRM, "tokcls"),
                                ("seqcls", SeqClsPRM, "seqcls")]:
            row: dict[str, Any] = {"prm": f"{kind} (smollm2 config)"}
            try:
                if over_budget():
                    row["skipped"] = over_budget()
                else:
                    prm = cls(folder("smollm2", head), batch_size=sizes["prm_batch"], device=device,
                              torch_dtype=sizes["dtype"])
                    try:
                        row |= prm_speedup(prm, reqs, answers, sizes["prm_batch"], max(2, sizes["rounds"]))
                    finally:
                        prm.close()
            except Exception as exc:  # one failing measurement must not cost the rest of the check
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            report["prm"].append(row)
            save()
            print(summary({"generation": [], "prm": [row]}), flush=True)

        for name in a.models.split(","):
            engine = TransformersEngine(folder(name, "causal"), torch_dtype=sizes["dtype"],
                                        engine_kwargs={"device": device})
            for bs in (int(x) for x in sizes["batch_sizes"].split(",")):
                row = {"model": name, "batch_size": bs, "max_new_tokens": sizes["max_new"]}
                case = Case(prompts=prompts(sizes["prompts"]), n=sizes["n"], max_new_tokens=sizes["max_new"],
                            batch_size=bs, ignore_eos=True,
                            # tokens per forward: cb infers it from free memory otherwise (on this CPU 49k: a 40 s warm-up)
                            cb_options={"max_batch_tokens": 256 if a.cpu else 8192})
                try:
                    row |= {"skipped": over_budget()} if over_budget() else measure(engine, case, sizes["rounds"],
                                                                                    variants)
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                report["generation"].append(row)
                save()
                print(summary({"generation": [row], "prm": []}), flush=True)
            del engine
            if device == "cuda":
                torch.cuda.empty_cache()
    save()
    print(f"--- summary ({report['elapsed_s']} s; {out / 'gpu-check.md'})\n{summary(report)}")
    failed = [r for r in report["generation"] + report["prm"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
