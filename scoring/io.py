"""CSV / JSONL / Parquet readers and writers: chunks of row dicts, in file order, columns kept.

The format follows the file extension; `-` is JSONL on stdin/stdout. CSV and
JSONL use only the standard library; Parquet needs pyarrow (the `[parquet]`
extra). Outputs are written to `NAME.partial` and renamed when complete, so a
failed run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scoring.columns import MISSING, OUTPUT_COLUMNS, Unreadable

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


def replaced_columns(input_columns: Sequence[str]) -> list[str]:
    return [c for c in input_columns if c in OUTPUT_COLUMNS]


def output_columns(input_columns: Sequence[str]) -> list[str]:
    """The input's columns (any named like a scoring column are replaced), then the scoring columns."""
    return [c for c in input_columns if c not in OUTPUT_COLUMNS] + list(OUTPUT_COLUMNS)


def _csv_cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, dict | list) else value


@dataclass
class Sink:
    """An open output; `write` takes chunks of complete rows (input columns + scoring columns) in order."""

    path: str
    format: str
    source: Source
    _file: Any = None
    _csv: csv.DictWriter | None = None
    _parquet: Any = None
    _schema: Any = None
    _partial: Path | None = None
    rows: int = field(default=0)

    def open(self) -> None:
        if self.path != STDIO:
            target = Path(self.path)
            if not target.parent.is_dir():
                raise InputError(f"output folder does not exist: {target.parent}")
            self._partial = target.with_name(target.name + ".partial")
        if self.format != "parquet":
            if self._partial is None:
                self._file = sys.stdout
            else:
                self._file = open(self._partial, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.format == "jsonl":
            self._file.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        elif self.format == "csv":
            if self._csv is None:
                names = self.source.columns if self.source.columns is not None else list(dict.fromkeys(k for r in rows for k in r))
                self._csv = csv.DictWriter(self._file, fieldnames=output_columns(names), extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerows([{k: _csv_cell(v) for k, v in r.items()} for r in rows])
        else:
            self._write_parquet(rows)
        self.rows += len(rows)

    def _write_parquet(self, rows: list[dict[str, Any]]) -> None:
        pyarrow, parquet = pyarrow_modules()
        if self._parquet is None:
            self._schema = self._parquet_schema(pyarrow, rows)
            self._parquet = parquet.ParquetWriter(self._partial, self._schema)
        try:
            table = pyarrow.Table.from_pylist(rows, schema=self._schema)
        except (pyarrow.ArrowException, TypeError, ValueError) as exc:
            raise InputError(f"rows do not fit the Parquet schema of the first chunk: {str(exc).splitlines()[0]}") from None
        self._parquet.write_table(table)

    def _parquet_schema(self, pyarrow: Any, rows: list[dict[str, Any]]) -> Any:
        scored = [
            pyarrow.field("label", pyarrow.string()),
            pyarrow.field("score", pyarrow.float64()),
            pyarrow.field("p_positive", pyarrow.float64()),
            pyarrow.field("n_tokens", pyarrow.int64()),
            pyarrow.field("truncated", pyarrow.bool_()),
            pyarrow.field("error", pyarrow.string()),
        ]
        if self.source.arrow_schema is not None:
            kept = [f for f in self.source.arrow_schema if f.name not in OUTPUT_COLUMNS]
        else:
            names = self.source.columns or list(dict.fromkeys(k for r in rows for k in r))
            inferred = pyarrow.Table.from_pylist([{n: r.get(n) for n in names} for r in rows]).schema
            kept = [
                f if not pyarrow.types.is_null(f.type) else f.with_type(pyarrow.string()) for f in inferred if f.name not in OUTPUT_COLUMNS
            ]
        return pyarrow.schema(kept + scored)

    def close(self, ok: bool) -> None:
        """Finish the file and move it into place (ok), or remove the partial file."""
        if self._parquet is not None:
            self._parquet.close()
        elif self.format == "parquet" and ok and self._partial is not None:
            pyarrow, parquet = pyarrow_modules()  # no rows at all: still write a valid, empty file
            parquet.write_table(self._parquet_schema(pyarrow, []).empty_table(), self._partial)
        if self.format == "csv" and self._csv is None and ok and self.source.columns is not None:
            csv.DictWriter(self._file, fieldnames=output_columns(self.source.columns)).writeheader()
        if self._file is not None:
            if self._file is sys.stdout:
                self._file.flush()
            else:
                self._file.close()
        if self._partial is not None:
            if ok:
                os.replace(self._partial, self.path)
            else:
                self._partial.unlink(missing_ok=True)


@contextlib.contextmanager
def open_sink(path: str, source: Source) -> Iterator[Sink]:
    """An output for `path` (format from its extension) that keeps `source`'s columns; removed again if the run fails."""
    sink = Sink(path, format_of(path), source)
    if sink.format == "parquet":
        pyarrow_modules()  # fail before any work when pyarrow is missing
    try:
        sink.open()
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    ok = False
    try:
        yield sink
        ok = True
    finally:
        sink.close(ok)
