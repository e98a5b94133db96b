"""``--orm_model code``: each row convention with right and wrong solutions, hostile candidates, and whole runs.

The sandbox is the real one this machine gives (bubblewrap where it works; see docs/SECURITY.md); one pool of
sandboxed servers serves the unit tests, so they take a second or two.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_jsonl, run_producer, write_jsonl
from kits.fleet import run_cli
from schemas.errors import ConfigError, PermanentError
from workers.scoring import InferRequest, orms
from workers.scoring.code_orm import CodeORM, extract_code, humaneval_program
from workers.scoring.sandbox import SandboxPool, choose_mode

EXAMPLE = ROOT / "examples" / "code.jsonl"

HUMANEVAL = {"prompt": 'from typing import List\n\n\ndef add_all(xs: List[int]) -> int:\n    """Sum of xs."""\n',
             "entry_point": "add_all",
             "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
                     "    assert candidate([]) == 0\n    assert candidate([-1, 5, 7]) == 11\n"}
# A helper of the prompt that the test uses too (as HumanEval/32's poly).
HUMANEVAL_HELPER = {"prompt": 'def double(x):\n    return 2 * x\n\n\ndef quad(x):\n    """double(double(x))"""\n',
                    "entry_point": "quad", "test": "def check(candidate):\n    assert candidate(3) == double(6)\n"}
MBPP = {"test_list": ["assert hyp(3, 4) == 5.0", "assert hyp(5, 12) == 13.0", "assert round(hyp(1, 1), 3) == 1.414"],
        "test_imports": ["import math"], "test_setup_code": ""}
MBPP_SETUP = {"test_list": json.dumps(["assert scale(SIZE) == 30"]), "test_setup_code": "SIZE = 10"}
STDIO = {"input_output": json.dumps({"inputs": ["1 2\n", "10 -4\n", "0 0\n"], "outputs": ["3\n", "6\n", "0\n"]})}
STDIO_COLUMNS = {"inputs": ["abc\n", "xy"], "outputs": ["cba", "yx\n"]}
APPS_CALL = {"input_output": {"fn_name": "pairs", "inputs": [[[1, 2, 3]], [[]]], "outputs": [[[1, 2], [2, 3]], [[]]]}}


def fence(code: str, tag: str = "python") -> str:
    return f"Here you go:\n```{tag}\n{code}\n```\nThat is all."


CASES = [  # (row, candidate, passes, verdict starts with)
    (HUMANEVAL, fence("def add_all(xs):\n    return sum(xs)"), True, "pass"),
    (HUMANEVAL, "    total = 0\n    for x in xs:\n        total += x\n    return total\n", True, "pass"),  # body only
    (HUMANEVAL, fence("return sum(xs)"), True, "pass"),  # a body that came flush left
    (HUMANEVAL, fence("def add_all(xs: List[int]) -> int:\n    return sum(xs)", tag=""), True, "pass"),
    (HUMANEVAL, fence("def add_all(xs):\n    return sum(xs) + 1"), False, "wrong: test 1 `assert candidate([1, 2]) == 3`"),
    (HUMANEVAL, fence("def add_all(xs):\n    return sum(xs) if xs else None"), False,
     "wrong: test 1 `assert candidate([]) == 0`"),
    (HUMANEVAL, fence("def add_all(xs):\n    return xs[0] + xs[1]"), False, "error: IndexError on test 1"),
    (HUMANEVAL, fence("def add_all(xs) return 1"), False, "error: SyntaxError loading the code"),
    (HUMANEVAL, fence("def other(xs):\n    return sum(xs)"), False, "wrong: test 1"),  # the stub returns None
    (HUMANEVAL_HELPER, fence("def quad(x):\n    return double(double(x))"), True, "pass"),
    (HUMANEVAL_HELPER, fence("def quad(x):\n    return 3 * x"), False, "wrong: test 1"),
    (MBPP, fence("import math\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)"), True, "pass"),
    (MBPP, fence("def hyp(a, b):\n    return (a * a + b * b) ** 0.5"), True, "pass"),
    (MBPP, fence("def hyp(a, b):\n    return a + b - 2"), False, "wrong: test 2 `assert hyp(5, 12) == 13.0`"),
    (MBPP, fence("def hyp(a, b):\n    return math.sqrt(a * a + b * b)"), False, "error: NameError on test 1"),
    (MBPP, fence("def hypotenuse(a, b):\n    return 5.0"), False, "error: NameError on test 1"),
    (MBPP_SETUP, fence("def scale(n):\n    return 3 * n"), True, "pass"),
    (MBPP_SETUP, fence("def scale(n):\n    return n"), False, "wrong: test 1"),
    (STDIO, fence("a, b = map(int, input().split())\nprint(a + b)"), True, "pass"),
    (STDIO, fence("import sys\na, b = map(int, sys.stdin.read().split())\nsys.stdout.write(f'  {a + b}  \\n\\n')"),
     True, "pass"),  # whitespace is normalised
    (STDIO, fence("a, b = map(int, input().split())\nprint(a * b)"), False, "wrong: test 1 (output differs)"),
    (STDIO, fence("a, b = map(int, input().split())\nprint(a - b if a > 5 else a + b)"), False,
     "wrong: test 2 (output differs)"),
    (STDIO, fence("print(int(input()))"), False, "error: ValueError on test 1"),
    (STDIO, fence("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(0)"), True, "pass"),
    (STDIO_COLUMNS, fence("print(input()[::-1])"), True, "pass"),
    (STDIO_COLUMNS, fence("print(input())"), False, "wrong: test 1 (output differs)"),
    (APPS_CALL, fence("def pairs(xs):\n    return [(a, b) for a, b in zip(xs, xs[1:])]"), True, "pass"),
    (APPS_CALL, fence("class Solution:\n    def pairs(self, xs):\n        return [list(p) for p in zip(xs, xs[1:])]"),
     True, "pass"),
    (APPS_CALL, fence("def pairs(xs):\n    return list(zip(xs, xs))"), False, "wrong: test 1"),
]


@pytest.fixture(scope="module")
def orm():
    model = CodeORM(timeout=1.0, memory_mb=256, workers=2)
    yield model
    model.close()


def run(orm: CodeORM, pairs: list[tuple[dict, str]]) -> tuple[list[float], list[str]]:
    requests = [InferRequest(messages=[{"role": "user", "content": "solve"}, {"role": "assistant", "content": c}],
                             columns=row) for row, c in pairs]
    return orm(requests, [None] * len(requests)), orm.last_verdicts


def test_each_convention_passes_the_right_solutions_and_names_why_the_wrong_fail(orm):
    scores, verdicts = run(orm, [(row, cand) for row, cand, _, _ in CASES])
    for (row, cand, passes, why), score, verdict in zip(CASES, scores, verdicts, strict=True):
        assert score == (1.0 if passes else 0.0), (cand, verdict)
        assert verdict.startswith(why), (cand, verdict)


def test_partial_scores_the_share_of_tests_passed():
    model = CodeORM(timeout=1.0, memory_mb=256, workers=1, partial=True)
    try:
        scores, verdicts = run(model, [(MBPP, fence("def hyp(a, b):\n    return 5.0 if a == 3 else 13.0")),
                                       (STDIO, fence("print(3)")), (MBPP, fence("def hyp(a, b): return 0"))])
    finally:
        model.close()
    assert scores == [pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]
    assert verdicts[0].startswith("wrong: test 3") and verdicts[1].startswith("wrong: test 2")


def test_code_extraction_and_humaneval_joining():
    assert extract_code("```python\na = 1\n```\ntext\n```\nb = 2\n```") == "b = 2\n"
    assert extract_code("```python\nx = 1\n```\n```cpp\nint main(){}\n```") == "x = 1\n"  # not python: skipped
    assert extract_code("```py\nunfinished = (1,") == "unfinished = (1,"  # cut at max_new_tokens
    assert extract_code("no fence at all") == "no fence at all"
    prompt = 'def f(x):\n    """doc"""\n'
    assert humaneval_program(prompt, "def f(x):\n    return x", "f") == prompt + "\ndef f(x):\n    return x"
    assert humaneval_program(prompt, "    return x\n", "f") == prompt + "    return x\n"
    assert humaneval_program(prompt, "return x\n", "f") == prompt + "    return x\n"


def test_options_and_rows_without_tests_get_clear_errors(orm):
    from schemas import JobSpec

    def spec(**kwargs):
        return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                       "orm_model": "code", "orm_kwargs": kwargs})

    for bad, message in (({"timeout": 0}, "timeout=0"), ({"language": "rust"}, "runs python"),
                         ({"memory_mb": 8}, "memory_mb=8"), ({"partial": "yes"}, "partial='yes'"),
                         ({"sandbox": "chroot"}, "sandbox='chroot'"), ({"nope": 1}, "allowed: timeout")):
        with pytest.raises(ConfigError, match=message):
            orms.create("code", spec(**bad))
    with pytest.raises(PermanentError, match="the row has no tests.*it has: answer"):
        run(orm, [({"answer": "1"}, "print(1)")])
    with pytest.raises(ConfigError, match="sandbox 'nosuch'|must be one of"):
        choose_mode("nosuch")


# --- hostile candidates ----------------------------------------------------------------------------------------

SECRET = "samplefleet-test-secret-4711"


def hostile(tmp: Path, port: int) -> list[tuple[str, dict, str, tuple[str, ...]]]:
    """(name, row, candidate, allowed verdict kinds): each returns the right answer only if its attack worked."""
    outside = tmp / "outside.txt"
    project = ROOT / "README.md"
    first_line = project.read_text().splitlines()[0]
    return [
        ("infinite loop", MBPP, "def hyp(a, b):\n    while True:\n        pass", ("timeout",)),
        ("infinite loop at load", MBPP, "while True:\n    pass", ("timeout",)),
        ("fork bomb", MBPP, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
         ("timeout",)),
        ("fork bomb that raises", MBPP, "import os\nwhile True:\n    os.fork()", ("error", "timeout", "crashed")),
        ("memory bomb", MBPP, "def hyp(a, b):\n    x = bytearray(8 << 30)\n    return 5.0", ("memory",)),
        ("growing memory", MBPP, "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))", ("memory",)),
        ("write outside", MBPP, f"def hyp(a, b):\n    open({str(outside)!r}, 'w').write('x')\n    return 5.0",
         ("error",)),
        ("write the project", MBPP, f"def hyp(a, b):\n    open({str(ROOT / 'PWNED')!r}, 'w').write('x')\n"
         "    return 5.0", ("error",)),
        ("read the project", MBPP, f"def hyp(a, b):\n    ok = open({str(project)!r}).readline().strip() == "
         f"{first_line!r}\n    return 5.0 if ok else 0", ("error", "wrong")),
        ("environment secret", MBPP, f"import os\ndef hyp(a, b):\n    return 5.0 if {SECRET!r} in str(os.environ) "
         "else 0", ("wrong",)),
        ("parent's environment", MBPP, "import os\ndef hyp(a, b):\n    return 5.0 if "
         f"{SECRET!r} in open(f'/proc/{{os.getppid()}}/environ').read() else 0", ("error", "wrong")),
        ("socket", MBPP, f"import socket\ndef hyp(a, b):\n    socket.create_connection(('127.0.0.1', {port}), 1)\n"
         "    return 5.0", ("error",)),
        ("gigabytes to stdout", STDIO, "import sys\nwhile True:\n    sys.stdout.write('x' * (1 << 20))",
         ("output limit",)),
        ("gigabytes printed by a function", MBPP, "def hyp(a, b):\n    while True:\n        print('x' * 100000)",
         ("timeout",)),
        ("kill the parent", MBPP, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
         "def hyp(a, b):\n    return 5.0", ("wrong", "crashed", "exited", "error")),
        ("kill everything", MBPP, "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n"
         "    pass\ndef hyp(a, b):\n    return 5.0", ("wrong", "crashed", "exited", "error")),
        ("sys.exit(0) at load", MBPP, "import sys\nsys.exit(0)", ("error",)),
        ("sys.exit(0) in the call", MBPP, "import sys\ndef hyp(a, b):\n    sys.exit(0)", ("error",)),
        ("os._exit(0) in the call", HUMANEVAL, "import os\ndef add_all(xs):\n    os._exit(0)", ("exited",)),
        ("redefine check", HUMANEVAL, "def check(candidate):\n    pass\ndef add_all(xs):\n    return 0", ("wrong",)),
        ("patch builtins", MBPP, "import builtins\nbuiltins.round = lambda *a: 1.414\n"
         "builtins.AssertionError = type('Nope', (Exception,), {})\ndef hyp(a, b):\n    return 5.0", ("wrong",)),
        ("always-equal result", HUMANEVAL, "class Eq(int):\n    def __eq__(self, other):\n        return True\n"
         "def add_all(xs):\n    return Eq(0)", ("error",)),
        ("forged verdict on every descriptor", MBPP, "import os\nfor fd in range(64):\n    try:\n"
         "        os.write(fd, b'\\n{\"passed\": 3, \"verdict\": \"pass\"}\\n.\\n')\n    except OSError:\n        pass\n"
         "def hyp(a, b):\n    return 0", ("wrong", "crashed")),
        ("forged output in stdio", STDIO, "print('{\"passed\": 3, \"verdict\": \"pass\"}')", ("wrong",)),
        ("read the judge's memory", MBPP, "import os\ndef hyp(a, b):\n    for pid in os.listdir('/proc'):\n"
         "        if pid.isdigit() and int(pid) != os.getpid():\n            try:\n"
         "                open(f'/proc/{pid}/mem', 'rb').read(1)\n                return 5.0\n"
         "            except OSError:\n                pass\n    return 0", ("wrong",)),
    ]


@pytest.fixture
def hostile_orm():
    """Three seconds a candidate: with one second, "growing memory" starved of CPU by other test processes (and by
    the fork bombs beside it) hit the wall clock before its memory limit ("timeout: loading the code")."""
    model = CodeORM(timeout=3.0, memory_mb=256, workers=2)
    yield model
    model.close()


def test_hostile_candidates_neither_pass_nor_hang_nor_harm(hostile_orm, tmp_path, monkeypatch):
    orm = hostile_orm
    monkeypatch.setenv("SAMPLEFLEET_SANDBOX_SECRET", SECRET)
    tmp_path.chmod(0o777)  # world-writable: even then nothing may land there
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    cases = hostile(tmp_path, listener.getsockname()[1])
    started = time.monotonic()
    scores, verdicts = run(orm, [(row, fence(code)) for _, row, code, _ in cases])
    took = time.monotonic() - started
    for (name, _, _, kinds), score, verdict in zip(cases, scores, verdicts, strict=True):
        assert score == 0.0, (name, verdict)
        assert verdict.split(":")[0] in kinds, (name, verdict)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()
    assert not (tmp_path / "outside.txt").exists() and not (ROOT / "PWNED").exists()
    assert took < 60, took  # each stopped by its limit, in parallel
    scores, _ = run(orm, [(MBPP, fence("import math\ndef hyp(a, b):\n    return math.hypot(a, b)"))] * 4)
    assert scores == [1.0] * 4  # the servers still work (or were replaced)


def test_nothing_is_left_running_after_close():
    pool = SandboxPool(1)
    job = {"kind": "calls", "code": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)",
           "setup": "", "tests": ["assert f() == 1"], "names": ["f"], "timeout": 1.0, "cpu_seconds": 3,
           "memory_mb": 256, "output_bytes": 1 << 20, "processes": 8, "partial": False}
    assert pool.run([job])[0]["verdict"].startswith("error: NameError")
    pool.close()
    if pool.mode in ("bwrap", "unshare"):  # the candidate's detached child went with the namespace
        left = subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True, text=True).stdout
        assert not left.strip(), left


# --- whole runs ---------------------------------------------------------------------------------------------------

def _ids(rows: list[dict]) -> list[str]:
    """Each row's id, as the stats file names it (its lines come in shard order, not the dataset's)."""
    from producer.rows import normalise

    return [normalise(row, index=i, where="t", system=None).id for i, row in enumerate(rows)]


def _reference_verdicts(rows: list[dict], candidates: dict[str, list[str]]) -> dict[str, int]:
    """Passing candidates per prompt text, judged by a plain ``python`` per candidate (no sandbox: the demo
    model's output is harmless), as a second opinion on the ORM's verdicts."""
    from workers.scoring.code_orm import row_tests

    passing = {}
    for row in rows:
        text = row.get("query") or row.get("prompt") or row.get("question")
        count = 0
        for cand in candidates.get(text, []):
            request = InferRequest(messages=[{"role": "user", "content": text}, {"role": "assistant", "content": cand}],
                                   columns={k: v for k, v in row.items() if k not in ("query", "question")})
            job = row_tests(request)
            count += _plain_run(job)
        passing[text] = count
    return passing


def _plain_run(job: dict) -> bool:
    if job["kind"] == "stdio":
        for given, wanted in job["tests"]:
            try:
                out = subprocess.run([sys.executable, "-c", job["code"]], input=given, capture_output=True,
                                     text=True, timeout=5).stdout
            except subprocess.TimeoutExpired:
                return False
            if out.split() != wanted.split():
                return False
        return True
    tests = "\n".join(job["tests"])
    program = f"{job['setup']}\n{job['code']}\n{tests}\n"
    try:
        return subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.model
def test_demo_model_on_the_code_example_gets_the_right_verdicts(tmp_path):
    """Stage 1 samples the demo model; stage 2 scores its candidates with code,format (weights), the dataset's
    own solutions included: every solution passes, the stats count what a plain runner counts, the report
    names the failures. Then one adaptive run."""
    small = ["--model", "smollm2-135m-instruct", "--max_new_tokens", "40", "--seed", "3"]
    gen = run_producer(str(EXAMPLE), *small, "--num_return_sequences", "3", "--output_file", "gen.jsonl", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    out = tmp_path / "sample_output"
    cands: dict[str, list[str]] = {}
    for line in read_jsonl(out / "gen.jsonl"):
        cands.setdefault(line["messages"][0]["content"], []).append(line["messages"][-1]["content"])
    score = run_producer(str(EXAMPLE), "--sampler_engine", "no", "--cache_files", "sample_output/gen.jsonl",
                         "--num_return_sequences", "3", "--orm_model", "code,format", "--orm_weights", "3", "1",
                         "--orm_kwargs", json.dumps({"code": {"timeout": 2}, "format": {"pattern": "."}}),
                         "--include_ground_truth", "true", "--write_scores", "true", "--output_file", "scored.jsonl",
                         cwd=tmp_path)
    assert score.returncode == 0, score.stderr[-3000:]
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    expected = _reference_verdicts(rows, cands)
    stats = read_jsonl(out / "scored.stats.jsonl")
    assert len(stats) == len(rows) == len(expected)
    scored = read_jsonl(out / "scored.jsonl")
    by_prompt = {line["messages"][-2]["content"]: line for line in scored}
    assert len(by_prompt) == len(rows)  # each prompt's own solution passes, so each has a row
    texts = [r.get("query") or r.get("prompt") or r.get("question") for r in rows]
    by_id = {line["id"]: line for line in stats}
    for text, line in zip(texts, (by_id[i] for i in _ids(rows))):
        assert line["samples"] == 3 and line["correct"] == expected[text], (text, line)
        assert sum(line.get("failures", {}).values()) == 3 - line["correct"], line
        assert by_prompt[text]["scores"]["verdict"] == "pass"
        assert set(by_prompt[text]["scores"]["orms"]) == {"code", "format"}
    report = subprocess.run([sys.executable, "-m", "producer", "report", str(out / "scored.jsonl")], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert report.returncode == 0, report.stderr[-2000:]
    page = (out / "scored.report.html").read_text()
    if any(line.get("failures") for line in stats):
        assert "Why candidates failed the tests" in page
    adaptive = run_producer(str(EXAMPLE), *small, "--max_new_tokens", "24", "--num_return_sequences", "2",
                            "--target_correct", "1", "--orm_model", "code", "--orm_kwargs", '{"timeout": 2}',
                            "--output_file", "adaptive.jsonl", cwd=tmp_path)
    assert adaptive.returncode == 0, adaptive.stderr[-3000:]
    lines = read_jsonl(out / "adaptive.stats.jsonl")
    assert len(lines) == len(rows) and all(s["correct"] is not None for s in lines)


CACHE = [  # (prompt row index in examples/code.jsonl, candidate, passes)
    (0, fence("def add(a, b):\n    return a + b"), True),
    (0, fence("def add(a, b):\n    return a - b"), False),
    (1, "    return max(xs)\n", True),
    (1, fence("import os\ndef largest(xs):\n    os._exit(0)"), False),
    (2, fence("def square(n):\n    return n ** 2"), True),
    (2, fence("def square(n):\n    while True:\n        pass"), False),
    (3, fence("def is_even(n):\n    return not n % 2"), True),
    (3, fence("def is_even(n):\n    return n % 2"), False),
    (4, fence("print(sum(map(int, input().split())))"), True),
    (4, fence("print(0)"), False),
    (5, fence("print(input()[::-1])"), True),
    (5, fence("import sys\nsys.stdout.write('y' * (64 << 20))"), False),
]


def test_local_and_fleet_scoring_give_the_same_verdicts(tmp_path, redis_server, workers):
    """Hand-written candidates scored from a cache file in-process and on a real fleet worker: same rows, same
    stats, every verdict as written."""
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    texts = [r.get("query") or r.get("prompt") or r.get("question") for r in rows]
    write_jsonl(tmp_path / "cache.jsonl", [{"messages": [{"role": "user", "content": texts[i]},
                                                         {"role": "assistant", "content": c}]} for i, c, _ in CACHE])
    job = [str(EXAMPLE), "--sampler_engine", "no", "--cache_files", "cache.jsonl", "--num_return_sequences", "2",
           "--orm_model", "code", "--orm_kwargs", '{"timeout": 1}', "--write_scores", "true",
           "--output_format", "trl_preference"]
    workers.start()
    local = run_producer(*job, "--output_file", "local.jsonl", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    fleet = run_cli("submit", *job, "--output_file", "fleet.jsonl", "--wait", "--no_progress",
                    broker=redis_server.url, cwd=tmp_path)
    assert fleet.returncode == 0, fleet.stderr[-2000:] + fleet.stdout
    out = tmp_path / "sample_output"
    assert (out / "fleet.stats.jsonl").read_text() == (out / "local.stats.jsonl").read_text()
    assert (out / "fleet.jsonl").read_text() == (out / "local.jsonl").read_text()
    by_id = {line["id"]: line for line in read_jsonl(out / "local.stats.jsonl")}
    stats = [by_id[i] for i in _ids(rows)]
    assert [s["correct"] for s in stats] == [1] * 6
    assert [next(iter(s["failures"])).split(":")[0] for s in stats] == \
        ["wrong", "exited", "timeout", "wrong", "wrong", "output limit"]
    pairs = read_jsonl(out / "local.jsonl")
    assert len(pairs) == 6
    for pair in pairs:  # chosen is the passing candidate, rejected the failing one
        i = texts.index(pair["prompt"][-1]["content"])
        good, bad = (c for j, c, _ in sorted(((j, c, p) for j, c, p in CACHE if j == i), key=lambda t: not t[2]))
        assert pair["chosen"][-1]["content"] == good and pair["rejected"][-1]["content"] == bad


@pytest.mark.skipif(os.geteuid() != 0, reason="the unshare fallback needs root")
def test_without_bubblewrap_root_falls_back_to_unshare_and_nothing_passes(tmp_path, monkeypatch):
    """No bwrap on PATH: auto picks unshare (network, pid and mount namespaces, nobody, tmpfs over /tmp and the
    project); the hostile candidates that target files, network and secrets still fail."""
    from workers.scoring import sandbox

    sandbox._works.cache_clear()
    try:
        monkeypatch.setattr(sandbox.shutil, "which", lambda name, **kw: None if name == "bwrap" else f"/usr/bin/{name}")
        sandbox._works.cache_clear()
        assert choose_mode("auto") == "unshare"
        with pytest.raises(ConfigError, match="install bubblewrap"):
            choose_mode("bwrap")
    finally:
        sandbox._works.cache_clear()
    monkeypatch.setenv("SAMPLEFLEET_SANDBOX_SECRET", SECRET)
    tmp_path.chmod(0o777)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    picked = {"write outside", "write the project", "read the project", "environment secret", "socket",
              "kill everything", "fork bomb", "sys.exit(0) at load"}
    cases = [c for c in hostile(tmp_path, listener.getsockname()[1]) if c[0] in picked]
    model = CodeORM(timeout=1.0, memory_mb=256, workers=2, sandbox="unshare")
    try:
        scores, verdicts = run(model, [(row, fence(code)) for _, row, code, _ in cases])
    finally:
        model.close()
        listener.close()
    assert scores == [0.0] * len(cases), list(zip([c[0] for c in cases], verdicts))
    assert not (tmp_path / "outside.txt").exists() and not (ROOT / "PWNED").exists()
