"""Each folder's README keeps a table of its files: a file missing from it, or a row naming a file that is not
there, fails here, so the READMEs a newcomer reads stay true."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every package and tool folder; a folder of data files (examples/, fixtures) has a README of its own where it
# needs one and is held to it the same way once it has a table.
FOLDERS = ["producer", "schemas", "workers", "workers/engines", "workers/lifecycle", "workers/scoring", "bench",
           "deploy", "tests"]
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def _children(folder: Path) -> set[str]:
    """The folder's direct entries that git knows or would add (tracked, or untracked but not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "."], cwd=folder,
                         capture_output=True, text=True, check=True).stdout.split()
    return {path.split("/")[0] + ("/" if "/" in path else "") for path in out} - {"README.md"}


def _table(readme: Path) -> list[str]:
    """The first cells of the README's file tables (rows after a header whose first cell is "file")."""
    names, inside = [], False
    for line in readme.read_text().splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        first = line.strip("|").split("|")[0].strip()
        if first == "file":
            inside = True
        elif inside and (m := _ROW.match(line)):
            names.append(m.group(1))
    return names


@pytest.mark.parametrize("name", FOLDERS)
def test_readme_lists_every_file(name: str) -> None:
    folder = ROOT / name
    readme = folder / "README.md"
    assert readme.is_file(), f"{name}/ has no README.md"
    rows = _table(readme)
    assert rows, f"{name}/README.md has no table of its files (a header row starting with '| file |')"
    missing = sorted(child for child in _children(folder)
                     if not any(row == child or row.startswith(child if child.endswith("/") else child + "/")
                                for row in rows))
    assert not missing, f"{name}/README.md does not list: {', '.join(missing)}"
    stale = sorted(row for row in rows if not (folder / row).exists())
    assert not stale, f"{name}/README.md lists files that do not exist: {', '.join(stale)}"
