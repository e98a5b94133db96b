"""``--external_plugins file.py``: user files that add reward models to a job's ``orms`` / ``prms``.

An unchanged swift plugin file loads: while plugin files are imported, and only when the real ms-swift is not
importable, ``swift.rewards`` and ``swift.plugin`` resolve to our registries and base classes (an import
hook that lives only as long as the import, so no ``swift`` package shadows a real one). A file registers
with ``orms['name'] = MyORM`` or a module-level ``orms = {...}`` / ``prms = {...}`` dict. The classes need
not subclass ours; ``PluginModel`` adapts what swift's files do: no-argument construction (``args=None,
**kwargs`` is fine), ``__call__`` or ``infer``, swift's ``(infer_requests, ground_truths)`` or GRPO's
``(completions, **kwargs)`` with the dataset's columns (``solution``, ...) as keyword lists, sync or async,
and results that are floats, lists of step floats or chat-completion-shaped objects whose content is the number.

Registries are per job: ``load_plugins`` returns a fresh layer over the built-ins holding just this job's
entries, so a plugin cannot replace ``math`` (unless it calls ``orms.replace``) nor another job's entry.
A file is imported once per path and content: a file that changed is imported again.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import json
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, PermanentError, PluginError
from workers.registry import Registry
from workers.scoring.base import ORM, PRM, InferRequest, RewardModel

SWIFT_MODULES = ("swift", "swift.rewards", "swift.plugin", "swift.rewards.orm", "swift.rewards.prm",
                 "swift.plugin.orm", "swift.plugin.prm", "swift.llm", "swift.infer_engine")
_REQUESTS = ("infer_requests", "requests", "inputs")  # names under which a call takes the requests themselves


def _method(cls: type) -> tuple[str, Any]:
    """The method that scores: a class's own ``infer`` (swift's PRM documentation), else its ``__call__``
    (not our base class's placeholder)."""
    if callable(getattr(cls, "infer", None)):
        return "infer", cls.infer
    owner = next((c for c in cls.__mro__ if "__call__" in vars(c)), object)
    if owner in (object, RewardModel):
        return "", None
    return "__call__", cls.__call__


def _params(fn: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())[1:]  # without self


def check_plugin(name: str, cls: Any) -> "type":
    """Refuse an entry that no convention could build or call, naming the entry and what is wrong."""
    where = f"reward model {name!r}"
    if not inspect.isclass(cls):
        raise ConfigError(f"{where}: register a class (swift style: orms[{name!r}] = MyORM), got {cls!r}")
    required = [p for p in _params(cls.__init__)
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise ConfigError(f"{where}: {cls.__name__}() must be constructible with no arguments; it requires "
                          f"{', '.join(p.name for p in required)}")
    method, fn = _method(cls)
    if fn is None:
        raise ConfigError(f"{where}: {cls.__name__} has no __call__ or infer method to score with")
    params = _params(fn)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not (positional or takes_any):
        raise ConfigError(f"{where}: {cls.__name__}.{method} must take the requests: (infer_requests, ground_truths, "
                          f"**kwargs), or GRPO's (completions, **kwargs); it takes "
                          f"({', '.join(p.name for p in params)})")
    return cls


def _content(value: Any) -> Any:
    """A score as swift's reward models may return it: a number, a list of step numbers, or a chat completion
    (object or dict) whose first choice's message content is the number or a JSON list of them."""
    choices = value.get("choices") if isinstance(value, dict) else getattr(value, "choices", None)
    if choices is None:
        return value.tolist() if hasattr(value, "tolist") else value
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else getattr(first, "message", None)
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    if isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            return content  # validate_scores names it as not a number
    return content


class PluginModel(RewardModel):
    """A plugin class, built once, called the way its signature asks; failures name the plugin."""

    def __init__(self, name: str, cls: type) -> None:
        super().__init__()
        self.name, self.cls = name, cls
        self.label = f"{name!r} ({cls.__module__.removeprefix('samplefleet_plugin_')}:{cls.__qualname__})"
        try:
            self.model = cls()
        except Exception as exc:
            raise PermanentError(f"reward model {self.label}: {cls.__name__}() raised {type(exc).__name__}: "
                                 f"{exc}") from exc
        self.needs_ground_truth = bool(getattr(self.model, "needs_ground_truth", True))
        self.method = _method(cls)[0]

    def _arguments(self, requests: list[InferRequest], truths: list[str | None]) -> tuple[list, dict]:
        """Positional and keyword arguments for the plugin's own signature."""
        columns = sorted({k for r in requests for k in r.columns})
        offer: dict[str, Any] = {k: [r.columns.get(k) for r in requests] for k in columns}
        offer.setdefault("solution", list(truths))
        offer.update(infer_requests=requests, completions=[r.response for r in requests], ground_truths=list(truths),
                     messages=[r.messages for r in requests], prompts=[r.messages[:-1] for r in requests])
        args, kwargs, params = [], {}, _params(getattr(self.cls, self.method))
        for k, p in enumerate(params):
            if p.kind == p.VAR_KEYWORD:
                kwargs.update({n: v for n, v in offer.items() if n not in kwargs and n not in _REQUESTS})
            elif p.kind == p.VAR_POSITIONAL:
                args += [requests, truths][len(args):]
            elif p.name in offer and p.name not in _REQUESTS:
                kwargs[p.name] = offer[p.name]
            elif k == 0 and p.kind != p.KEYWORD_ONLY:
                args.append(requests)
            elif k == 1 and p.kind != p.KEYWORD_ONLY and p.default is p.empty:
                args.append(truths)
        return args, kwargs

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Any]:
        args, named = self._arguments(infer_requests, ground_truths)
        try:
            result = getattr(self.model, self.method)(*args, **named)
            if inspect.isawaitable(result):  # swift's AsyncORM
                result = asyncio.run(_awaited(result))
        except Exception as exc:
            raise PluginError(f"reward model {self.label} raised {type(exc).__name__}: {exc}") from exc
        if hasattr(result, "tolist"):
            result = result.tolist()
        return [_content(v) for v in result] if isinstance(result, (list, tuple)) else result

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if callable(close):
            close()


async def _awaited(result: Any) -> Any:
    return await result


def plugin_factory(name: str, obj: Any):
    """What a registry stores for a plugin entry: checked now, built (``cls()``) when the job needs it."""
    cls = check_plugin(name, obj)
    return lambda *args, **kwargs: PluginModel(name, cls)


@dataclass
class JobRegistries:
    """One job's reward-model names: the built-ins plus what its plugin files registered."""

    orms: Registry[RewardModel]
    prms: Registry[RewardModel]


@dataclass
class _Loaded:
    module: types.ModuleType
    orms: dict[str, Any]
    prms: dict[str, Any]


_LOADED: dict[str, _Loaded] = {}  # "path:content md5" -> what importing it registered


def _swift_module(name: str) -> types.ModuleType:
    from workers import scoring

    module = types.ModuleType(name)
    module.__path__ = []  # a package, so swift.rewards.orm and the like import too
    module.__dict__.update(ORM=ORM, PRM=PRM, AsyncORM=ORM, orms=scoring.orms, prms=scoring.prms,
                           InferRequest=InferRequest, RewardModel=RewardModel)
    return module


class _SwiftShim(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``swift.rewards`` / ``swift.plugin`` from our registries while plugin files are imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in SWIFT_MODULES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _swift_module(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _swift_tables() -> dict[int, set[str]]:
    """With the real ms-swift installed: its ``orms`` / ``prms`` dicts (by id) and the names already in them,
    so that only what a plugin file adds to them is taken."""
    tables: dict[int, set[str]] = {}
    for name in ("swift.rewards", "swift.plugin"):
        try:
            module = importlib.import_module(name)
            found = [getattr(module, attr, None) for attr in ("orms", "prms")]
        except Exception:  # noqa: BLE001 - a broken or partial ms-swift: the file's own import will say so
            continue
        tables.update({id(t): set(t) for t in found if isinstance(t, dict)})
    return tables


@contextlib.contextmanager
def _swift_names(tables: dict[int, set[str]]) -> Iterator[None]:
    """The shim, only when ms-swift itself is not installed, removed (with its modules) afterwards; with ms-swift
    installed, ``tables`` gets a snapshot of its registries."""
    try:
        real = importlib.util.find_spec("swift") is not None
    except (ImportError, ValueError):
        real = False
    if real:
        tables.update(_swift_tables())
        yield
        return
    shim = _SwiftShim()
    sys.meta_path.insert(0, shim)
    try:
        yield
    finally:
        sys.meta_path.remove(shim)
        for name in _shimmed():
            del sys.modules[name]


def _shimmed() -> list[str]:
    return [n for n in SWIFT_MODULES if isinstance(getattr(sys.modules.get(n), "__loader__", None), _SwiftShim)]


def plugin_key(path: str) -> str:
    """A plugin file's identity: its resolved path and a hash of its content (a changed file is another plugin)."""
    file = Path(path).expanduser().resolve()
    return f"{file}:{hashlib.md5(file.read_bytes()).hexdigest()}" if file.is_file() else f"{file}:missing"


def _import(file: Path, key: str, shown: str) -> _Loaded:
    """Import one plugin file (``key``: its ``plugin_key``) into fresh layers and record what it registered."""
    from workers import scoring

    name = f"samplefleet_plugin_{file.stem}_{hashlib.md5(key.encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    orms, prms = scoring.orms.layer(), scoring.prms.layer()
    sys.modules[name] = module
    swift_tables: dict[int, set[str]] = {}
    try:
        with _swift_names(swift_tables), scoring.orms.collecting(orms), scoring.prms.collecting(prms):
            spec.loader.exec_module(module)
            for attr, layer in (("orms", orms), ("prms", prms)):
                table = getattr(module, attr, None)
                if isinstance(table, dict):  # a module-level ``prms = {'custom': CustomPRM}``, or ms-swift's own dict
                    for key, cls in table.items():
                        if key not in swift_tables.get(id(table), ()):
                            layer[key] = cls
    except ConfigError as exc:
        del sys.modules[name]
        raise ConfigError(f"--external_plugins {shown}: {exc}") from None
    except BaseException as exc:  # a plugin can raise anything at import, SyntaxError included
        del sys.modules[name]
        raise ConfigError(f"--external_plugins {shown}: failed to import: {type(exc).__name__}: {exc}") from None
    return _Loaded(module, orms.entries_added(), prms.entries_added())


def load_plugins(paths: Sequence[str]) -> JobRegistries:
    """The job's registries, with each plugin file's entries; any failure names the file and the problem."""
    from workers import scoring

    job = JobRegistries(scoring.orms.layer(), scoring.prms.layer())
    for path in paths:
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise ConfigError(f"--external_plugins {path}: no such file")
        key = plugin_key(path)
        if key not in _LOADED:
            _LOADED[key] = _import(file, key, path)
        loaded = _LOADED[key]
        try:
            for layer, added in ((job.orms, loaded.orms), (job.prms, loaded.prms)):
                for name, cls in added.items():
                    layer.add(name, cls, replace=name in layer.parent)  # a replace was allowed at import
        except ConfigError as exc:
            raise ConfigError(f"--external_plugins {path}: {exc}") from None
    return job

