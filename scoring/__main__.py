"""`sentiment-score INPUT --out OUTPUT`: every row of INPUT with label, score, p_positive, n_tokens, truncated, error.

Exit codes: 0 done (bad rows are counted, not fatal), 2 the input, output,
column, model or device cannot be used, the disk is full, or --resume cannot
continue (one line on stderr saying why), 143 / 130 stopped by SIGTERM / SIGINT
(at a chunk boundary: run again with --resume to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from contract import artifact as artifact_io
from contract.device import DeviceUnavailable, ThreadPlan, available_cores, cap_kernel_cache, plan_threads, resolve_device
from contract.predictor import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, Predictor
from contract.scored import DEFAULT_MAX_TEXT_CHARS
from scoring.columns import TextColumn
from scoring.io import STDIO, InputError, InvalidRow, Source, WriteFailed, open_sink, open_source, partial_path, replaced_columns
from scoring.local import Summary, score_chunks
from scoring.options import Options
from scoring.resume import Checkpoint, Job, ResumeRefused, input_identity, record_path
from scoring.stop import Stopped, StopRequests

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
    p.add_argument(
        "--max-text-chars",
        type=positive,
        default=DEFAULT_MAX_TEXT_CHARS,
        help=f"longer texts get an error value instead of a prediction, as the service answers 422 (default {DEFAULT_MAX_TEXT_CHARS})",
    )
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
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run that left OUTPUT.partial, from its last complete chunk (same input, model and settings)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--out-format", choices=("csv", "jsonl", "parquet"), default=None, help="format of a directory output (default: the input's)"
    )
    return p


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def options_of(args: argparse.Namespace) -> Options:
    """The run's settings: model path, text column and chunk size (by engine) resolved, the rest as the flags of their names give them."""
    resolved = {
        "model": str(args.model or artifact_io.default_model_path()),
        "text": TextColumn(args.text_column, args.max_text_chars),
        "chunk_rows": args.chunk_rows or (DEFAULT_RAY_BATCH_ROWS if args.engine == "ray" else DEFAULT_CHUNK_ROWS),
    }
    as_given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Options) if field.name not in resolved}
    return Options(**resolved, **as_given)


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


