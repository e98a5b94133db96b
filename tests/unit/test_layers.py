"""The layers import one way (schemas <- workers <- producer) with no import cycle, and the producer's command
line loads neither torch nor the Celery tasks."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "workers", "producer")
MAY_IMPORT = {"schemas": {"schemas"}, "workers": {"schemas", "workers"}, "producer": {"schemas", "workers", "producer"}}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, *, top_level: bool) -> set[str]:
    """Our modules ``path`` imports (``top_level``: only those imported when it is, not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [f"{module} imports {name}" for module, path in _modules().items()
             for name in _imports(path, top_level=False) if name.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]]
    assert not wrong, wrong


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {n for n in _imports(p, top_level=True) if n in modules and n != m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            for name in sorted(graph[module]):
                visit(name, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_producer_command_line_loads_neither_torch_nor_the_tasks():
    code = ("import sys, producer.cli; "
            "print([m for m in ('torch', 'workers.tasks', 'workers.app', 'celery') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
