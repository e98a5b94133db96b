"""Throughput of the math ORM (workers.scoring.orm_kinds.MathORM) on typical candidates; prints JSON lines.

Usage: .venv/bin/python bench/orm_throughput.py [--candidates 2000] [--per_prompt 16] [--rounds 3]

Candidates look like sampled math answers: reasoning text of varying length ending in a boxed integer or
fraction, grouped N per prompt, against references stored bare ("42"), as a fraction, or as a solution with
a box. Two mixes:
- ``mixed``: 40 % the reference written the same way (settled by the string fast path), 20 % the same value
  written otherwise (0.75 for \\frac{3}{4}, x = 42), 40 % wrong;
- ``symbolic``: no same-form answers, so every candidate goes to math-verify (the worst typical case).
Each (mix, workers) pair is timed over ``--rounds`` fresh candidate sets (fresh, so the checker processes'
parse cache does not flatter later rounds), after a warm-up call that starts the pool; the line reports the
median candidates/s, how many distinct symbolic checks a set needed, and ``machine_busy_cores``: the average
number of busy cores on the whole machine while timing. Ours is at most workers + a little for the scoring
process; more means another program competed and the figure is low (run it on an idle machine).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.scoring.answers import extract_answer, normalize, reference_answer  # noqa: E402
from workers.scoring.base import InferRequest  # noqa: E402
from workers.scoring.orm_kinds import MathORM  # noqa: E402

FILLER = ("We rewrite the expression and collect like terms. ", "Checking the arithmetic once more gives the same. ",
          "Substituting back confirms the value. ", "Both sides simplify, so we can divide by the common factor. ")
#: Shares of (the reference's own form, another form of the same value, a wrong value).
MIXES = {"mixed": (0.4, 0.2, 0.4), "symbolic": (0.0, 1 / 3, 2 / 3)}


def _reference(rng: random.Random) -> tuple[str, str, list[str]]:
    """(reference as stored, the answer's canonical form, other forms of the same value)."""
    if rng.random() < 0.6:
        n = rng.randint(-50, 5000)
        stored = rng.choice([str(n), f"The total is {n}, so the answer is $\\boxed{{{n}}}$."])
        return stored, str(n), [f"{n}.0", f"x = {n}", f"{n}\\text{{ units}}"]
    a, b = rng.randint(1, 99), rng.choice([2, 4, 5, 8, 10, 20, 25])
    frac = f"\\frac{{{a}}}{{{b}}}"
    return frac, frac, [f"{a / b:g}", f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}"]


def _wrong(rng: random.Random, canonical: str) -> str:
    if canonical.startswith("\\frac"):
        return f"\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(2, 30)}}}"
    return str(int(canonical) + rng.choice([-1, 1]) * rng.randint(1, 200))


def _candidate(rng: random.Random, answer: str) -> str:
    reasoning = "".join(rng.choice(FILLER) for _ in range(rng.randint(0, 12)))
    return f"{reasoning}Therefore the answer is $\\boxed{{{answer}}}$."


def make_batch(seed: int, candidates: int, per_prompt: int, mix: str) -> tuple[list[InferRequest], list[str]]:
    rng = random.Random(seed)
    requests, truths = [], []
    while len(requests) < candidates:
        stored, canonical, others = _reference(rng)
        prompt = {"role": "user", "content": f"Problem {len(requests)}: compute the value."}
        for _ in range(min(per_prompt, candidates - len(requests))):
            kind = rng.choices(("same", "other", "wrong"), MIXES[mix])[0]
            answer = {"same": canonical, "other": rng.choice(others), "wrong": _wrong(rng, canonical)}[kind]
            requests.append(InferRequest(messages=[prompt, {"role": "assistant", "content": _candidate(rng, answer)}]))
            truths.append(stored)
    return requests, truths


def symbolic_checks(requests: list[InferRequest], truths: list[str]) -> int:
    """Distinct (reference, candidate) answer pairs the string fast path cannot settle: what goes to the pool."""
    pairs = {(reference_answer(t), extract_answer(q.response)) for q, t in zip(requests, truths)}
    return sum(normalize(a) != normalize(b) for a, b in pairs)


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat; None where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    return sum(fields) - fields[3] - fields[4], sum(fields)  # idle and iowait are not busy


def measure(mix: str, workers: int, args: argparse.Namespace) -> dict:
    orm = MathORM(timeout=5.0, workers=workers)
    try:
        orm(*make_batch(10_000, 200, args.per_prompt, mix))  # starts the pool; its cache then holds other strings
        rates, checks, busy, total = [], 0, 0, 0
        for r in range(args.rounds):
            requests, truths = make_batch(r, args.candidates, args.per_prompt, mix)
            checks = symbolic_checks(requests, truths)
            before, start = cpu_ticks(), time.perf_counter()
            scores = orm(requests, truths)
            rates.append(len(requests) / (time.perf_counter() - start))
            if before and (after := cpu_ticks()):
                busy, total = busy + after[0] - before[0], total + after[1] - before[1]
        return {"mix": mix, "workers": workers, "candidates": args.candidates, "rounds": args.rounds,
                "candidates_per_s": round(statistics.median(rates)), "all_rounds": [round(x) for x in rates],
                "pass_rate": round(sum(scores) / len(scores), 3), "symbolic_checks": checks,
                "cpu_count": os.cpu_count(),
                "machine_busy_cores": round(busy / total * (os.cpu_count() or 1), 2) if total else None}
    finally:
        orm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=2000)
    ap.add_argument("--per_prompt", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for mix in ("mixed", "symbolic"):
        for workers in (2, 1):
            print(json.dumps(measure(mix, workers, args)), flush=True)


if __name__ == "__main__":
    main()
