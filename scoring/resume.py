"""`--resume`: the record beside a `.partial` output that says which job wrote it and how far it got.

A run writes `OUT.partial` chunk by chunk; after each chunk its bytes are
flushed and fsynced, then this record (`OUT.partial.json`) is replaced with
the new count, so the record never claims more than the disk holds. Whatever
the partial holds beyond the record (a chunk torn by a kill or a full disk) is
cut away on resume. A resumed run writes exactly what an uninterrupted one
would only if the input, the model and the settings that shape the output
are the same, so the record holds those too and `--resume` refuses otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 1
HEAD_BYTES = 2**20  # the input's first MiB is hashed: cheap on any size, and catches a rewritten file with the same size and mtime


class ResumeRefused(Exception):
    """The partial output cannot be continued (another input, model or settings, or a damaged record)."""


def input_identity(path: str) -> dict[str, Any]:
    """Size, modification time and sha256 of the first MiB: a changed or replaced input differs in at least one."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HEAD_BYTES))
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": digest.hexdigest()}


@dataclass(frozen=True)
class Job:
    """What must be equal for a resumed run to write the bytes an uninterrupted run would."""

    input: dict[str, Any]
    model_sha256: str
    settings: dict[str, Any]

    def mismatch(self, other: Job) -> str | None:
        """Why a partial written for `other` cannot be continued by this job, in a few words; None when it can."""
        if self.input != other.input:
            changed = [k for k in self.input if self.input[k] != other.input.get(k)]
            return f"the input changed since that run ({', '.join(changed)})"
        if self.model_sha256 != other.model_sha256:
            return f"the model changed since that run (sha256 {other.model_sha256[:12]} -> {self.model_sha256[:12]})"
        changed = [f"{k} {other.settings.get(k)!r} -> {v!r}" for k, v in self.settings.items() if other.settings.get(k) != v]
        changed += [f"{k} {v!r} -> unset" for k, v in other.settings.items() if k not in self.settings]
        if changed:
            return f"settings that change the output differ from that run's ({'; '.join(changed)})"
        return None


@dataclass
class Checkpoint:
    """The job, and how far its output got: input rows done, and the partial's length (CSV, JSONL) or part files (Parquet)."""

    job: Job
    rows_done: int = 0
    output_bytes: int = 0
    parts: int = 0
    csv_columns: list[str] | None = None  # the CSV header once written: a resumed run cannot derive it from the first rows

    def advance(self, path: Path, **progress: Any) -> None:
        """Record `progress` (rows_done, output_bytes, ...) at `path`; applied here only once saved, so this never claims more than the disk."""
        dataclasses.replace(self, **progress).save(path)
        for name, value in progress.items():
            setattr(self, name, value)

    def save(self, path: Path) -> None:
        """Replace the record at `path` atomically: a kill or a full disk leaves the old one or the new one, never half."""
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"version": VERSION, **dataclasses.asdict(self)}, indent=1) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            data = json.loads(path.read_text())
            if data.pop("version") != VERSION:
                raise ValueError("written by another version of sentiment-score")
            return cls(job=Job(**data.pop("job")), **data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeRefused(f"cannot resume: the record {path} is unreadable ({exc}); run without --resume to start over") from None


def record_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")
