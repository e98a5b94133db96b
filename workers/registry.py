"""Name -> factory registries, one per plug-in kind (engines; later ORMs, PRMs, sinks).

Entries are ``"module:attribute"`` strings so that heavy imports (torch, vLLM)
happen only when that entry is used.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from schemas.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of factories; an unknown name lists the known ones."""

    def __init__(self, kind: str, option: str, entries: dict[str, str | Callable[..., T]] | None = None,
                 aliases: dict[str, str] | None = None, check: Callable[[str, Any], None] | None = None) -> None:
        self.kind, self.option, self._check = kind, option, check
        self._entries: dict[str, str | Callable[..., T]] = dict(entries or {})
        self._aliases = dict(aliases or {})

    def register(self, name: str, factory: str | Callable[..., T]) -> None:
        self._entries[name] = factory

    def __setitem__(self, name: str, cls: Callable[[], T]) -> None:
        """swift's plugin style, ``orms['name'] = MyORM``: a class built with no arguments."""
        if self._check:
            self._check(name, cls)
        self._entries[name] = lambda *args, **kwargs: cls()

    def __contains__(self, name: str) -> bool:
        return self._aliases.get(name, name) in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries) + sorted(f"{a} (= {t})" for a, t in self._aliases.items())

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (aliases resolved), or a ConfigError listing the known ones."""
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise ConfigError(f"{self.option} {name!r}: unknown {self.kind}; known: {', '.join(self.names())}")
        return name

    def factory(self, name: str) -> Callable[..., T]:
        entry = self._entries[self.canonical(name)]
        if isinstance(entry, str):
            module, _, path = entry.partition(":")
            entry = importlib.import_module(module)
            for attr in path.split("."):
                entry = getattr(entry, attr)
        return entry

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.factory(name)(*args, **kwargs)
