"""fp32 against bf16 on the demo model: is ``--torch_dtype auto`` (bf16 where native) safe to make the default?

Usage: .venv/bin/python bench/numerics.py [--data bench/bench20.jsonl] [--prompts 20] [--n 4] [--max-new 128]
                                          [--seed 42] [--out FILE]

Two checks, both through the project's own engine (``TransformersEngine``, so the dtype goes the way a run's does):
- **log-probabilities of the same candidates**: the candidates each dtype sampled are re-scored under both
  dtypes (teacher forcing on prompt + candidate tokens); the line gives the mean per-token log-probability under
  fp32 and bf16, the mean and the 95th percentile of the per-candidate |difference|, and how often both dtypes put
  the same token first (top-1 agreement) along those candidates;
- **math ORM pass rate on a fixed set**: each dtype samples ``--n`` candidates per prompt of ``--data`` with the
  same seed and options (temperature 1.0, top_k 50, as ``local-vs-swift``), the built-in ``math`` ORM scores them
  against the row's ``response``; the line gives each pass rate with its binomial standard error, so a gap can be
  read against the noise of the set (the dtypes sample different texts, so only the rates compare).
Prints one JSON line per check (``check``: logprob / orm), plus generation seconds per dtype for information (not
a speed figure: use ``run.py local-vs-swift`` on an idle machine for that). ``--out`` also writes them as a JSON list.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DTYPES = ("float32", "bfloat16")


def _prompts(path: Path, limit: int) -> tuple[list, list[str]]:
    from schemas import Message, Prompt

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    prompts = [Prompt(id=f"p{i}", row=i, source=f"{path.name}:{i + 1}", messages=[Message(role="user", content=r["query"])])
               for i, r in enumerate(rows)]
    return prompts, [r["response"] for r in rows]


def _token_logprobs(engine, prompt_ids: list[int], text: str) -> tuple[list[float], list[int]]:
    """Per-token log-probabilities of ``text`` after the prompt, and the model's own top token at each step."""
    import torch

    answer = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer], device=engine.model.device)
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(answer, device=logp.device)
    return logp[torch.arange(len(answer)), target].tolist(), logp.argmax(dim=-1).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE / "bench20.jsonl"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from schemas import SamplingParams
    from workers.engines.hf import TransformersEngine
    from workers.scoring.base import InferRequest
    from workers.scoring.orm_kinds import MathORM

    prompts, answers = _prompts(Path(a.data), a.prompts)
    params = SamplingParams(num_return_sequences=a.n, max_new_tokens=a.max_new, temperature=1.0, top_k=50, top_p=1.0)
    engines = {d: TransformersEngine(a.model, torch_dtype=d, max_batch_size=len(prompts) * a.n) for d in DTYPES}
    sampled, seconds = {}, {}
    for dtype, engine in engines.items():
        started = time.perf_counter()
        sampled[dtype] = engine.generate(prompts, params, seed=a.seed)
        seconds[dtype] = round(time.perf_counter() - started, 2)

    lines = []
    orm = MathORM()
    try:
        for dtype, gens in sampled.items():
            reqs, truths = [], []
            for gen, truth in zip(gens, answers):
                for c in gen.candidates:
                    reqs.append(InferRequest(messages=[*[m.model_dump() for m in gen.prompt.messages],
                                                       {"role": "assistant", "content": c.text}]))
                    truths.append(truth)
            scores = orm(reqs, truths)
            rate = sum(s > 0 for s in scores) / max(1, len(scores))
            lines.append({"check": "orm", "dtype": dtype, "candidates": len(scores), "pass_rate": round(rate, 4),
                          "std_error": round(math.sqrt(rate * (1 - rate) / max(1, len(scores))), 4),
                          "generate_s": seconds[dtype], "tokens": sum(c.tokens for g in gens for c in g.candidates)})
    finally:
        orm.close()

    for source, gens in sampled.items():
        per_dtype: dict[str, list[float]] = {d: [] for d in DTYPES}
        diffs, agree, steps = [], 0, 0
        for gen in gens:
            prompt_ids = engines["float32"].encode(gen.prompt)
            for c in gen.candidates:
                if not c.text:
                    continue
                (lp32, top32), (lp16, top16) = (_token_logprobs(engines[d], prompt_ids, c.text) for d in DTYPES)
                per_dtype["float32"].append(statistics.fmean(lp32))
                per_dtype["bfloat16"].append(statistics.fmean(lp16))
                diffs.append(abs(per_dtype["float32"][-1] - per_dtype["bfloat16"][-1]))
                agree += sum(x == y for x, y in zip(top32, top16))
                steps += len(top32)
        diffs.sort()
        lines.append({"check": "logprob", "candidates_from": source, "candidates": len(diffs),
                      "mean_logprob_float32": round(statistics.fmean(per_dtype["float32"]), 4),
                      "mean_logprob_bfloat16": round(statistics.fmean(per_dtype["bfloat16"]), 4),
                      "mean_abs_diff": round(statistics.fmean(diffs), 4),
                      "p95_abs_diff": round(diffs[min(len(diffs) - 1, int(0.95 * len(diffs)))], 4),
                      "top1_agreement": round(agree / max(1, steps), 4)})
    settings = {"data": a.data, "prompts": len(prompts), "n": a.n, "max_new_tokens": a.max_new, "seed": a.seed,
                "dtypes": {d: e.describe()["dtype"] for d, e in engines.items()}}
    for line in lines:
        print(json.dumps({**line, "settings": settings}))
    if a.out:
        Path(a.out).write_text(json.dumps([{**line, "settings": settings} for line in lines], indent=1) + "\n")


if __name__ == "__main__":
    main()
