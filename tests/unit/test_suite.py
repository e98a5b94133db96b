"""The suite's own machinery: what `make test` relies on from pytest-xdist holds with the installed versions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GROUPED = '''
import os

import pytest


@pytest.mark.xdist_group("one")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    with open(os.environ["WHERE"], "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
'''


def test_an_xdist_group_runs_in_one_test_process(tmp_path: Path) -> None:
    """conftest.py puts the tests of one `vllm serve` in one group; with pytest 9.2 and xdist 3.8 groups were
    ignored without a word, and two servers started."""
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    where = tmp_path / "where.txt"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "3", "--dist",
                           "loadgroup", str(tmp_path / "test_grouped.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"WHERE": str(where), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    processes = where.read_text().split()
    assert len(processes) == 6 and len(set(processes)) == 1, processes
