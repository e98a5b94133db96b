"""Name -> factory registries, one per plug-in kind (engines, ORMs, PRMs, storages).

Entries are ``"module:attribute"`` strings so that heavy imports (torch, vLLM) happen only when that entry
is used. A registry that takes plug-ins (ORMs, PRMs) is never changed by them: each job gets a ``layer()``
over it, and plugin files register into the job's layer, so one job's plugin cannot replace a built-in or
another job's entry on a warm worker.
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from schemas.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of factories; an unknown name lists the known ones.

    ``plugin(name, obj) -> factory`` checks an entry a plugin file registers (``registry[name] = obj``) and
    turns it into a factory; without it the registry takes no plugins.
    """

    def __init__(self, kind: str, option: str, entries: dict[str, str | Callable[..., T]] | None = None,
                 aliases: dict[str, str] | None = None, plugin: Callable[[str, Any], Callable[..., T]] | None = None,
                 parent: "Registry[T] | None" = None) -> None:
        self.kind, self.option, self._plugin, self.parent = kind, option, plugin, parent
        self._entries: dict[str, str | Callable[..., T]] = dict(entries or {})
        self._aliases = dict(aliases or {})
        self._sources: dict[str, Any] = {}  # plugin name -> what was registered, to tell a repeat from a clash
        self._target: ContextVar[Registry[T] | None] = ContextVar(f"{kind}-target", default=None)

    def register(self, name: str, factory: str | Callable[..., T]) -> None:
        self._entries[name] = factory

    def layer(self) -> "Registry[T]":
        """A job's view: this registry's entries plus the job's own (which never reach this one)."""
        return Registry(self.kind, self.option, aliases=self._aliases, plugin=self._plugin, parent=self)

    @contextlib.contextmanager
    def collecting(self, layer: "Registry[T]") -> Iterator[None]:
        """While a plugin file is imported, ``registry[name] = cls`` on this registry goes to ``layer``."""
        token = self._target.set(layer)
        try:
            yield
        finally:
            self._target.reset(token)

    def __setitem__(self, name: str, obj: Any) -> None:
        """swift's plugin style, ``orms['name'] = MyORM``; a name of the registry below is refused."""
        self.add(name, obj, replace=False)

    def replace(self, name: str, obj: Any) -> None:
        """Replace a built-in entry for this job only (a plugin's explicit choice)."""
        self.add(name, obj, replace=True)

    def add(self, name: str, obj: Any, *, replace: bool) -> None:
        target = self._target.get()
        if target is not None:
            target.add(name, obj, replace=replace)
            return
        if self._plugin is None:
            raise ConfigError(f"{self.kind} {name!r}: this registry takes no plugins")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name {name!r}: register under a non-empty string")
        builtin = (self.parent is not None and name in self.parent) or (name in self._entries
                                                                          and name not in self._sources)
        if builtin and not replace:
            raise ConfigError(f"{self.kind} {name!r} is built in: register yours under another name, or call "
                              f"{'orms' if self.kind == 'ORM' else 'prms'}.replace({name!r}, YourClass) to "
                              "replace it for this job")
        if name in self._sources and self._sources[name] is not obj:
            raise ConfigError(f"{self.kind} {name!r} is registered twice by this job's plugins "
                              f"({self._sources[name]!r} and {obj!r})")
        self._entries[name] = self._plugin(name, obj)
        self._sources[name] = obj

    def entries_added(self) -> dict[str, Any]:
        """What plugins registered in this layer (name -> the object), to replay into another job's layer."""
        return dict(self._sources)

    def _find(self, name: str) -> str | Callable[..., T] | None:
        if name in self._entries:
            return self._entries[name]
        return self.parent._find(name) if self.parent is not None else None

    def __contains__(self, name: str) -> bool:
        return self._find(self._aliases.get(name, name)) is not None

    def _names(self) -> set[str]:
        return set(self._entries) | (self.parent._names() if self.parent is not None else set())

    def names(self) -> list[str]:
        return sorted(self._names()) + sorted(f"{a} (= {t})" for a, t in self._aliases.items())

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (aliases resolved), or a ConfigError listing the known ones."""
        name = self._aliases.get(name, name)
        if self._find(name) is None:
            raise ConfigError(f"{self.option} {name!r}: unknown {self.kind}; known: {', '.join(self.names())}")
        return name

    def factory(self, name: str) -> Callable[..., T]:
        entry = self._find(self.canonical(name))
        if isinstance(entry, str):
            module, _, path = entry.partition(":")
            entry = importlib.import_module(module)
            for attr in path.split("."):
                entry = getattr(entry, attr)
        return entry

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.factory(name)(*args, **kwargs)
