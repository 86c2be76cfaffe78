"""`sentiment-score INPUT --out OUTPUT`: every row of INPUT with label, score, p_positive, n_tokens, truncated, error.

Exit codes: 0 done (bad rows are counted, not fatal), 2 the input, output,
column, model or device cannot be used (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from contract import artifact as artifact_io
from contract.device import DeviceUnavailable, ThreadPlan, available_cores, plan_threads, resolve_device
from contract.predictor import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, Predictor
from scoring.io import InputError, InvalidRow, Source, open_sink, open_source, replaced_columns
from scoring.local import Summary, score_chunks

log = logging.getLogger("sentiment-score")
DEFAULT_CHUNK_ROWS = 4096  # rows held per chunk (x2 in flight): big enough for well length-sorted batches, small in memory
DEFAULT_RAY_BATCH_ROWS = 1024  # rows per actor call: smaller, so that a few thousand rows still spread over the actors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentiment-score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a .csv, .jsonl or .parquet file, '-' for JSONL on stdin; with --engine ray also a directory of parts")
    p.add_argument(
        "--out", required=True, help="output file (format from its extension), '-' for JSONL on stdout; with --engine ray also a directory"
    )
    p.add_argument("--text-column", default="text", help="the column holding the text to score (default: text)")
    p.add_argument("--model", default=None, help="model file (default: models/sentiment.pt, as the service)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="the model's route, as the service's SENTIMENT_PRECISION: auto = bf16 where the CPU/GPU has native bf16, else fp32",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="batches run at once (Ray: actors); 0 = auto, as the service: one per core on CPU"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker; 0 = auto: the cores shared by the workers")
    p.add_argument("--batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="most texts per forward pass")
    p.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS, help="most padded tokens per forward pass")
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=0,
        help=f"rows read, length-sorted and written at a time (default {DEFAULT_CHUNK_ROWS}; Ray: rows per actor call, default {DEFAULT_RAY_BATCH_ROWS})",
    )
    p.add_argument("--skip-bad", action="store_true", help="leave rows with an error out of the output (they are still counted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--out-format", choices=("csv", "jsonl", "parquet"), default=None, help="format of a directory output (default: the input's)"
    )
    return p


def check_column(source: Source, chunks: Iterator[list[dict[str, Any]]], column: str) -> Iterable[list[dict[str, Any]]]:
    """Refuse a file without the text column: from its header (CSV, Parquet) or, for JSONL, when no row of the first chunk has it."""
    if source.columns is not None:
        if column not in source.columns:
            raise InputError(f"column {column!r} not in {source.path} (columns: {', '.join(source.columns) or 'none'})")
        if replaced_columns(source.columns):
            log.warning(
                "input columns %s are replaced by the scoring columns of the same names", ", ".join(replaced_columns(source.columns))
            )
        return chunks
    first = next(chunks, None)
    if first is None:
        return []
    readable = [row for row in first if not isinstance(row, InvalidRow)]
    if readable and not any(column in row for row in readable):
        raise InputError(
            f"column {column!r} in no row of the first {len(first)} of {source.path} (keys: {', '.join(readable[0]) or 'none'})"
        )
    return itertools.chain([first], chunks)


def progress_bar(total: int | None, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", disable=quiet, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def run_local(args: argparse.Namespace, predictor: Predictor, labels: tuple[str, str], plan: ThreadPlan) -> Summary:
    summary = Summary()
    with open_source(args.input, args.chunk_rows) as source, open_sink(args.out, source) as sink:
        chunks = check_column(source, source.chunks, args.text_column)
        with progress_bar(source.total_rows, args.quiet) as bar:
            for chunk in score_chunks(chunks, predictor, labels, args.text_column, plan, skip_bad=args.skip_bad, summary=summary):
                sink.write(chunk)
                bar.update(len(chunk))
    return summary


def run_ray(args: argparse.Namespace, model_path: str) -> Summary:
    from scoring import ray as ray_engine

    ray_engine.ray_module()  # fail with the extra's name before any work
    bar = progress_bar(None, args.quiet)

    def write_file(source: Source, chunks: Iterator[list[dict[str, Any]]]) -> None:
        with open_sink(args.out, source) as sink:
            for chunk in chunks:
                sink.write(chunk)

    try:
        return ray_engine.score(
            args.input,
            args.out,
            model_path=model_path,
            device=args.device,
            actors=args.workers,
            torch_threads=args.threads or 1,
            text_column=args.text_column,
            skip_bad=args.skip_bad,
            batch_rows=args.chunk_rows,
            out_format=args.out_format,
            address=args.ray_address,
            cores=available_cores(),
            batching={"max_batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens},
            progress=bar.update,
            write_file=write_file,
            precision=args.precision,
        )
    finally:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parser().parse_args(argv)
    args.chunk_rows = args.chunk_rows or (DEFAULT_RAY_BATCH_ROWS if args.engine == "ray" else DEFAULT_CHUNK_ROWS)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    model_path = str(args.model or artifact_io.default_model_path())
    try:
        if args.engine == "local":
            from scoring.io import format_of

            format_of(args.input), format_of(args.out)  # an unknown extension fails before the model loads
        device = resolve_device(args.device)
        plan = plan_threads(device, args.workers, args.threads)
        loaded = artifact_io.load(model_path, device, args.precision)
        manifest = loaded.manifest
        log.info(
            "model %s %s (%s, sha256 %s) on %s in %s",
            manifest.name,
            manifest.version,
            model_path,
            loaded.file_sha256[:12],
            device,
            loaded.precision,
        )
        if args.engine == "local":
            log.info(
                "%d workers x %d torch threads, batches of <= %d texts / %d tokens",
                plan.workers,
                plan.torch_threads,
                args.batch_size,
                args.max_batch_tokens,
            )
            predictor = Predictor.from_artifact(loaded, device, max_batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
            summary = run_local(args, predictor, manifest.labels, plan)
        else:
            summary = run_ray(args, model_path)
    except (InputError, artifact_io.ArtifactError, DeviceUnavailable) as exc:
        print(f"sentiment-score: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sentiment-score: interrupted; no output written", file=sys.stderr)
        return 130
    summary.seconds = time.perf_counter() - started
    log.info("%s", summary.line())
    return 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
