"""Reading JSON Lines, the format of datasets, cache files and outputs alike, with errors that name the line."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.errors import DataError


def read_jsonl(path: Path, label: str = "") -> Iterator[tuple[str, Any]]:
    """(where, row) for each non-blank line; a line that is not JSON yields a DataError as its row,
    so that the caller decides whether to stop or to skip and count it. ``label`` prefixes ``where``."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{label}{path} line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
