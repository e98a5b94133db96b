"""``--external_plugins file.py``: user files that add reward models to the ``orms`` / ``prms`` registries.

A swift plugin file works with one changed line: its ``from swift.rewards import ORM, orms`` (or
``swift.plugin``) becomes ``from workers.scoring import ORM, orms``. Entries are checked as they are
registered (a class, a constructor that needs no arguments, a call that takes the requests and the
ground truths), so a wrong plugin fails at start-up with its file and entry named.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError


def check_plugin(name: str, cls: Any) -> None:
    """Refuse an entry that swift's calling convention could not call."""
    where = f"reward model {name!r}"
    if not inspect.isclass(cls):
        raise ConfigError(f"{where}: register a class (swift style: orms[{name!r}] = MyORM), got {cls!r}")
    required = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise ConfigError(f"{where}: {cls.__name__}() must be constructible with no arguments; it requires "
                          f"{', '.join(p.name for p in required)}")
    call = getattr(cls, "__call__", None)
    params = list(inspect.signature(call).parameters.values())[1:] if call else []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not (len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)):
        raise ConfigError(f"{where}: {cls.__name__}.__call__ must take (infer_requests, ground_truths, **kwargs); "
                          f"it takes ({', '.join(p.name for p in params)})")


def load_plugins(paths: list[str]) -> None:
    """Import each file once per process; any failure names the file and what went wrong."""
    for path in paths:
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise ConfigError(f"--external_plugins {path}: no such file")
        name = "samplefleet_plugin_" + hashlib.md5(str(file).encode()).hexdigest()[:10]
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except ConfigError as exc:
            del sys.modules[name]
            raise ConfigError(f"--external_plugins {path}: {exc}") from exc
        except BaseException as exc:  # a plugin can raise anything at import, SyntaxError included
            del sys.modules[name]
            raise ConfigError(f"--external_plugins {path}: failed to import: {type(exc).__name__}: {exc}") from exc
