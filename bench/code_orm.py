"""Throughput of the code ORM (workers.scoring.code_orm.CodeORM) against a naive runner; prints JSON lines.

Usage: flock /tmp/samplefleet-cpu.lock .venv/bin/python bench/code_orm.py [--candidates 1200] [--rounds 3]

The candidates are written here: problems in the three row conventions (HumanEval, MBPP, stdin/stdout),
each answered by right, wrong and raising solutions, every candidate text distinct (a numbered comment), so
the ORM's dedup does not flatter it. Two runners judge the same candidates:

- ``naive``: one fresh ``python3`` process per candidate (HumanEval / MBPP: the program, then the tests; it
  passes when it exits 0) or per test case (stdin/stdout: the program on that input, output compared after
  whitespace normalisation), one at a time; no sandbox at all. ``naive_parallel`` is the same with one
  process per core the scorer may use (workers.threads.thread_budget), to separate the gain of the warm fork
  servers from that of the parallelism.
- ``orm``: ``CodeORM`` as the score stage calls it, one call for all candidates, in its sandbox (bubblewrap
  here), after a warm-up call that starts its servers.

Each line: runner, candidates/s (median of the rounds), passes (the runners must agree), and the machine's
load while timing (``machine_busy_cores`` from /proc/stat; ours is at most the workers plus a little).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.scoring.base import InferRequest  # noqa: E402
from workers.scoring.code_orm import CodeORM, row_tests  # noqa: E402
from workers.scoring.sandbox import _interpreter  # noqa: E402
from workers.threads import thread_budget  # noqa: E402

PROBLEMS = [  # (row, right, wrong, raising)
    ({"prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n", "entry_point": "add",
      "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"},
     "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b", "def add(a, b):\n    return a + c"),
    ({"prompt": "def rev(s):\n    \"\"\"s reversed\"\"\"\n", "entry_point": "rev",
      "test": "def check(candidate):\n    assert candidate('ab') == 'ba'\n    assert candidate('') == ''\n"},
     "    return s[::-1]\n", "    return s\n", "    return s[10]\n"),
    ({"test_list": ["assert fib(1) == 1", "assert fib(10) == 55", "assert fib(20) == 6765"]},
     "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "def fib(n):\n    return n", "def fib(n):\n    return fib(n - 1) + fib(n - 2)"),
    ({"test_list": ["assert primes(10) == [2, 3, 5, 7]", "assert primes(2) == []"], "test_imports": ["import math"]},
     "def primes(n):\n    return [p for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) + 1))]",
     "def primes(n):\n    return list(range(2, n))", "def primes(n):\n    return sorted(None)"),
    ({"input_output": json.dumps({"inputs": ["3 4\n", "10 20\n"], "outputs": ["7\n", "30\n"]})},
     "a, b = map(int, input().split())\nprint(a + b)", "print(7)", "print(int(input()))"),
    ({"inputs": ["5\n1 2 3 4 5\n", "3\n9 9 9\n"], "outputs": ["15\n", "27\n"]},
     "input()\nprint(sum(map(int, input().split())))", "print(input())", "import sys\nprint(1 / 0)"),
]


def candidates(count: int) -> list[tuple[dict, str]]:
    """``count`` (row, candidate text) pairs cycling through the problems and their right/wrong/raising answers."""
    out = []
    for i in range(count):
        row, *answers = PROBLEMS[i % len(PROBLEMS)]
        code = answers[(i // len(PROBLEMS)) % 3]
        out.append((row, f"```python\n# candidate {i}\n{code}\n```"))
    return out


def _requests(pairs: list[tuple[dict, str]]) -> list[InferRequest]:
    return [InferRequest(messages=[{"role": "user", "content": row.get("prompt", "solve")},
                                   {"role": "assistant", "content": text}], columns=row) for row, text in pairs]


def naive_one(python: str, request: InferRequest) -> bool:
    """One candidate in fresh ``python3`` processes, no sandbox, as a first script would do it."""
    job = row_tests(request)
    try:
        if job["kind"] == "stdio":
            for given, wanted in job["tests"]:
                out = subprocess.run([python, "-c", job["code"]], input=given, capture_output=True, text=True,
                                     timeout=5).stdout
                if out.split() != wanted.split():
                    return False
            return True
        program = "\n".join([job["setup"], job["code"], *job["tests"]])
        return subprocess.run([python, "-c", program], capture_output=True, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def timed(fn, n: int) -> tuple[float, int, float]:
    """(seconds, passes, busy cores) of one call of ``fn``."""
    import os

    b0, t0 = _busy()
    start = time.perf_counter()
    passes = fn()
    seconds = time.perf_counter() - start
    b1, t1 = _busy()
    cores = os.cpu_count() or 1
    return seconds, passes, round((b1 - b0) / max(t1 - t0, 1) * cores, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python = _interpreter()
    requests = _requests(candidates(args.candidates))
    workers = thread_budget()
    orm = CodeORM(timeout=5.0, workers=workers)
    orm(requests[:20], [None] * 20)  # warm-up: starts the servers
    runners = {
        "naive": lambda: sum(naive_one(python, r) for r in requests),
        "naive_parallel": lambda: sum(ThreadPoolExecutor(workers).map(lambda r: naive_one(python, r), requests)),
        "orm": lambda: int(sum(orm(requests, [None] * len(requests)))),
    }
    results: dict[str, list[tuple[float, int, float]]] = {name: [] for name in runners}
    for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits every runner alike
        for name, fn in runners.items():
            results[name].append(timed(fn, len(requests)))
    orm.close()
    base = statistics.median(len(requests) / s for s, _, _ in results["naive"])
    for name, rounds in results.items():
        rate = statistics.median(len(requests) / s for s, _, _ in rounds)
        print(json.dumps({"runner": name, "candidates": len(requests), "workers": workers, "sandbox": orm.pool.mode,
                          "candidates_per_s": round(rate, 1), "vs_naive": round(rate / base, 2),
                          "passes": sorted({p for _, p, _ in rounds}),
                          "machine_busy_cores": [b for _, _, b in rounds], "rounds": len(rounds)}))


if __name__ == "__main__":
    main()
