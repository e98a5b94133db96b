"""A job's output: one part per shard, then the final jsonl and its manifest, on any Storage.

Each shard's rows go to ``.<output_file>.parts/shard-NNNNNN.jsonl`` and then a ``.done.json``
marker (its ShardSummary; every name is in schemas/output_names.py); both writes are atomic, so a killed run leaves whole parts or none, and
a re-run shard overwrites its own part instead of adding rows. Only ``finalise`` creates the final
file, as one atomic write of the parts' concatenation, and only when every planned shard's part is there:
a run can never replace a finished output with a smaller one.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from schemas import JobSpec, OutputRow, ShardSummary
from schemas.errors import OutputError
from schemas.output_names import OutputNames
from workers.output_lock import OutputLock, lock_output
from workers.storage import Storage, open_storage

log = logging.getLogger(__name__)


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
    """The output location of one job."""

    def __init__(self, spec: JobSpec, storage: Storage | None = None) -> None:
        self.spec = spec
        self.storage = storage or open_storage(spec.output_dir)
        self.names = names = OutputNames(spec.output_file)
        self.final, self.manifest, self.stats, self.parts = names.final, names.manifest, names.stats, names.parts

    @property
    def location(self) -> str:
        return self.storage.where(self.final)

    def lock(self) -> OutputLock:
        """The lock that keeps a second run off this output while this one lives (not taken yet)."""
        return lock_output(self.spec, self.storage)

    def check(self) -> None:
        """Refuse to start when the run would clobber or mix with something; say what to do instead."""
        spec, storage = self.spec, self.storage
        storage.check_writable()
        has_parts = storage.exists(self.names.job) or bool(storage.list(self.parts))
        if storage.exists(self.final) and not spec.override_exist_file:
            if spec.resume and not has_parts:
                raise OutputError(f"{self.location} is already complete: nothing to resume "
                                  "(pass --override_exist_file true to sample it again)")
            raise OutputError(f"{self.location} exists; pass --override_exist_file true to replace it, "
                              "or choose another --output_file")
        if has_parts and not spec.resume and not spec.override_exist_file:
            raise OutputError(f"{storage.where(self.parts)} holds an unfinished run of {self.final}; pass "
                              "--resume true to continue it, or --override_exist_file true to start over")
        if has_parts and spec.resume:
            try:
                saved = _flat(json.loads(storage.read(self.names.job)))
            except (OSError, ValueError) as exc:
                raise OutputError(f"--resume: {storage.where(self.parts)} has no readable job.json ({exc}); "
                                  "start over with --override_exist_file true") from exc
            changed = sorted(k for k, v in _flat(spec.resume_key()).items() if saved.get(k) != v)
            if changed:
                raise OutputError(f"--resume: the unfinished run in {storage.where(self.parts)} had different "
                                  f"{', '.join(changed)}; resume with the same options, or start over "
                                  "with --override_exist_file true")

    def open(self) -> set[int]:
        """Check, prepare the parts folder and return the shards already done (for --resume)."""
        self.check()
        if not self.spec.resume:
            self.storage.delete_prefix(self.parts)
            if left := self.storage.list(self.parts):  # never reuse an old run's done-markers
                raise OutputError(f"{self.storage.where(self.parts)}: cannot clear the parts of the earlier run "
                                  f"({len(left)} files left, e.g. {left[0]}); remove that folder, or pass "
                                  "--resume true to continue that run")
        self.storage.write(self.names.job, json.dumps(self.spec.resume_key(), indent=1).encode())
        return {s.index for s in self.summaries()}

    def write_shard(self, rows: Iterable[OutputRow], summary: ShardSummary) -> None:
        """The part, then its done-marker: a shard counts as done only when both are in place."""
        self.storage.write(self.names.part(summary.index), "".join(r.to_json_line() for r in rows).encode())
        self.storage.write(self.names.done(summary.index), summary.model_dump_json().encode())

    def write_stage(self, stage: str, index: int, text: str) -> None:
        """A fleet stage's result for one shard (candidates, scores), passed on by reference."""
        self.storage.write(self.names.stage(stage, index), text.encode())

    def read_stage(self, stage: str, index: int) -> str:
        return self.storage.read(self.names.stage(stage, index)).decode()

    def has_stage(self, stage: str, index: int) -> bool:
        return self.storage.exists(self.names.stage(stage, index))

    def summaries(self) -> list[ShardSummary]:
        return sorted((ShardSummary.model_validate_json(self.storage.read(k))
                       for k in self.storage.list(self.parts) if k.endswith(".done.json")), key=lambda s: s.index)

    def finalise(self, manifest: dict[str, Any], *, summaries: list[ShardSummary] | None = None,
                 planned: int | None = None) -> str:
        """Concatenate the parts in shard order into the final file and write the manifest.

        ``planned``: the run's shard count; when given, a missing part refuses the final write (OutputError)
        instead of writing a smaller file over the output.

        ``summaries``: the done-markers if the caller has read them already (on S3, one listing and a read
        per shard saved). The parts stay: the caller drops them (``drop_parts``) once the job is recorded as
        finished, and a partial job keeps them so that resuming it can assemble the whole output later.
        """
        summaries = self.summaries() if summaries is None else summaries
        if planned is not None and (missing := sorted(set(range(planned)) - {s.index for s in summaries})):
            raise OutputError(f"{self.location} was not written: {len(missing)} of {planned} shards have no part "
                              f"in {self.storage.where(self.parts)} (first: shard {missing[0]}); another run may "
                              "have finished this output meanwhile")
        self.storage.concat((self.names.part(s.index) for s in summaries), self.final)
        if self.spec.orm_model:  # the stats lines travel in the done-markers: only concatenated here
            self.storage.write(self.stats, "".join(p.to_json_line() for s in summaries for p in s.stats).encode())
        self.write_manifest(manifest)
        return self.location

    def write_manifest(self, manifest: dict[str, Any]) -> str:
        """The manifest alone (a failed fleet job has one, and no final file); its location."""
        self.storage.write(self.manifest, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
        return self.storage.where(self.manifest)

    def drop_parts(self) -> None:
        self.storage.delete_prefix(self.parts)
