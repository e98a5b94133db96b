"""Our transformers engine against bare ``model.generate`` and transformers' continuous batching, same job.

Three ways to sample N candidates for each of P prompts from one loaded model, with the same prompts (the
model's chat template), sampling settings and batch bound:
  ours      ``TransformersEngine.generate``: length-sorted batches of at most ``batch_size`` sequences, each
            prompt prefilled once and its KV cache copied to its N rows, a row dropped the step it ends;
  generate  bare ``model.generate`` on the very batches our engine builds (``engine._batches``): each prompt
            repeated for its copies, left padding, every row stepped until the longest one ends;
  cb        ``model.generate_batch`` (transformers' continuous batching, paged attention): all P prompts with
            ``num_return_sequences=N``, at most ``batch_size`` requests in flight
            (``ContinuousBatchingConfig.max_requests_per_batch``). Its manager is kept between calls
            (``persistent_manager``) and warmed by the untimed first call, as a warm worker would keep it.
With ``ignore_eos`` every sequence runs exactly ``max_new_tokens`` (ours: no EOS ids; generate:
``min_new_tokens``; cb: ``eos_token_id`` unset, which it turns into -1), so the work is identical and tok/s
compares the decode loops alone; without it each draws its own samples and lengths, and tok/s (tokens up to and
including EOS / s) is the fair figure.

Library for ``bench/gpu/bench.py`` (``Case``, ``measure``); as a script it runs the CPU comparison on the demo
model over bench20 x 4 (interleaved rounds, rotated order) and writes ``results/continuous-batching.{json,md}``
(``-fixed`` in the name with ``--ignore-eos``):
    .venv/bin/python bench/continuous_batching.py --repeats 3           # the real figures, idle machine only
    .venv/bin/python bench/continuous_batching.py --prompts 2 --n 2 --max-new 4 --repeats 1 --results-dir /tmp/cb
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

VARIANTS = ("ours", "generate", "cb")


@dataclass
class Case:
    """One sampling job, identical for every variant."""

    prompts: list[Any]  # schemas.Prompt
    n: int
    max_new_tokens: int
    batch_size: int
    ignore_eos: bool = True
    temperature: float = 1.0
    top_k: int = 50
    seed: int = 42
    cb_options: dict[str, Any] = field(default_factory=dict)  # more ContinuousBatchingConfig fields
    cb_fork: bool | None = None  # cb's N samples: None = try num_return_sequences first (see run_cb)


@dataclass
class Run:
    """One timed call of one variant."""

    variant: str
    seconds: float
    sequences: int
    tokens: int

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _sync(engine: Any) -> None:
    import torch

    if engine.model.device.type == "cuda":
        torch.cuda.synchronize(engine.model.device)


def _params(case: Case) -> Any:
    from schemas import SamplingParams

    return SamplingParams(num_return_sequences=case.n, max_new_tokens=case.max_new_tokens,
                          temperature=case.temperature, top_k=case.top_k, seed=case.seed)


def run_ours(engine: Any, case: Case) -> tuple[int, int]:
    """(sequences, tokens) from our engine; ``ignore_eos`` empties its EOS ids for the call."""
    engine.max_batch_size, eos = case.batch_size, engine.eos_ids
    if case.ignore_eos:
        engine.eos_ids = []
    try:
        gens = engine.generate(case.prompts, _params(case), seed=case.seed)
    finally:
        engine.eos_ids = eos
    cands = [c for g in gens for c in g.candidates]
    return len(cands), sum(c.tokens for c in cands)


def _until_eos(row: list[int], eos: set[int]) -> int:
    """Tokens of one generated row up to and including its first EOS (the manifest's rule)."""
    for i, t in enumerate(row):
        if t in eos:
            return i + 1
    return len(row)


def run_generate(engine: Any, case: Case) -> tuple[int, int]:
    """(sequences, tokens) from bare ``model.generate`` on our engine's own batches."""
    import torch

    engine.max_batch_size = case.batch_size
    encoded = [engine.encode(p) for p in case.prompts]
    kwargs: dict[str, Any] = {"max_new_tokens": case.max_new_tokens, "pad_token_id": engine.pad_id}
    if case.temperature > 0:
        kwargs.update(do_sample=True, temperature=case.temperature, top_k=case.top_k, top_p=1.0)
    else:
        kwargs.update(do_sample=False)
    if case.ignore_eos:
        kwargs["min_new_tokens"] = case.max_new_tokens
    eos = set(engine.eos_ids)
    torch.manual_seed(case.seed)
    sequences = tokens = 0
    for batch in engine._batches(list(range(len(encoded))), encoded, _params(case)):
        rows = [encoded[i] for i, copies in batch for _ in range(copies)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        with torch.inference_mode():
            out = engine.model.generate(input_ids=ids.to(engine.model.device),
                                        attention_mask=mask.to(engine.model.device), **kwargs)
        for row in out[:, width:].tolist():
            sequences += 1
            tokens += len(row) if case.ignore_eos else _until_eos(row, eos)
    return sequences, tokens


def run_cb(engine: Any, case: Case) -> tuple[int, int]:
    """(sequences, tokens) from ``model.generate_batch``; a failed or missing request is an error.

    N samples per prompt via ``num_return_sequences`` (the manager forks the prompt's KV cache, like our fan-out).
    transformers 5.17 returns only the parents that way (seen on CPU): when the first call comes back short, the
    case switches to N copies of each prompt (``case.cb_fork = False``; prefix sharing still reuses their blocks).
    """
    if case.cb_fork is not False:
        sequences, tokens, complete = _cb_call(engine, case, fork=True)
        if complete:
            case.cb_fork = True
            return sequences, tokens
        if case.cb_fork:
            raise RuntimeError(f"generate_batch: {sequences} of {len(case.prompts) * case.n} results")
        engine.model.destroy_cached_continuous_batching_manager()
        case.cb_fork = False
    sequences, tokens, complete = _cb_call(engine, case, fork=False)
    if not complete:
        raise RuntimeError(f"generate_batch: {sequences} of {len(case.prompts) * case.n} results")
    return sequences, tokens


def _cb_call(engine: Any, case: Case, fork: bool) -> tuple[int, int, bool]:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    encoded = [engine.encode(p) for p in case.prompts]
    inputs = encoded if fork else [e for e in encoded for _ in range(case.n)]
    sampling = ({"do_sample": True, "temperature": case.temperature, "top_k": case.top_k, "top_p": 1.0}
                if case.temperature > 0 else {"do_sample": False})
    config = GenerationConfig(max_new_tokens=case.max_new_tokens, num_return_sequences=case.n if fork else 1,
                              pad_token_id=engine.pad_id, eos_token_id=None if case.ignore_eos else engine.eos_ids,
                              **sampling)
    cb = ContinuousBatchingConfig(**cb_options(case, encoded))
    out = engine.model.generate_batch(inputs=inputs, generation_config=config, continuous_batching_config=cb,
                                      persistent_manager=True, progress_bar=False)
    failed = [o.error for o in out.values() if o.error]
    if failed:
        raise RuntimeError(f"generate_batch: {len(failed)} of {len(out)} requests failed: {failed[0]}")
    eos = set(engine.eos_ids)
    lengths = [len(o.generated_tokens) if case.ignore_eos else _until_eos(list(o.generated_tokens), eos)
               for o in out.values()]
    return len(lengths), sum(lengths), len(lengths) == len(encoded) * case.n


def cb_options(case: Case, encoded: list[list[int]]) -> dict[str, Any]:
    """At most ``batch_size`` requests at once, and a KV cache sized for that many whole sequences (not
    transformers' default of most of the free memory, which would starve the other variants between calls)."""
    from dataclasses import fields

    from transformers import ContinuousBatchingConfig

    defaults = {f.name: f.default for f in fields(ContinuousBatchingConfig)}
    page = defaults.get("page_size") or defaults.get("block_size") or 256  # page_size since 5.18, block_size before
    per_request = -(-(max(len(e) for e in encoded) + case.max_new_tokens) // page)
    in_flight = min(case.batch_size, len(encoded) * case.n)
    return {"max_requests_per_batch": case.batch_size, "num_blocks": in_flight * per_request + 1, **case.cb_options}


RUNNERS = {"ours": run_ours, "generate": run_generate, "cb": run_cb}


def timed(variant: str, engine: Any, case: Case) -> Run:
    _sync(engine)
    t = time.perf_counter()
    sequences, tokens = RUNNERS[variant](engine, case)
    _sync(engine)
    return Run(variant, round(time.perf_counter() - t, 3), sequences, tokens)


def measure(engine: Any, case: Case, rounds: int, variants: tuple[str, ...] = VARIANTS,
            warmup: bool = True) -> dict[str, Any]:
    """Every variant once untimed (warm-up), then ``rounds`` interleaved rounds in a rotated order.

    Returns per-variant medians, every run, and ``ours_vs_best``: our tok/s over the better of the others'.
    """
    runs: list[Run] = []
    try:
        if warmup:
            for v in variants:
                timed(v, engine, case)
        for r in range(rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                runs.append(timed(v, engine, case))
    finally:
        if "cb" in variants:
            engine.model.destroy_cached_continuous_batching_manager()
    summary: dict[str, Any] = {}
    for v in variants:
        mine = [x for x in runs if x.variant == v]
        summary[v] = {"seconds": round(statistics.median(x.seconds for x in mine), 3),
                      "tok_s": round(statistics.median(x.tok_s for x in mine), 1),
                      "sequences": mine[-1].sequences, "tokens": statistics.median(x.tokens for x in mine)}
    others = [summary[v]["tok_s"] for v in variants if v != "ours"]
    result = {"variants": summary, "runs": [asdict(x) | {"tok_s": round(x.tok_s, 1)} for x in runs]}
    if "cb" in variants:
        result["cb_samples"] = "num_return_sequences" if case.cb_fork else "N copies of each prompt"
    if "ours" in summary and others and max(others) > 0:
        result["ours_vs_best"] = round(summary["ours"]["tok_s"] / max(others), 3)
    return result


# ------------------------------------------------------------------------------------ CPU script
def bench20_prompts(count: int) -> list[Any]:
    from schemas import Message, Prompt

    rows = [json.loads(line) for line in (HERE / "bench20.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [Prompt(id=f"b{i}", row=i, source="bench20", messages=[Message(role="user", content=r["query"])])
            for i, r in enumerate(rows[:count])]


def markdown(result: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = ["# continuous-batching" + ("-fixed" if settings["ignore_eos"] else ""), "", f"Settings: `{json.dumps(settings)}`", "",
             "| variant | seconds (median) | sequences | tokens | tok/s |", "| --- | --- | --- | --- | --- |"]
    for v, s in result["variants"].items():
        lines.append(f"| {v} | {s['seconds']} | {s['sequences']} | {s['tokens']} | {s['tok_s']} |")
    lines += ["", f"ours / best of generate and cb, tok/s: **{result.get('ours_vs_best')}** (target >= 0.95)", "",
              "Runs in order:", ""] + [f"- {r['variant']}: {r['seconds']} s, {r['tokens']} tokens, {r['tok_s']} tok/s"
                                       for r in result["runs"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=80, help="sequences at once; default P x N: one batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ignore-eos", action="store_true", help="fixed lengths: every sequence runs --max-new tokens")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-batch-tokens", type=int, default=4096, help="cb tokens per forward (anchor: 4096)")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    a = ap.parse_args()

    import torch
    import transformers

    from workers.engines.hf import TransformersEngine

    t = time.perf_counter()
    engine = TransformersEngine(a.model, torch_dtype=a.dtype, max_batch_size=a.batch_size)
    load_s = round(time.perf_counter() - t, 2)
    case = Case(prompts=bench20_prompts(a.prompts), n=a.n, max_new_tokens=a.max_new, batch_size=a.batch_size,
                ignore_eos=a.ignore_eos, cb_options={"max_batch_tokens": a.max_batch_tokens})
    settings = {"model": a.model, "prompts": len(case.prompts), "n": a.n, "max_new_tokens": a.max_new,
                "batch_size": a.batch_size, "ignore_eos": a.ignore_eos, "dtype": a.dtype, "temperature": 1.0,
                "top_k": 50, "repeats": a.repeats, "cb": case.cb_options}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = measure(engine, case, a.repeats)
    record = {"experiment": "continuous-batching", "settings": settings, "started_utc": started,
              "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_s": load_s, **result,
              "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "threads": torch.get_num_threads()}}
    out = Path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "continuous-batching" + ("-fixed" if a.ignore_eos else "")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(result, settings), encoding="utf-8")
    print(json.dumps({"ours_vs_best": result.get("ours_vs_best"),
                      **{v: s["tok_s"] for v, s in result["variants"].items()}, "results": str(out)}))


if __name__ == "__main__":
    main()
