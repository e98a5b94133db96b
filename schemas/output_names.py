"""Where a run's files are, beside its output file: the one naming rule, for the workers that write them and for
the producer that reads them (``producer report``, the note on how to resume a stopped run).

For ``--output_file run.jsonl`` (names relative to ``--output_dir``)::

    run.jsonl                 the final file, written last in one atomic write
    run.manifest.json         the manifest
    run.stats.jsonl           one line per prompt, with an ORM (workers/stats.py)
    run.report.html           ``producer report``'s page, by default
    .run.jsonl.parts/         while the run works: job.json (the options), per shard shard-NNNNNN.jsonl (its rows)
                              and shard-NNNNNN.done.json (its summary), and <stage>/shard-NNNNNN.json (a fleet
                              stage's result, passed on by reference)

A name without ``.jsonl`` keeps all of itself as the stem (``run`` -> ``run.manifest.json``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputNames:
    """The names of one run's files; ``final`` is ``--output_file``."""

    final: str

    @property
    def stem(self) -> str:
        return self.final.removesuffix(".jsonl")

    @property
    def manifest(self) -> str:
        return self.stem + ".manifest.json"

    @property
    def stats(self) -> str:
        return self.stem + ".stats.jsonl"

    @property
    def report(self) -> str:
        return self.stem + ".report.html"

    @property
    def parts(self) -> str:
        """The parts folder, with its trailing ``/`` (a key prefix on S3)."""
        return f".{self.final}.parts/"

    @property
    def job(self) -> str:
        return self.parts + "job.json"

    def part(self, index: int) -> str:
        return f"{self.parts}shard-{index:06d}.jsonl"

    def done(self, index: int) -> str:
        return f"{self.parts}shard-{index:06d}.done.json"

    def stage(self, stage: str, index: int) -> str:
        return f"{self.parts}{stage}/shard-{index:06d}.json"
