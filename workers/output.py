"""A job's output on local disk: one part per shard, then the final jsonl and its manifest.

Each shard's rows go to ``.<output_file>.parts/shard-NNNNNN.jsonl`` and then a
``.done.json`` marker (its ShardSummary); both are written to a temp name and
renamed, so a killed run leaves whole parts or none, and a re-run shard
overwrites its own part instead of adding rows. Only ``finalise`` creates the
final file, by renaming a complete copy into place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from schemas import JobSpec, OutputRow, ShardSummary
from schemas.errors import OutputError

log = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _flat(options: dict[str, Any]) -> dict[str, Any]:
    """Nested option groups (``sampling``) flattened, so a difference names the option itself."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict) and key == "sampling":
            out.update(value)
        else:
            out[key] = value
    return out


class JobOutput:
    """The output folder of one job."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.dir = Path(spec.output_dir).expanduser()
        self.final = self.dir / spec.output_file
        self.manifest = self.final.with_name(self.final.stem + ".manifest.json")
        self.parts = self.dir / f".{spec.output_file}.parts"

    def check(self) -> None:
        """Refuse to start when the run would clobber or mix with something; say what to do instead."""
        spec = self.spec
        if self.final.exists() and not spec.override_exist_file:
            if spec.resume and not self.parts.exists():
                raise OutputError(f"{self.final} is already complete: nothing to resume "
                                  "(pass --override_exist_file true to sample it again)")
            raise OutputError(f"{self.final} exists; pass --override_exist_file true to replace it, "
                              "or choose another --output_file")
        if self.parts.exists() and not spec.resume and not spec.override_exist_file:
            raise OutputError(f"{self.parts} holds an unfinished run of {self.final.name}; pass --resume true to "
                              "continue it, or --override_exist_file true to start over")
        if self.parts.exists() and spec.resume:
            try:
                saved = _flat(json.loads((self.parts / "job.json").read_text()))
            except (OSError, ValueError) as exc:
                raise OutputError(f"--resume: {self.parts} has no readable job.json ({exc}); start over with "
                                  "--override_exist_file true") from exc
            changed = sorted(k for k, v in _flat(spec.resume_key()).items() if saved.get(k) != v)
            if changed:
                raise OutputError(f"--resume: the unfinished run in {self.parts} had different "
                                  f"{', '.join(changed)}; resume with the same options, or start over "
                                  "with --override_exist_file true")

    def open(self) -> set[int]:
        """Check, prepare the parts folder and return the shards already done (for --resume)."""
        self.check()
        if self.parts.exists() and not self.spec.resume:
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        write_atomic(self.parts / "job.json", json.dumps(self.spec.resume_key(), indent=1))
        return {s.index for s in self.summaries()}

    def _part(self, index: int) -> Path:
        return self.parts / f"shard-{index:06d}.jsonl"

    def _done(self, index: int) -> Path:
        return self.parts / f"shard-{index:06d}.done.json"

    def write_shard(self, rows: Iterable[OutputRow], summary: ShardSummary) -> None:
        """The part, then its done-marker: a shard counts as done only when both are in place."""
        write_atomic(self._part(summary.index), "".join(r.to_json_line() for r in rows))
        write_atomic(self._done(summary.index), summary.model_dump_json())

    def summaries(self) -> list[ShardSummary]:
        return sorted((ShardSummary.model_validate_json(p.read_text()) for p in self.parts.glob("shard-*.done.json")),
                      key=lambda s: s.index)

    def finalise(self, manifest: dict[str, Any]) -> Path:
        """Concatenate the parts in shard order into the final file (renamed into place), write the manifest."""
        tmp = self.final.with_name(f".{self.final.name}.tmp{os.getpid()}")
        with tmp.open("wb") as out:
            for summary in self.summaries():
                with self._part(summary.index).open("rb") as part:
                    shutil.copyfileobj(part, out)
        os.replace(tmp, self.final)
        write_atomic(self.manifest, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        shutil.rmtree(self.parts)
        return self.final
