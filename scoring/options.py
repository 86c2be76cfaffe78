"""One scoring run's settings: built once from the command line, then passed whole to the engine that runs it.

One frozen record instead of a dozen parameters on every function between the
CLI and the model; each default is resolved where the record is built
(scoring/__main__.py), so the engines read final values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scoring.columns import TextColumn


@dataclass(frozen=True)
class Options:
    """Each field is the value of the flag of its name (--batch-size: batch_size), but `model`, `text` and `chunk_rows`, resolved."""

    input: str  # a file, '-' (JSONL on stdin) or, with Ray, a directory of parts
    out: str
    model: str  # the model file's path
    text: TextColumn
    device: str  # as given: "auto", "cpu", "cuda:N" (Ray actors resolve it on their own hardware)
    precision: str  # as given: "auto", "fp32", "bf16"
    workers: int  # 0 = auto
    threads: int  # torch threads per worker; 0 = auto
    batch_size: int  # most texts per forward pass
    max_batch_tokens: int  # most padded tokens per forward pass
    chunk_rows: int  # rows per chunk (local) or per actor call (Ray)
    skip_bad: bool
    resume: bool = False
    quiet: bool = False
    engine: str = "local"
    ray_address: str | None = None
    out_format: str | None = None

    def output_settings(self, precision: str) -> dict[str, Any]:
        """The settings that change the bytes written, as `--resume` records them; `precision` is the route chosen.

        Which rows share a forward pass (chunk and batch limits) changes a probability's last bits. Torch threads
        and workers do not (1 vs 2 threads: bit-equal on 400 IMDb reviews), so a run may resume on a machine with
        other cores. The keys are those of the records already written: keep them.
        """
        return {
            "text_column": self.text.name,
            "max_text_chars": self.text.max_chars,
            "skip_bad": self.skip_bad,
            "chunk_rows": self.chunk_rows,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "precision": precision,
        }
