"""``--orm_model code``: runs each candidate against its row's tests in the sandbox; it passes when all pass.

Row conventions, told apart by the columns (checked in this order):

- HumanEval: ``test`` (code defining ``check(candidate)``) and ``entry_point``; the function signature and
  docstring are the ``prompt`` column, or the prompt's last user turn. One test: ``check(entry_point)``.
- MBPP: ``test_list`` (assert lines, a list or its JSON), optional ``test_setup_code`` / ``test_imports``
  (run before the asserts). One test per assert line.
- stdin/stdout (APPS, CodeContests, TACO): ``input_output`` (JSON with ``inputs`` / ``outputs``; with a
  ``fn_name``, each input is the argument list of a call, as APPS's call-based problems), or ``inputs`` /
  ``outputs`` columns. The program reads stdin; its output must equal the expected one after whitespace
  normalisation (compared as whitespace-separated tokens). One test per input.

The code is the candidate's last fenced block tagged ``python`` / ``py`` / ``python3`` or untagged (an unclosed
last fence counts, for candidates cut at max_new_tokens), else the whole text. A HumanEval candidate that
defines the entry point is run after the prompt (so the prompt's imports and helpers are there); one that
only writes the body is appended to the prompt, re-indented when it came flush left.

The score is 1.0 when every test passes, else 0.0; ``partial`` scores the share of tests passed. The last
call's verdicts (``pass``, ``wrong: test 2 `assert ...` ``, ``timeout: test 1``, ``memory: ...``,
``error: NameError ...``, ``output limit``, ``exited``, ``crashed``) are kept in ``last_verdicts`` for the
score stage, which puts them in each candidate's scores; stats and the report count them.
"""
from __future__ import annotations

import ast
import builtins
import json
import math
import re
import textwrap
from typing import TYPE_CHECKING, Any, ClassVar

from schemas.errors import ConfigError, PermanentError
from workers.scoring.base import ORM, InferRequest
from workers.scoring.orm_kinds import _options, _require, _whole
from workers.scoring.sandbox import MODES, Limits, SandboxPool
from workers.threads import thread_budget

if TYPE_CHECKING:
    from schemas import JobSpec

LANGUAGES = ("python",)
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")
#: Compares a call-based APPS answer as APPS does: tuples are lists, and an output may come wrapped in a list.
_APPS_SAME = """
def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v
def _same(got, wanted):
    return _plain(got) == _plain(wanted) or [_plain(got)] == _plain(wanted)
"""


