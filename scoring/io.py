"""CSV / JSONL / Parquet readers and writers: chunks of row dicts, in file order, columns kept.

The format follows the file extension; `-` is JSONL on stdin/stdout. CSV and
JSONL use only the standard library; Parquet needs pyarrow (the `[parquet]`
extra). Outputs are written to `NAME.partial` and renamed when complete, so a
failed run never leaves a file that looks finished; with a checkpoint the
partial is kept for `--resume` (scoring/resume.py).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from contract import scored
from scoring.columns import MISSING, Unreadable
from scoring.resume import Checkpoint, ResumeRefused, record_path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
STDIO = "-"
PARQUET_EXTRA = "Parquet needs pyarrow: pip install 'sentiment-service[parquet]'"

csv.field_size_limit(2**31 - 1)  # reviews may be longer than csv's 128 KiB default per field


class InputError(Exception):
    """A file cannot be read or written as asked; the message says why, in one line."""


class InvalidRow(dict):
    """A line that is not a JSON object: it comes back as a row with only the scoring columns and this error."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def format_of(path: str) -> str:
    if path == STDIO:
        return "jsonl"
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path!r} from its extension: use one of {', '.join(sorted(FORMATS))} or '-'")
    return fmt


def text_value(row: dict[str, Any], column: str) -> object:
    """The value to score in `row`: the column's value, MISSING, or the reader's reason why the row is unreadable."""
    if isinstance(row, InvalidRow):
        return Unreadable(row.error)
    return row.get(column, MISSING)


def pyarrow_modules() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputError(PARQUET_EXTRA) from None
    return pyarrow, pyarrow.parquet


# ---------------------------------------------------------------- reading


@dataclass
class Source:
    """An open input: `columns` is known up front for CSV and Parquet (None for JSONL), `total_rows` for Parquet."""

    path: str
    format: str
    chunks: Iterator[list[dict[str, Any]]]
    columns: list[str] | None = None
    total_rows: int | None = None
    arrow_schema: Any = None


