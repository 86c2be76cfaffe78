"""The model on its device, run one batch at a time on the batcher's worker threads. No HTTP here.

app/service.py encodes texts into `Job`s, each pinned to the runner whose
vocabulary encoded it, and queues them in the batcher it owns; the batcher's
worker threads hand each batch to `process`, which runs it with `run_batch` on
that runner (the batcher keys batches on the runner, so a batch never mixes
models: during a reload, texts queued for the old model finish on it).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import torch

from app.config import Settings
from app.metrics import Metrics
from app.request_context import RequestContext
from contract import artifact as artifact_io
from contract.artifact import Artifact
from contract.device import DeviceUnavailable as DeviceUnavailable  # re-exported: app.main and tests import it from here
from contract.device import ThreadPlan, available_cores, plan_threads, resolve_device
from contract.predictor import Predictor
from contract.text import Token

if TYPE_CHECKING:
    from app.tracing import Tracing


def kind(explain: bool) -> str:
    """The metrics label of a batch: a batch is all-explain or all-plain."""
    return "explain" if explain else "predict"


@dataclass(frozen=True, slots=True)
class Job:
    """One encoded text waiting for the model that encoded it, with the request it serves."""

    runner: Runner
    ids: list[int]
    explain: bool
    n_tokens: int  # before truncation
    n_unknown: int
    truncated: bool
    tokens: list[Token] | None  # kept tokens with spans, aligned with ids (explain only)
    context: RequestContext | None = field(default=None, compare=False)  # None: not for a request (the golden check)

    @property
    def batch_key(self) -> Hashable:
        """Jobs that may share a batch: same model, and explained and plain texts never together."""
        return (self.runner, self.explain)


@dataclass(frozen=True, slots=True)
class Output:
    p_positive: float
    attributions: list[float] | None  # one per id (explain only)


class Runner:
    """One loaded model on its device; `run_batch` is its one job (on a worker thread)."""

    def __init__(
        self,
        artifact: Artifact,
        device: torch.device | str = "cpu",
        *,
        threads: ThreadPlan = ThreadPlan(workers=1, torch_threads=0),
        metrics: Metrics | None = None,
    ) -> None:
        self.artifact = artifact
        self.device = torch.device(device)
        self.threads = threads
        self.predictor = Predictor(artifact.module, artifact.encoder, self.device)
        self.loaded_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._metrics = metrics

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None, artifact: Artifact | None = None) -> Runner:
        """Load (and verify) the model file named in the settings, or move `artifact` to the device; raises ArtifactError or DeviceUnavailable."""
        device = resolve_device(settings.device)
        cores = max(1, available_cores() // max(1, settings.processes))  # this process's share (app/process_group.py)
        threads = plan_threads(device, settings.model_workers, settings.torch_threads, cores)
        if artifact is None:
            artifact = artifact_io.load(settings.model_path, device, settings.precision)
        else:
            artifact = artifact_io.place(artifact, device, settings.precision)
        return cls(artifact, device, threads=threads, metrics=metrics)

    def precision(self, explain: bool) -> str:
        """The route a batch runs in: the artifact's, but explanations always run fp32 (training/model.py explain)."""
        return "fp32" if explain else self.artifact.precision

    def run_batch(self, jobs: list[Job]) -> list[Output]:
        """One forward pass (and backward, to explain) over a batch of this runner's jobs (worker thread only)."""
        started = time.perf_counter()
        explain = jobs[0].explain  # the batcher keys batches on it: a batch is all-explain or all-plain
        ids = [job.ids for job in jobs]
        if explain:
            outputs = [Output(p, row) for p, row in self.predictor.explain_batch(ids)]
        else:
            outputs = [Output(p, None) for p in self.predictor.predict_batch(ids)]
        if self._metrics is not None:
            self._metrics.observe_forward(kind(explain), time.perf_counter() - started, self.precision(explain))
        return outputs


def process(jobs: list[Job]) -> list[Output]:
    """The batcher's `process`: a batch runs on the runner that encoded its jobs (looked up per call, so tests can spy on it)."""
    return jobs[0].runner.run_batch(jobs)


def traced_process(tracing: Tracing, jobs: list[Job]) -> list[Output]:
    """`process` inside the batch's `forward` and `queue wait` spans (app/tracing.py): the batcher's `process` when tracing is on."""
    runner = jobs[0].runner
    with tracing.batch(
        [job.context.trace if job.context is not None else None for job in jobs],
        [len(job.ids) for job in jobs],
        runner.precision(jobs[0].explain),
        runner.artifact.manifest.version,
    ):
        return runner.run_batch(jobs)


def init_thread(threads: ThreadPlan) -> None:
    """Runs first on each worker thread: torch's thread count is set per thread under some backends."""
    if threads.torch_threads:
        torch.set_num_threads(threads.torch_threads)
