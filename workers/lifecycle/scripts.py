"""The Lua scripts of ``lua/``, each run with its keys and arguments by name.

A script's header names its KEYS and ARGV in order (``-- KEYS: job leases ...``; a last name written
``...name`` takes the rest) and the snippets of ``lua/lib/`` it uses (``-- USES: now rearm``). The loader
turns the names into Lua locals, so a body reads ``leases``, not ``KEYS[5]``, and ``Script`` fills the
positions from names, so no caller writes a position: the header is the one place they are written.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from workers.lifecycle.keys import Keys

LUA = Path(__file__).with_name("lua")


@dataclass(frozen=True)
class Header:
    keys: tuple[str, ...]
    args: tuple[str, ...]
    uses: tuple[str, ...]


def _header(text: str) -> Header:
    found = {"KEYS": (), "ARGV": (), "USES": ()}
    for line in text.splitlines():
        for label in found:
            if line.startswith(f"-- {label}:"):
                found[label] = tuple(line.split(":", 1)[1].split())
    return Header(found["KEYS"], found["ARGV"], found["USES"])


def _locals(table: str, names: tuple[str, ...]) -> list[str]:
    """Lua locals for a header's names (``...rest``: a list of what is left)."""
    out = []
    for i, name in enumerate(names, 1):
        if name.startswith("..."):
            rest = name[3:]
            out.append(f"local {rest} = {{}} for i = {i}, #{table} do {rest}[#{rest} + 1] = {table}[i] end")
        else:
            out.append(f"local {name} = {table}[{i}]")
    return out


@functools.cache
def source(name: str) -> tuple[Header, str]:
    """A script's header and the text Redis runs: its names as locals, the snippets it uses, its body."""
    text = (LUA / f"{name}.lua").read_text()
    header = _header(text)
    given = {n.removeprefix("...") for n in header.keys}
    parts = [*_locals("KEYS", header.keys), *_locals("ARGV", header.args)]
    for snippet in header.uses:
        lib = (LUA / "lib" / f"{snippet}.lua").read_text()
        needs = {n.removeprefix("...") for n in _header(lib).keys}
        if not needs <= given:
            raise ValueError(f"lua/{name}.lua uses {snippet}, which needs KEYS {sorted(needs - given)}")
        parts.append(lib)
    return header, "\n".join([*parts, text])


class Script:
    """One script of ``lua/``, registered with a Redis client (that only hashes the text: Redis loads it on the
    first call)."""

    def __init__(self, db: redis.Redis, name: str) -> None:
        self.name = name
        self.header, text = source(name)
        self._script = db.register_script(text)

    def __call__(self, keys: Keys, **named: Any) -> Any:
        """Run it: each KEYS name from ``named``, else the attribute of ``keys`` of that name (a method is called);
        each ARGV name from ``named``. A ``...rest`` name takes a list."""
        def value(name: str) -> Any:
            if name in named:
                return named[name]
            found = getattr(keys, name)
            return found() if callable(found) else found

        args = {n.removeprefix("...") for n in self.header.args}
        extra = set(named) - args - {n.removeprefix("...") for n in self.header.keys}
        if extra or not args <= set(named):
            raise TypeError(f"lua/{self.name}.lua takes ARGV {sorted(args)}; given {sorted(named)}")
        return self._script(keys=self._positions(self.header.keys, value),
                            args=self._positions(self.header.args, lambda name: named[name]))

    def _positions(self, names: tuple[str, ...], value) -> list[Any]:
        out: list[Any] = []
        for name in names:
            if name.startswith("..."):
                out.extend(value(name[3:]))
            else:
                out.append(value(name))
        return out
