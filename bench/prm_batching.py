"""Judge PRM: batched scoring vs one candidate at a time, on the SmolLM2-135M demo model.

Usage (in our venv, on an idle machine):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/prm_batching.py [--candidates 64] [--batch_size 16] [--rounds 3]
                                                            [--max_new_tokens 128] [--regenerate]

What it does: takes the first 8 prompts of bench20.jsonl and samples candidates for them with samplefleet's
transformers engine (seed 0, temperature 1.0, --max_new_tokens), 64 in all by default; they are cached in
bench/out/prm_candidates.jsonl (git-ignored) and reused unless --regenerate. Then it loads the judge PRM
(workers.scoring.prm_kinds.JudgePRM, the same model asked "is this correct? Yes/No" with the reference answer)
once and scores all candidates with batch_size 1 and with --batch_size, alternating the order over --rounds
rounds after one warm-up batch. Target: a speed-up of at least 3x.

Prints ONE JSON line: median seconds of each setting, the speed-up (ratio of the medians), every round's
times, the largest score difference between the two settings (should be < 1e-4), the token counts of the
judge inputs, and others_cores: CPU the rest of the machine used meanwhile (above ~0.1 core the figures are
contended; see bench/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
TICK = os.sysconf("SC_CLK_TCK")


def busy_ticks() -> int:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return f[0] + f[1] + f[2] + f[5] + f[6]


def candidates(n: int, max_new_tokens: int, regenerate: bool) -> list[dict]:
    """``n`` rows {query, reference, candidate}: sampled by our engine for bench20's first 8 prompts, cached."""
    cache = HERE / "out" / "prm_candidates.jsonl"
    if cache.exists() and not regenerate:
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
        if len(rows) >= n and rows[0].get("max_new_tokens") == max_new_tokens:
            return rows[:n]
    from schemas import Message, Prompt, SamplingParams
    from workers.engines.hf import TransformersEngine

    data = [json.loads(line) for line in (HERE / "bench20.jsonl").read_text(encoding="utf-8").splitlines()][:8]
    prompts = [Prompt(id=f"b{i}", row=i, source="bench20", messages=[Message(role="user", content=r["query"])])
               for i, r in enumerate(data)]
    engine = TransformersEngine("smollm2-135m-instruct", max_batch_size=64)
    params = SamplingParams(num_return_sequences=-(-n // len(prompts)), max_new_tokens=max_new_tokens)
    rows = [{"query": g.prompt.messages[0].content, "reference": data[i]["response"], "candidate": c.text,
             "max_new_tokens": max_new_tokens}
            for i, g in enumerate(engine.generate(prompts, params, seed=0)) for c in g.candidates]
    cache.parent.mkdir(exist_ok=True)
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--regenerate", action="store_true")
    args = ap.parse_args()

    import torch
    import transformers

    from workers.scoring.base import InferRequest
    from workers.scoring.prm_kinds import JudgePRM

    rows = candidates(args.candidates, args.max_new_tokens, args.regenerate)
    reqs = [InferRequest(messages=[{"role": "user", "content": r["query"]},
                                   {"role": "assistant", "content": r["candidate"]}]) for r in rows]
    gts = [r["reference"] for r in rows]
    t = time.perf_counter()
    judge = JudgePRM("smollm2-135m-instruct", batch_size=args.batch_size)
    load_s = time.perf_counter() - t
    lengths = [len(judge.encode(r, gt)) for r, gt in zip(reqs, gts)]
    judge(reqs[:args.batch_size], gts[:args.batch_size])  # warm-up

    times: dict[int, list[float]] = {1: [], args.batch_size: []}
    scores: dict[int, list[float]] = {}
    cpu0, busy0 = os.times(), busy_ticks()
    wall0 = time.perf_counter()
    for r in range(args.rounds):
        for bs in ((1, args.batch_size) if r % 2 == 0 else (args.batch_size, 1)):
            judge.batch_size = bs
            t = time.perf_counter()
            scores[bs] = judge(reqs, gts)
            times[bs].append(round(time.perf_counter() - t, 3))
    wall = time.perf_counter() - wall0
    cpu1, busy1 = os.times(), busy_ticks()
    own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    others = max(0.0, (busy1 - busy0) / TICK - own) / wall
    judge.close()

    one, batched = statistics.median(times[1]), statistics.median(times[args.batch_size])
    print(json.dumps({
        "experiment": "prm-batching", "prm": "judge", "model": "smollm2-135m-instruct",
        "candidates": len(reqs), "batch_size": args.batch_size, "rounds": args.rounds,
        "seconds_one_at_a_time": one, "seconds_batched": batched, "speedup": round(one / batched, 2),
        "target_speedup": 3.0, "rounds_one_at_a_time": times[1], "rounds_batched": times[args.batch_size],
        "max_abs_score_diff": max(abs(a - b) for a, b in zip(scores[1], scores[args.batch_size])),
        "mean_score": round(statistics.mean(scores[1]), 4),
        "input_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                         "total": sum(lengths)},
        "load_s": round(load_s, 2), "others_cores": round(others, 2), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
