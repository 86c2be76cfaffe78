"""The same scoring on Ray Data: `map_batches` with one predictor per actor, order preserved.

Ray reads the input (a file or a directory of CSV / JSONL / Parquet parts),
each actor loads the model once and scores Arrow batches with the same code
as the local engine (scoring.columns over contract.predictor), and Ray writes
a directory of parts; or, when --out names a single file, the driver streams
the scored batches in order into it. The model file must be readable at the
same path on every node (shared storage, or the job's runtime_env working_dir).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contract import artifact as artifact_io
from contract import scored
from contract.device import resolve_device
from contract.predictor import Predictor
from scoring import columns as scored_columns
from scoring.io import FORMATS, InputError, Source, format_of
from scoring.local import Summary
from scoring.options import Options

RAY_EXTRA = "--engine ray needs Ray Data: pip install 'sentiment-service[ray]'"
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # a local Ray's object store: batches of text are small; the default takes 30 % of RAM


def ray_module() -> Any:
    try:
        import pyarrow  # noqa: F401  (Ray Data's batches are Arrow tables)
        import ray
        import ray.data
    except ImportError:
        raise InputError(RAY_EXTRA) from None
    return ray


def input_format(path: str) -> str:
    """The format of a file, or of the parts in a directory (by their extension)."""
    p = Path(path)
    if p.is_dir():
        found = {FORMATS[f.suffix.lower()] for f in p.iterdir() if f.is_file() and f.suffix.lower() in FORMATS}
        if len(found) != 1:
            raise InputError(
                f"{path}: a directory input must hold parts of one format (.csv, .jsonl or .parquet); found {sorted(found) or 'none'}"
            )
        return found.pop()
    if "://" not in path and not p.is_file():
        raise InputError(f"input not found: {path}")
    return format_of(path)


class Counter:
    """Rows and errors seen by all actors (a Ray actor; read once at the end for the summary line)."""

    def __init__(self) -> None:
        self.rows = 0
        self.errors = 0

    def add(self, rows: int, errors: int) -> None:
        self.rows += rows
        self.errors += errors

    def totals(self) -> tuple[int, int]:
        return self.rows, self.errors


class ScoreBatch:
    """One actor: loads the model once, then scores Arrow batches (the Ray Data callable class)."""

    def __init__(self, options: Options, model_path: str, counter: Any) -> None:
        import torch

        torch.set_num_threads(actor_threads(options))
        resolved = resolve_device(options.device)
        loaded = artifact_io.load(model_path, resolved, options.precision)  # "auto" resolves on the actor's own hardware
        self.predictor = Predictor.from_artifact(
            loaded, resolved, max_batch_size=options.batch_size, max_batch_tokens=options.max_batch_tokens
        )
        self.labels = loaded.manifest.labels
        self.text = options.text
        self.skip_bad = options.skip_bad
        self.counter = counter

    def __call__(self, table: Any) -> Any:
        import pyarrow
        import pyarrow.compute

        ray = ray_module()
        if self.text.name in table.column_names:
            values = table.column(self.text.name).to_pylist()
        else:
            values = [scored_columns.MISSING] * table.num_rows
        assert self.predictor.encoder is not None
        prepared = scored_columns.prepare(self.predictor.encoder, values, self.text.max_chars)
        added = scored_columns.columns(prepared, self.predictor.predict_ids(prepared.ids), self.labels)
        table = table.drop_columns([c for c in scored.COLUMNS if c in table.column_names])
        for field in scored.arrow_fields():
            table = table.append_column(field, pyarrow.array(added[field.name], type=field.type))
        if self.skip_bad:
            table = table.filter(pyarrow.compute.is_null(table.column(scored.ERROR.name)))
        ray.get(self.counter.add.remote(len(values), prepared.n_errors))
        return table


def init(address: str | None, cores: int) -> Any:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a small local Ray on this machine's cores."""
    ray = ray_module()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # One logical CPU more than the cores, for Ray Data's read and write tasks: with every CPU held by a
        # model actor they could never be scheduled (seen: a hang at "3/2 CPU"). They mostly wait on I/O.
        ray.init(num_cpus=cores + 1, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False)
    return ray