def progress_bar(total: int | None, quiet: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="rows", disable=quiet, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def check_resumable(options: Options) -> None:
    """--resume needs files on both ends, and the local engine; refuse before the model loads."""
    if options.engine == "ray":
        raise ResumeRefused(
            "--resume works with --engine local only: Ray Data retries failed tasks and restarts actors, "
            "but a job whose driver died starts over (docs/scoring.md#resuming)"
        )
    if STDIO in (options.input, options.out):
        raise ResumeRefused("--resume needs an input file and an output file, not '-'")


def job_of(options: Options, model_sha256: str, device: torch.device, precision: str) -> Job:
    """What a resumed run must match; `precision` is the route chosen, so "auto" matches the route it picked, not the word."""
    settings = options.output_settings(precision)
    settings["device"] = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    return Job(input_identity(options.input), model_sha256, settings)


def checkpoint_for(options: Options, job: Job) -> Checkpoint:
    """Where this run starts: the recorded state of an interrupted run (--resume), else the first row."""
    partial = partial_path(options.out)
    record = record_path(partial)
    if options.resume and partial.exists() and record.is_file():
        saved = Checkpoint.load(record)
        reason = job.mismatch(saved.job)
        if reason is not None:
            raise ResumeRefused(f"cannot resume {options.out}: {reason}; run without --resume to start over")
        log.info("resuming %s after %d rows", options.out, saved.rows_done)
        return saved
    if options.resume:
        log.info("nothing to resume for %s (no %s with its record): starting from the first row", options.out, partial)
    elif partial.exists():
        log.warning("starting over: %s of an earlier run is discarded (--resume would continue it)", partial)
    return Checkpoint(job)


def skip_rows(chunks: Iterable[list[dict[str, Any]]], rows: int) -> Iterator[list[dict[str, Any]]]:
    """The chunks after the first `rows` rows. They are read again, not scored: parsing is ~1,000x cheaper than the model."""
    rest = iter(chunks)
    skipped = 0
    while skipped < rows:
        chunk = next(rest, None)
        if chunk is None:
            break
        skipped += len(chunk)
    if skipped != rows:  # the input's identity and chunk size are checked first, so only a damaged record gets here
        raise ResumeRefused(f"cannot resume: the record says {rows} rows were done, but chunks end at {skipped}")
    return rest


def run_local(options: Options, predictor: Predictor, labels: tuple[str, str], plan: ThreadPlan, checkpoint: Checkpoint | None) -> Summary:
    """Score chunk after chunk; each is written and recorded (commit) before the next, and a stop request is honoured between."""
    done = checkpoint.rows_done if checkpoint is not None else 0
    summary = Summary(resumed_after=done)
    with (
        StopRequests() as stop,
        open_source(options.input, options.chunk_rows) as source,
        open_sink(options.out, source, checkpoint) as sink,
    ):
        chunks = skip_rows(check_column(source, source.chunks, options.text.name), done)
        scored = score_chunks(chunks, predictor, labels, options, plan, summary=summary)
        with progress_bar(source.total_rows, options.quiet, done) as bar, contextlib.closing(scored):
            for chunk in scored:
                sink.write(chunk)
                sink.commit(done + summary.rows)
                bar.update(len(chunk))
                stop.check()
    return summary


def run_ray(options: Options) -> Summary:
    from scoring import ray as ray_engine

    ray_engine.ray_module()  # fail with the extra's name before any work
    bar = progress_bar(None, options.quiet)

    def write_file(source: Source, chunks: Iterator[list[dict[str, Any]]]) -> None:
        with open_sink(options.out, source) as sink:
            for chunk in chunks:
                sink.write(chunk)

    try:
        return ray_engine.score(options, cores=available_cores(), progress=bar.update, write_file=write_file)
    finally:
        bar.close()


def local_predictor(options: Options, loaded: artifact_io.Artifact, device: torch.device, plan: ThreadPlan) -> Predictor:
    """The model with the run's batch limits, for the local engine's worker threads."""
    log.info(
        "%d workers x %d torch threads, batches of <= %d texts / %d tokens",
        plan.workers,
        plan.torch_threads,
        options.batch_size,
        options.max_batch_tokens,
    )
    return Predictor.from_artifact(loaded, device, max_batch_size=options.batch_size, max_batch_tokens=options.max_batch_tokens)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    options = options_of(parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    cap_kernel_cache()  # before the first forward: sorted chunks make many batch shapes too (contract/device.py)
    checkpoint = None
    try:
        if options.resume:
            check_resumable(options)
        if options.engine == "local":
            from scoring.io import format_of

            format_of(options.input), format_of(options.out)  # an unknown extension fails before the model loads
        device = resolve_device(options.device)
        plan = plan_threads(device, options.workers, options.threads)
        loaded = artifact_io.load(options.model, device, options.precision)
        manifest = loaded.manifest
        log.info(
            "model %s %s (%s, sha256 %s) on %s in %s",
            manifest.name,
            manifest.version,
            options.model,
            loaded.file_sha256[:12],
            device,
            loaded.precision,
        )
        if options.engine == "local":
            predictor = local_predictor(options, loaded, device, plan)
            # A stream cannot be read again from a row on, nor appended to; a missing input gets open_source's message.
            if STDIO not in (options.input, options.out) and Path(options.input).is_file():
                checkpoint = checkpoint_for(options, job_of(options, loaded.file_sha256, device, loaded.precision))
            summary = run_local(options, predictor, manifest.labels, plan, checkpoint)
        else:
            summary = run_ray(options)
    except (InputError, ResumeRefused, artifact_io.ArtifactError, DeviceUnavailable) as exc:
        print(f"sentiment-score: error: {exc}", file=sys.stderr)
        return 2
    except WriteFailed as exc:
        print(f"sentiment-score: error: {exc}{kept(options, checkpoint)}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"sentiment-score: stopped by {exc}{kept(options, checkpoint)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sentiment-score: interrupted; no output written", file=sys.stderr)
        return 130
    summary.seconds = time.perf_counter() - started
    log.info("%s", summary.line())
    return 0


def kept(options: Options, checkpoint: Checkpoint | None) -> str:
    """What a failed or stopped run leaves, for its last line."""
    if options.out == STDIO:
        return "; the output on stdout is incomplete"
    if checkpoint is None:
        return "; no output file written"
    if not checkpoint.rows_done:
        return "; no rows were done"
    return f"; the first {checkpoint.rows_done} rows are kept: run the same command with --resume to continue"


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