def _csv_chunks(f: IO[str], reader: csv.DictReader, path: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    try:
        for row in reader:
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
    except csv.Error as exc:
        raise InputError(f"{path}: unreadable CSV at line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text near line {reader.line_num} ({exc.reason})") from None
    if chunk:
        yield chunk


def _jsonl_chunks(f: IO[str], path: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    number = 0
    try:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue  # blank lines hold no row
            try:
                row = json.loads(line)
            except ValueError as exc:
                row = InvalidRow(f"invalid JSON on line {number}: {exc}")
            if not isinstance(row, dict):
                row = InvalidRow(f"line {number} is not a JSON object")
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text near line {number + 1} ({exc.reason})") from None
    if chunk:
        yield chunk


def _parquet_chunks(parquet_file: Any, path: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    pyarrow, _ = pyarrow_modules()
    try:
        for batch in parquet_file.iter_batches(batch_size=chunk_rows):
            yield batch.to_pylist()
    except (OSError, pyarrow.ArrowException) as exc:
        raise InputError(f"{path}: unreadable Parquet: {str(exc).splitlines()[0]}") from None


@contextlib.contextmanager
def open_source(path: str, chunk_rows: int) -> Iterator[Source]:
    """Open `path` for reading in chunks of `chunk_rows` rows; raises InputError with a one-line reason."""
    fmt = format_of(path)
    if path != STDIO and not Path(path).is_file():
        raise InputError(f"input file not found: {path}")
    if fmt == "parquet":
        pyarrow, parquet = pyarrow_modules()
        try:
            parquet_file = parquet.ParquetFile(path)
        except (OSError, pyarrow.ArrowException) as exc:
            raise InputError(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
        schema = parquet_file.schema_arrow
        yield Source(path, fmt, _parquet_chunks(parquet_file, path, chunk_rows), schema.names, parquet_file.metadata.num_rows, schema)
        return
    try:
        f = sys.stdin if path == STDIO else open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}") from None
    try:
        if fmt == "csv":
            reader = csv.DictReader(f)
            try:
                header = reader.fieldnames
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: unreadable CSV header: {exc}") from None
            if not header:
                raise InputError(f"{path} is empty: a CSV input needs a header line")
            yield Source(path, fmt, _csv_chunks(f, reader, path, chunk_rows), list(header))
        else:
            yield Source(path, fmt, _jsonl_chunks(f, path, chunk_rows))
    finally:
        if f is not sys.stdin:
            f.close()


# ---------------------------------------------------------------- writing


class WriteFailed(Exception):
    """Writing the output failed (disk full, I/O error); what was recorded before it is kept for --resume."""

    def __init__(self, path: Path | None, exc: OSError) -> None:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        super().__init__(f"cannot write {path if path is not None else 'stdout'}: {reason}")


def partial_path(path: str) -> Path:
    """Where the output grows until it is complete: a file for CSV / JSONL, a directory of per-chunk parts for Parquet."""
    target = Path(path)
    return target.with_name(target.name + ".partial")


def replaced_columns(input_columns: Sequence[str]) -> list[str]:
    return [c for c in input_columns if c in scored.COLUMNS]


def output_columns(input_columns: Sequence[str]) -> list[str]:
    """The input's columns (any named like a scoring column are replaced), then the scoring columns."""
    return [c for c in input_columns if c not in scored.COLUMNS] + list(scored.COLUMNS)


def _csv_cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, dict | list) else value


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Sink:
    """An open output; `write` takes chunks of complete rows (input columns + scoring columns) in order.

    With a `checkpoint` (file outputs of the local engine) the output is resumable: `commit` makes the chunks
    written so far durable and records them beside the partial, and a failed run keeps both. Parquet is
    written as one part file per chunk (a Parquet file is unreadable until its footer is written, so one
    growing file could not be continued) and assembled into one file, a row group per part, at the end.
    """

    path: str
    format: str
    source: Source
    checkpoint: Checkpoint | None = None
    _file: Any = None
    _csv: csv.DictWriter | None = None
    _schema: Any = None
    _partial: Path | None = None
    _parts: int = 0
    rows: int = field(default=0)

    def open(self) -> None:
        if self.path != STDIO:
            target = Path(self.path)
            if not target.parent.is_dir():
                raise InputError(f"output folder does not exist: {target.parent}")
            self._partial = partial_path(self.path)
        if self.format == "parquet":
            self._open_parts()
        elif self._partial is None:
            self._file = sys.stdout
        else:
            self._open_text()
        if self.checkpoint is not None:
            self.commit(self.checkpoint.rows_done)  # the record now describes this partial, whatever an earlier run left

    def _open_text(self) -> None:
        assert self._partial is not None
        done = self.checkpoint.output_bytes if self.checkpoint is not None else 0
        if done:
            size = self._partial.stat().st_size if self._partial.is_file() else 0
            if size < done:
                raise ResumeRefused(
                    f"cannot resume: {self._partial} has {size} bytes, its record {done}; run without --resume to start over"
                )
            os.truncate(self._partial, done)  # cut away a chunk torn by the crash
        else:
            _remove(self._partial)
        self._file = open(self._partial, "a" if done else "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if self.checkpoint is not None and self.checkpoint.csv_columns is not None:
            self._csv = csv.DictWriter(self._file, fieldnames=self.checkpoint.csv_columns, extrasaction="ignore")

    def _part(self, index: int) -> Path:
        assert self._partial is not None
        return self._partial / f"part-{index:06d}.parquet"

    def _open_parts(self) -> None:
        assert self._partial is not None
        done = self.checkpoint.parts if self.checkpoint is not None else 0
        kept = {self._part(i) for i in range(done)}
        if not done:
            _remove(self._partial)
            self._partial.mkdir()
        elif not all(part.is_file() for part in kept):
            raise ResumeRefused(f"cannot resume: {self._partial} lacks parts its record lists; run without --resume to start over")
        for extra in set(self._partial.iterdir()) - kept:  # parts written after the last record, and unfinished ones
            _remove(extra)
        self._parts = done

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            if self.format == "parquet":
                self._write_part(rows)
            else:
                self._write_text(rows)
        except OSError as exc:
            raise WriteFailed(self._partial, exc) from None
        self.rows += len(rows)

    def _write_text(self, rows: list[dict[str, Any]]) -> None:
        if self.format == "jsonl":
            self._file.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
            return
        if self._csv is None:
            names = self.source.columns if self.source.columns is not None else list(dict.fromkeys(k for r in rows for k in r))
            self._csv = csv.DictWriter(self._file, fieldnames=output_columns(names), extrasaction="ignore")
            self._csv.writeheader()
        self._csv.writerows([{k: _csv_cell(v) for k, v in r.items()} for r in rows])

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        pyarrow, parquet = pyarrow_modules()
        if self._schema is None:
            self._schema = parquet.read_schema(self._part(0)) if self._parts else self._parquet_schema(pyarrow, rows)
        try:
            table = pyarrow.Table.from_pylist(rows, schema=self._schema)
        except (pyarrow.ArrowException, TypeError, ValueError) as exc:
            raise InputError(f"rows do not fit the Parquet schema of the first chunk: {str(exc).splitlines()[0]}") from None
        part = self._part(self._parts)
        unfinished = part.with_name(part.name + ".tmp")
        parquet.write_table(table, unfinished)
        os.replace(unfinished, part)
        self._parts += 1

    def _parquet_schema(self, pyarrow: Any, rows: list[dict[str, Any]]) -> Any:
        if self.source.arrow_schema is not None:
            kept = [f for f in self.source.arrow_schema if f.name not in scored.COLUMNS]
        else:
            names = self.source.columns or list(dict.fromkeys(k for r in rows for k in r))
            inferred = pyarrow.Table.from_pylist([{n: r.get(n) for n in names} for r in rows]).schema
            kept = [
                f if not pyarrow.types.is_null(f.type) else f.with_type(pyarrow.string()) for f in inferred if f.name not in scored.COLUMNS
            ]
        return pyarrow.schema(kept + scored.arrow_fields())

    def commit(self, rows_done: int) -> None:
        """Make what was written durable, then record it with `rows_done` input rows: on resume the partial is trusted up to here."""
        checkpoint = self.checkpoint
        if checkpoint is None or self._partial is None:
            return
        try:
            output_bytes = 0
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                output_bytes = os.fstat(self._file.fileno()).st_size
            checkpoint.advance(
                record_path(self._partial),
                rows_done=rows_done,
                output_bytes=output_bytes,
                parts=self._parts,
                csv_columns=list(self._csv.fieldnames) if self._csv is not None else None,
            )
        except OSError as exc:
            raise WriteFailed(self._partial, exc) from None

    def close(self, ok: bool, keep: bool = False) -> None:
        """Finish the file and move it into place (ok); else keep the partial and its record (keep) or remove them."""
        try:
            if ok:
                self._finish()
        except OSError as exc:
            ok, keep = False, self.checkpoint is not None
            raise WriteFailed(self._partial, exc) from None
        finally:
            if self._file is not None and self._file is not sys.stdout:
                with contextlib.suppress(OSError):  # a full disk fails the last flush again: the record says what counts
                    self._file.close()
            if self._partial is not None and not keep:
                _remove(self._partial)
                record_path(self._partial).unlink(missing_ok=True)

    def _finish(self) -> None:
        if self.format == "parquet":
            assert self._partial is not None
            assembled = self._partial / "assembled.parquet"
            self._assemble(assembled)
            os.replace(assembled, self.path)
            return
        if self.format == "csv" and self._csv is None and self.source.columns is not None:
            csv.DictWriter(self._file, fieldnames=output_columns(self.source.columns)).writeheader()
        self._file.flush()
        if self._partial is not None:
            self._file.close()
            os.replace(self._partial, self.path)

    def _assemble(self, target: Path) -> None:
        """The parts, in order, as the row groups of one file (no rows at all: a valid, empty file)."""
        pyarrow, parquet = pyarrow_modules()
        parts = [self._part(i) for i in range(self._parts)]
        schema = parquet.read_schema(parts[0]) if parts else self._parquet_schema(pyarrow, [])
        with parquet.ParquetWriter(target, schema) as writer:
            for part in parts:
                writer.write_table(parquet.read_table(part, schema=schema))


@contextlib.contextmanager
def open_sink(path: str, source: Source, checkpoint: Checkpoint | None = None) -> Iterator[Sink]:
    """An output for `path` (format from its extension) that keeps `source`'s columns.

    If the run fails, the partial output is removed, unless it is resumable (a `checkpoint`) and a resume
    can get further: anything but an InputError, which a resumed run would meet again.
    """
    sink = Sink(path, format_of(path), source, checkpoint)
    if sink.format == "parquet":
        pyarrow_modules()  # fail before any work when pyarrow is missing
    try:
        sink.open()
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    except WriteFailed:  # recording where it starts failed: what an earlier run recorded still holds
        sink.close(ok=False, keep=checkpoint is not None)
        raise
    ok = keep = False
    try:
        yield sink
        ok = True
    except InputError:
        raise
    except BaseException:
        keep = checkpoint is not None
        raise
    finally:
        sink.close(ok, keep)
