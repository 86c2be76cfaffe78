"""One machine: chunks of rows -> contract.predictor on a pool of model threads -> rows back in input order.

The main thread reads and encodes chunk k+1 while the pool runs chunk k's
length-sorted batches, so the model threads never wait for the reader; at most
`depth` chunks are held at once, so memory is bounded whatever the file size.
Threads, not processes: torch releases the GIL inside forward, as in the
service's model workers (the same thread plan: contract.device.plan_threads).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from contract.device import ThreadPlan
from contract.predictor import Pending, Predictor
from scoring import columns as scored_columns
from scoring.io import text_value
from scoring.options import Options


@dataclass
class Summary:
    rows: int = 0  # input rows
    errors: int = 0  # rows with an error value (written, or left out with --skip-bad)
    written: int = 0
    seconds: float = 0.0
    resumed_after: int = 0  # input rows a resumed run found done (not in `rows`)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        skipped = f", {self.rows - self.written} left out" if self.written != self.rows else ""
        resumed = f" after the {self.resumed_after} done before" if self.resumed_after else ""
        return f"scored {self.rows} rows{resumed} ({self.errors} errors{skipped}) in {self.seconds:.1f} s: {self.rows_per_s:.1f} rows/s"


def score_chunks(
    chunks: Iterable[list[dict[str, Any]]],
    predictor: Predictor,
    labels: tuple[str, str],
    options: Options,
    threads: ThreadPlan,
    *,
    depth: int = 2,
    summary: Summary | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Scored chunks in input order: each row with the scoring columns added (bad rows: error, no prediction; left out with skip_bad)."""
    summary = summary if summary is not None else Summary()
    encoder = predictor.encoder
    assert encoder is not None, "a scoring predictor needs the artifact's encoder"

    def init_thread() -> None:
        if threads.torch_threads:
            torch.set_num_threads(threads.torch_threads)

    def finish(chunk: list[dict[str, Any]], prepared: scored_columns.Prepared, pending: Pending) -> list[dict[str, Any]]:
        added = scored_columns.columns(prepared, pending.result(), labels)
        names = list(added)
        out = []
        for index, row in enumerate(chunk):
            if options.skip_bad and prepared.errors[index] is not None:
                continue
            out.append({**row, **{name: added[name][index] for name in names}})
        summary.rows += len(chunk)
        summary.errors += prepared.n_errors
        summary.written += len(out)
        return out

    held: collections.deque[tuple[list[dict[str, Any]], scored_columns.Prepared, Pending]] = collections.deque()
    pool = ThreadPoolExecutor(threads.workers, thread_name_prefix="model-worker", initializer=init_thread)
    try:
        for chunk in chunks:
            prepared = scored_columns.prepare(encoder, [text_value(row, options.text.name) for row in chunk], options.text.max_chars)
            held.append((chunk, prepared, predictor.submit(prepared.ids, pool)))
            if len(held) >= depth:
                yield finish(*held.popleft())
        while held:
            yield finish(*held.popleft())
    finally:  # closed early (a stop request): drop the batches not started, so the stop waits for no more than those running
        pool.shutdown(wait=True, cancel_futures=True)