def extract_code(text: str) -> str:
    """The last python (or untagged) fenced block, else the whole text."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    return blocks[-1] if blocks else text


def _compiles(source: str) -> bool:
    try:
        compile(source, "<candidate>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """The program a HumanEval candidate stands for: prompt + whole function, or prompt + body."""
    if _defines(code, entry_point):
        return f"{prompt}\n{code}"
    joined = prompt + code
    if _compiles(joined):
        return joined
    indented = prompt + textwrap.indent(code, "    ")
    return indented if _compiles(indented) else joined


def _listed(value: Any, column: str) -> list[Any]:
    """A list column, or its JSON text (csv and parquet writers store lists as text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value] if column != "input_output" else value
    if not isinstance(value, (list, dict)):
        raise PermanentError(f"code ORM: column {column!r} must be a list (or its JSON), got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _free_names(tests: list[str], setup: str) -> list[str]:
    """Names the tests read that neither the setup code nor Python defines: the candidate's functions."""
    loaded, defined = set(), set(dir(builtins))
    for number, source in enumerate((setup, *tests)):
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise PermanentError(f"code ORM: a test of the row does not parse: {exc.msg} in {source[:80]!r}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) and number else defined).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    return sorted(loaded - defined)


def row_tests(request: InferRequest) -> dict[str, Any]:
    """The job fields a row's tests give: ``kind`` (calls / stdio), ``setup``, ``tests``, ``names``, ``code``."""
    cols = request.columns
    code = extract_code(request.response)
    if "test" in cols and "entry_point" in cols:
        prompt = cols.get("prompt") or next((m["content"] for m in reversed(request.messages[:-1])
                                             if m["role"] == "user"), "")
        entry = str(cols["entry_point"])
        return {"kind": "calls", "setup": prompt, "tests": [f"{cols['test']}\ncheck({entry})\n"],
                "names": [entry], "code": humaneval_program(prompt, code, entry)}
    if "test_list" in cols:
        tests = [str(t) for t in _listed(cols["test_list"], "test_list")]
        imports = cols.get("test_imports") or []
        setup = "\n".join([*map(str, _listed(imports, "test_imports")), str(cols.get("test_setup_code") or "")])
        return {"kind": "calls", "setup": setup, "tests": tests, "names": _free_names(tests, setup), "code": code}
    if "input_output" in cols or ("inputs" in cols and "outputs" in cols):
        spec = _listed(cols["input_output"], "input_output") if "input_output" in cols else cols
        if not isinstance(spec, dict) or not isinstance(spec.get("inputs"), list) \
                or not isinstance(spec.get("outputs"), list) or len(spec["inputs"]) != len(spec["outputs"]):
            raise PermanentError("code ORM: input_output must hold lists 'inputs' and 'outputs' of equal length")
        if spec.get("fn_name"):
            name = str(spec["fn_name"])
            tests = [f"assert _same({name}(*{args!r}), {out!r})" for args, out in zip(spec["inputs"], spec["outputs"])]
            return {"kind": "calls", "setup": _APPS_SAME, "tests": tests, "names": [name], "code": code}
        return {"kind": "stdio", "setup": "", "names": [], "code": code,
                "tests": [[_text(i), _text(o)] for i, o in zip(spec["inputs"], spec["outputs"])]}
    raise PermanentError("code ORM: the row has no tests; expected the columns test + entry_point (HumanEval), "
                         "test_list (MBPP), or input_output / inputs + outputs (stdin/stdout); it has: "
                         + (", ".join(sorted(cols)) or "none"))


class CodeORM(ORM):
    """1.0 when the candidate passes all of its row's tests in the sandbox (``partial``: the share passed)."""

    name: ClassVar[str] = "code"
    needs_ground_truth = False

    def __init__(self, timeout: float = 5.0, memory_mb: int = 1024, language: str = "python",
                 partial: bool = False, workers: int | None = None, sandbox: str = "auto") -> None:
        if language not in LANGUAGES:
            raise ConfigError(f"--orm_kwargs language={language!r}: the code ORM runs {', '.join(LANGUAGES)}")
        self.limits = Limits(timeout=timeout, memory_mb=memory_mb)
        self.partial = partial
        self.pool = SandboxPool(workers or thread_budget(), sandbox)
        self.last_verdicts: list[str] = []

    @classmethod
    def from_spec(cls, spec: JobSpec) -> CodeORM:
        opts = _options(spec, cls.name, {"timeout": 5.0, "memory_mb": 1024, "language": "python",
                                         "partial": False, "workers": thread_budget(), "sandbox": "auto"})
        if not isinstance(opts["partial"], bool):
            raise ConfigError(f"--orm_kwargs partial={opts['partial']!r}: must be true or false")
        if opts["sandbox"] not in MODES:
            raise ConfigError(f"--orm_kwargs sandbox={opts['sandbox']!r}: must be one of {', '.join(MODES)}")
        return cls(timeout=_require("timeout", opts["timeout"], lambda v: 0 < v <= 600, "seconds, > 0 and <= 600"),
                   memory_mb=_require("memory_mb", opts["memory_mb"], lambda v: _whole(v) and v >= 64,
                                      "a whole number of MiB >= 64"),
                   language=opts["language"], partial=opts["partial"],
                   workers=_require("workers", opts["workers"], _whole, "a whole number >= 1"),
                   sandbox=opts["sandbox"])

    def job(self, request: InferRequest) -> dict[str, Any]:
        """What the sandbox server runs for one request."""
        job = row_tests(request)
        t = self.limits.timeout
        per_process = math.ceil(t) + 1 if job["kind"] == "stdio" else math.ceil(t * (len(job["tests"]) + 1)) + 1
        return {**job, "timeout": t, "cpu_seconds": per_process, "memory_mb": self.limits.memory_mb,
                "output_bytes": self.limits.output_bytes, "processes": self.limits.processes,
                "partial": self.partial}

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[float]:
        jobs = [self.job(r) for r in infer_requests]
        distinct: dict[str, int] = {}  # the same code against the same tests runs once
        keys = [distinct.setdefault(json.dumps(j, sort_keys=True), len(distinct)) for j in jobs]
        unique = list({k: j for k, j in zip(keys, jobs)}.values())
        results = self.pool.run(unique)
        scores, self.last_verdicts = [], []
        for job, k in zip(jobs, keys):
            result = results[k]
            passed, total = result["passed"], len(job["tests"])
            scores.append(passed / total if self.partial else float(passed == total and result["verdict"] == "pass"))
            self.last_verdicts.append(result["verdict"])
        return scores

    def close(self) -> None:
        self.pool.close()
