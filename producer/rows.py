"""Normalise a dataset row, whatever its layout, into prompt turns + reference answer + other columns.

Layouts (checked in this order): ``messages``; sharegpt ``conversations``;
``query``/``response`` (+ ``history``, ``system``); alpaca ``instruction``/
``input``/``output``; ``problem``, ``prompt`` or ``question`` (+ ``solution``). The reference answer is the
last assistant turn when the row ends with one, else a ``solution``/``answer``/
``response`` column. Prompt-only rows are fine.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from schemas import Message, Prompt
from schemas.errors import DataError

_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
          "human": "user", "gpt": "assistant", "observation": "tool", "function": "tool"}
_ANSWER_COLUMNS = ("solution", "answer", "response")


def row_id(messages: list[Message], columns: dict[str, Any]) -> str:
    """The reference's ``id``, so that our files and ``swift sample``'s join on it: the md5 of the row as swift
    holds it after its standard preprocessing, i.e. its other columns plus ``messages`` (the row's own turns in
    ``{"role", "content"}`` form, system and reference answer included, before any ``--system``), dumped with
    ``json.dumps(row, sort_keys=True)`` (ASCII escapes, as Python's default)."""
    row = {**columns, "messages": [{"role": m.role, "content": m.content} for m in messages]}
    return hashlib.md5(json.dumps(row, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _turns(raw: Any, where: str, role_key: str, content_key: str, column: str) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: '{column}' must be a non-empty list of turns")
    out = []
    for k, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {column}[{k}] is not an object")
        role = _ROLES.get(str(turn.get(role_key)))
        content = turn.get(content_key)
        if role is None:
            raise DataError(f"{where}: {column}[{k}] has unknown role {turn.get(role_key)!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}: {column}[{k}].{content_key} must be a string, got {type(content).__name__}")
        out.append(Message(role=role, content=content))
    return out


def _text(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: column '{key}' must be a string, got {type(value).__name__}")
    return value


def _answer(row: dict[str, Any], key: str) -> str | None:
    """A reference-answer column as text: csv and json readers turn ``42`` into a number."""
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _layout(row: dict[str, Any], where: str) -> tuple[list[Message], set[str]]:
    """The row's turns (possibly ending with an assistant answer) and the columns they were built from."""
    if "messages" in row:
        return _turns(row["messages"], where, "role", "content", "messages"), {"messages"}
    if "conversations" in row:
        return _turns(row["conversations"], where, "from", "value", "conversations"), {"conversations"}
    if "query" in row:
        turns = []
        if (system := _text(row, "system", where)) is not None:
            turns.append(Message(role="system", content=system))
        for k, pair in enumerate(row.get("history") or []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise DataError(f"{where}: history[{k}] must be a [query, response] pair of strings")
            turns += [Message(role="user", content=pair[0]), Message(role="assistant", content=pair[1])]
        turns.append(Message(role="user", content=_text(row, "query", where) or ""))
        if (response := _answer(row, "response")) is not None:
            turns.append(Message(role="assistant", content=response))
        return turns, {"query", "response", "history", "system"}
    if "instruction" in row:
        instruction, extra = _text(row, "instruction", where) or "", _text(row, "input", where)
        turns = [Message(role="user", content=f"{instruction}\n{extra}" if extra else instruction)]
        if (output := _answer(row, "output")) is not None:
            turns.append(Message(role="assistant", content=output))
        return turns, {"instruction", "input", "output"}
    for column in ("problem", "prompt", "question"):  # prompt: HumanEval; question: APPS, TACO (swift reads both)
        if column in row:
            return [Message(role="user", content=_text(row, column, where) or "")], {column}
    raise DataError(f"{where}: no prompt found; expected one of the columns messages, conversations, "
                    f"query, instruction, problem, prompt, question (got {', '.join(sorted(row)) or 'none'})")


def normalise(row: Any, *, index: int, where: str, system: str | None) -> Prompt:
    """One row -> Prompt; DataError naming ``where`` when the row cannot be a prompt."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    turns, used = _layout(row, where)
    extra = {k: v for k, v in row.items() if k not in used}
    identity = row_id(turns, extra)  # before the answer is split off and --system is added, as swift does
    ground_truth = None
    if turns[-1].role == "assistant":
        ground_truth = turns.pop().content
    else:
        ground_truth = next((a for a in map(lambda k: _answer(row, k), _ANSWER_COLUMNS) if a is not None), None)
    if not turns or turns[-1].role != "user" or not turns[-1].content.strip():
        raise DataError(f"{where}: the prompt must end with a non-empty user turn")
    if system is not None and turns[0].role != "system":
        turns.insert(0, Message(role="system", content=system))
    return Prompt(id=identity, row=index, source=where, messages=turns, ground_truth=ground_truth, extra=extra)
