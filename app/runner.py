"""Texts -> ids -> batched forward on the device -> probabilities (and explanations). No HTTP here.

The runner owns the model and the batcher that feeds it: `predict` encodes on
the caller's side (small requests inline on the event loop, large ones in a
helper thread, see INLINE_ENCODE_CHARS), queues the ids, and the batcher's
worker threads run `forward` on merged batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from app.batcher import Batcher, BatchStats, DeadlineExceeded
from app.config import Settings
from app.metrics import Metrics
from contract import artifact as artifact_io
from contract.artifact import Artifact
from contract.device import DeviceUnavailable as DeviceUnavailable  # re-exported: app.main and tests import it from here
from contract.device import ThreadPlan, plan_threads, resolve_device
from contract.predictor import Predictor, label_and_score
from contract.text import Token
from contract.vocab import pad_batch

if TYPE_CHECKING:
    from app.tracing import Tracing

# Encoding costs ~190 ns/char (~0.2 ms for a typical 1.1k-char review; ~0.3 s for a 1 MiB body)
# and a hop to a helper thread ~0.1-0.5 ms (measured on the 2-core dev box under load). Below this
# many characters per request, encoding inline is cheaper than the hop and stalls the loop < ~1 ms;
# above it, encoding moves off the event loop so big requests never stall other clients.
INLINE_ENCODE_CHARS = 4096

# Batches of 2-15 texts used to cost more than their texts one by one on CPU (mixed lengths through the
# packed BiLSTM), hence a minimum of 16 there. The batcher now cuts batches of similar lengths (max_padding)
# and the model runs those dense: batch 4 of length-sorted reviews does ~1.8x the reviews/s of batch 1
# (bench/raw_model.py --kernels), so any batch beats running its texts one by one.
AUTO_MIN_BATCH_SIZE = 1

# Built-in sanity check run at start-up: readiness requires the model to get both right.
GOLDEN: tuple[tuple[str, int], ...] = (
    ("A wonderful, moving film. I loved every minute of it!", 1),
    ("Dull, boring and awful: a complete waste of time.", 0),
)


def _kind(explain: bool) -> str:
    """The metrics label of a batch: the batcher keys batches on `Job.explain`."""
    return "explain" if explain else "predict"


@dataclass(frozen=True, slots=True)
class Job:
    """One encoded text waiting for the model."""

    ids: list[int]
    explain: bool
    n_tokens: int  # before truncation
    n_unknown: int
    truncated: bool
    tokens: list[Token] | None  # kept tokens with spans, aligned with ids (explain only)
    trace: object | None = None  # telemetry hook: the request's trace context, opaque to the batcher (app/tracing.py)


@dataclass(frozen=True, slots=True)
class Output:
    p_positive: float
    attributions: list[float] | None  # one per id (explain only)


@dataclass(frozen=True, slots=True)
class Attribution:
    token: str
    start: int
    end: int
    attribution: float


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    score: float  # probability of `label`
    p_positive: float
    n_tokens: int
    truncated: bool
    explanation: list[Attribution] | None


class Runner:
    """The model on its device, fed by a batcher; `predict` is the one entry point for routes."""

    def __init__(
        self,
        artifact: Artifact,
        device: torch.device | str = "cpu",
        *,
        max_batch_size: int = 64,
        max_batch_tokens: int = 64 * 400,
        max_queue: int = 1024,
        min_batch_size: int = 1,
        max_padding: float = float("inf"),
        max_age: float | None = None,
        age_factor: float = 0.0,
        threads: ThreadPlan = ThreadPlan(workers=1, torch_threads=0),
        metrics: Metrics | None = None,
    ) -> None:
        self.artifact = artifact
        self.device = torch.device(device)
        self.labels = artifact.manifest.labels
        self._encoder = artifact.encoder
        self._module = artifact.module
        self._predictor = Predictor(artifact.module, artifact.encoder, self.device)
        self.threads = threads
        self._metrics = metrics
        self.golden_ok = False
        self.tracing: Tracing | None = None  # telemetry hook: set by the service when OTEL_* turns tracing on
        self.batcher: Batcher[Job, Output] = Batcher(
            self.forward,
            max_batch_size=max_batch_size,
            max_batch_cost=max_batch_tokens,
            max_queue=max_queue,
            cost=lambda job: len(job.ids),
            key=lambda job: job.explain,  # explained and plain texts never share a batch
            observe=self._observe_batch if metrics else None,
            workers=threads.workers,
            min_batch_size=min_batch_size,
            max_padding=max_padding,
            max_age=max_age,
            age_factor=age_factor,
            thread_initializer=self._init_thread,
            thread_name="model-worker",
        )

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None, artifact: Artifact | None = None) -> Runner:
        """Load (and verify) the model file named in the settings; raises ArtifactError or DeviceUnavailable."""
        device = resolve_device(settings.device)
        threads = plan_threads(device, settings.model_workers, settings.torch_threads)
        if artifact is None:
            artifact = artifact_io.load(settings.model_path, device)
        else:
            artifact = Artifact(artifact.module.to(device), artifact.vocab, artifact.manifest, artifact.file_sha256)
        return cls(
            artifact,
            device,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_queue=settings.max_queue,
            min_batch_size=settings.min_batch_size or AUTO_MIN_BATCH_SIZE,
            max_padding=settings.max_batch_padding,
            max_age=settings.max_queue_age_ms / 1000 if settings.max_queue_age_ms else None,
            age_factor=settings.queue_age_factor,
            threads=threads,
            metrics=metrics,
        )

    @property
    def accepting(self) -> bool:
        """Started and not closing: new texts are taken."""
        return self.batcher.accepting

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a model worker."""
        return self.batcher.depth

    async def start(self) -> None:
        """Start the worker thread, then warm the model up on it with the golden check."""
        self.batcher.start()
        self.golden_ok = await self.batcher.call(self._warm_up)

    async def close(self) -> None:
        """Finish every accepted text, then stop the worker."""
        await self.batcher.close()

    def _init_thread(self) -> None:
        """Runs first on each worker thread: torch's thread count is set per thread under some backends."""
        if self.threads.torch_threads:
            torch.set_num_threads(self.threads.torch_threads)

    def _warm_up(self) -> bool:
        ok = True
        for explain in (False, True, False):  # TorchScript's profiling executor optimizes on the first calls
            jobs = self.encode([text for text, _ in GOLDEN], explain=explain)
            for (_, expected), output in zip(GOLDEN, self.forward(jobs), strict=True):
                ok = ok and (output.p_positive >= 0.5) == bool(expected)
        return ok

    def encode(self, texts: Sequence[str], explain: bool = False) -> list[Job]:
        """Texts -> jobs; spans are computed only for explanations (2.5x the cost)."""
        jobs = []
        for text in texts:
            if explain:
                encoded, tokens = self._encoder.encode_with_spans(text)
            else:
                encoded, tokens = self._encoder.encode(text), None
            jobs.append(Job(encoded.ids, explain, encoded.n_tokens, encoded.n_unknown, encoded.truncated, tokens))
        return jobs

    async def predict(self, texts: Sequence[str], *, explain: bool = False, timeout: float | None = None) -> list[Prediction]:
        """Predictions in input order. Raises the batcher's QueueFull/Closed/DeadlineExceeded."""
        started = time.monotonic()
        self.batcher.check_room(len(texts))  # refuse before encoding when the queue is full or closing
        if sum(len(t) for t in texts) <= INLINE_ENCODE_CHARS:
            jobs = self.encode(texts, explain)
        else:
            jobs = await asyncio.to_thread(self.encode, texts, explain)
        if self._metrics is not None:
            for job in jobs:
                self._metrics.observe_text(len(job.ids) if job.n_tokens else 0, job.n_unknown, job.truncated)
        if timeout is not None:
            timeout -= time.monotonic() - started
            if timeout <= 0:
                raise DeadlineExceeded("deadline passed while encoding")
        if self.tracing is not None:  # telemetry hook (app/tracing.py): the request's span context rides on its jobs
            enqueued = self.tracing.enqueued()
            jobs = [replace(job, trace=enqueued) for job in jobs]
        outputs = await self.batcher.submit(jobs, timeout)
        return [self._prediction(job, output) for job, output in zip(jobs, outputs, strict=True)]

    def forward(self, jobs: list[Job]) -> list[Output]:
        """One forward pass over a batch (worker thread only)."""
        if self.tracing is not None:  # telemetry hook (app/tracing.py): the batch's forward and queue-wait spans
            precision = str(getattr(self, "precision", "fp32"))  # the runner's precision once it has one
            with self.tracing.batch([j.trace for j in jobs], [len(j.ids) for j in jobs], precision, self.artifact.manifest.version):
                return self._forward(jobs)
        return self._forward(jobs)

    def _forward(self, jobs: list[Job]) -> list[Output]:
        started = time.perf_counter()
        explain = jobs[0].explain  # the batcher keys batches on it: a batch is all-explain or all-plain
        outputs = self._explain(jobs) if explain else [Output(p, None) for p in self._predictor.forward([job.ids for job in jobs])]
        if self._metrics is not None:
            self._metrics.observe_forward(_kind(explain), time.perf_counter() - started)
        return outputs

    def _observe_batch(self, stats: BatchStats) -> None:
        assert self._metrics is not None
        self._metrics.observe_batch(_kind(bool(stats.key)), stats.size, stats.padded_cost, stats.waits, stats.real_cost)

    def _explain(self, jobs: list[Job]) -> list[Output]:
        """Gradient x input, one backward per group of equal-length texts.

        Why groups: on CPU, the LSTM backward over a packed batch of unequal
        lengths leaves the oneDNN path and costs ~5x more per text than the
        same texts one at a time (measured 16 vs 6 ms per median review);
        equal lengths stay on the fast path and still batch.
        """
        outputs: list[Output | None] = [None] * len(jobs)
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(len(job.ids), []).append(index)
        for rows in groups.values():
            ids, lengths = pad_batch([jobs[i].ids for i in rows])  # [G, T], [G], no padding inside a group
            with torch.enable_grad():  # explain() differentiates: grad mode must be on
                probs, attributions = self._module.explain(ids.to(self.device), lengths.to(self.device))  # [G], [G, T]
            for i, p, row in zip(rows, probs.float().cpu().tolist(), attributions.float().cpu().tolist(), strict=True):
                outputs[i] = Output(p, row)
        return [out for out in outputs if out is not None]

    def _prediction(self, job: Job, output: Output) -> Prediction:
        p = output.p_positive
        label, score = label_and_score(p, self.labels)
        explanation = None
        if job.tokens is not None and output.attributions is not None:
            # zip: a text without tokens was encoded as [UNK] and has no token to attribute
            explanation = [Attribution(t.text, t.start, t.end, a) for t, a in zip(job.tokens, output.attributions, strict=False)]
        return Prediction(
            label=label,
            score=score,
            p_positive=p,
            n_tokens=job.n_tokens,
            truncated=job.truncated,
            explanation=explanation,
        )