def read(ray: Any, path: str, text_column: str) -> tuple[Any, str]:
    fmt = input_format(path)
    import pyarrow
    import pyarrow.csv

    try:
        if fmt == "csv":  # the text column stays text even where a part holds only numbers
            ds = ray.data.read_csv(path, convert_options=pyarrow.csv.ConvertOptions(column_types={text_column: pyarrow.string()}))
        elif fmt == "jsonl":
            ds = ray.data.read_json(path, lines=True)
        else:
            ds = ray.data.read_parquet(path)
        schema = ds.schema()
    except Exception as exc:  # Ray wraps reader errors in its own types
        lines = [line for line in str(exc).strip().splitlines() if line.strip() and not line.startswith("To change retry")]
        reason = next(
            (line for line in lines if line.startswith(("ValueError", "ArrowInvalid", "pyarrow"))),
            lines[-1] if lines else type(exc).__name__,
        )
        raise InputError(f"{path}: unreadable {fmt} for Ray Data (rows with missing fields are refused there): {reason[:300]}") from None
    if schema is None or text_column not in schema.names:
        names = ", ".join(schema.names) if schema is not None else "none"
        raise InputError(f"column {text_column!r} not in {path} (columns: {names})")
    return ds, fmt


def score(options: Options, *, cores: int, progress: Any, write_file: Any) -> Summary:
    """Run the job; `write_file(source, chunks)` streams into a single output file (the local engine's writer)."""
    ray = init(options.ray_address, cores)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        ds, fmt = read(ray, options.input, options.text.name)
        schema = ds.schema()
        counter = ray.remote(num_cpus=0)(Counter).remote()
        scored = map_actors(ray, ds, options, counter)
        summary = Summary()
        if Path(options.out).suffix.lower() in FORMATS or options.out == "-":
            source = Source(options.input, fmt, iter(()), list(schema.names), None, _input_schema(schema))
            write_file(source, _chunks(scored, options.chunk_rows, progress))
        else:
            writer = {"csv": "write_csv", "jsonl": "write_json", "parquet": "write_parquet"}[options.out_format or fmt]
            getattr(scored, writer)(options.out)
        summary.rows, summary.errors = ray.get(counter.totals.remote())
        summary.written = summary.rows - (summary.errors if options.skip_bad else 0)
        return summary
    finally:
        ray.shutdown()


def actor_threads(options: Options) -> int:
    """Torch threads per actor: --threads, else 1 (then one actor per CPU)."""
    return options.threads or 1


def map_actors(ray: Any, ds: Any, options: Options, counter: Any) -> Any:
    """`ds` scored by a pool of ScoreBatch actors: --workers of them, else all CPUs but one (for the read and write tasks)."""
    threads = actor_threads(options)
    actors = options.workers
    if actors <= 0:
        actors = max(1, int((ray.cluster_resources().get("CPU", 2) - 1) // max(1, threads)))
    return ds.map_batches(
        ScoreBatch,
        fn_constructor_kwargs={"options": options, "model_path": model_for_actors(ray, options.model), "counter": counter},
        batch_size=options.chunk_rows,
        batch_format="pyarrow",
        concurrency=actors,
        num_cpus=max(1, threads) if options.device == "cpu" or options.device == "auto" else 0,
    )


def model_for_actors(ray: Any, model_path: str) -> str:
    """The model path as each actor should open it.

    In a job with a runtime_env working_dir (`ray job submit --working-dir .`), every node unpacks that
    directory and starts its workers inside it: a model file in it is passed relative, so each node
    opens its own copy. Otherwise the absolute path, which must then be on storage every node mounts.
    """
    path = Path(model_path).resolve()
    if ray.get_runtime_context().runtime_env.get("working_dir"):
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            pass
    return str(path)


def _input_schema(schema: Any) -> Any:
    """Ray's Schema -> the pyarrow schema the single-file writer keeps (Parquet outputs)."""
    base = getattr(schema, "base_schema", None)
    return base if base is not None and hasattr(base, "names") else None


def _chunks(ds: Any, batch_rows: int, progress: Any) -> Iterator[list[dict[str, Any]]]:
    for table in ds.iter_batches(batch_size=batch_rows, batch_format="pyarrow"):
        rows = table.to_pylist()
        progress(len(rows))
        yield rows
