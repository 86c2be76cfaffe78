"""Prometheus collectors, on a registry per app so several apps (tests) can coexist in one process.

Fed with primitive events (a kind, sizes, seconds): it imports nothing from
`app` and knows nothing of the objects it counts, so the runner and the
batcher can change without touching it, and it cannot form an import cycle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest, multiprocess, values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to multiprocess values

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PADDING_BUCKETS = (1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 5.0)
FRACTION_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    """Every collector the service exports; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Several serving processes (app/process_group.py): values live in files shared by the group, and /metrics
        # reads them all. The process_* series would describe only the process that took the scrape: left out then.
        self.shared = MULTIPROC_ENV in os.environ
        if not self.shared:
            ProcessCollector(registry=r)  # RSS, CPU, open fds: memory must stay bounded under load
        # Shared: each process's RSS as its own series (a pid label), sampled at scrapes and at most once a second.
        self.rss = Gauge("process_resident_memory_bytes", "Resident memory size in bytes.", registry=None, multiprocess_mode="liveall")
        self._rss_sampled = 0.0
        self._depth: Callable[[], int] | None = None
        self._model: tuple[str, str, str] | None = None  # sentiment_model_info's labels now
        self.requests = Counter(
            "sentiment_http_requests", "HTTP requests by route template and status.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "sentiment_http_request_duration_seconds",
            "HTTP request latency by route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "sentiment_http_requests_in_progress", "HTTP requests being served.", registry=r, multiprocess_mode="livesum"
        )
        self.batch_size = Histogram("sentiment_batch_size", "Texts per forward pass.", ["kind"], buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "sentiment_batch_tokens", "Padded tokens (texts x longest) per forward pass.", ["kind"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_real_tokens = Counter(
            "sentiment_batch_real_tokens",
            "Real (unpadded) tokens run through the model; padding waste = rate of padded / rate of real tokens.",
            ["kind"],
            registry=r,
        )
        self.batch_padded_tokens = Counter(
            "sentiment_batch_padded_tokens", "Padded tokens (texts x longest) run through the model.", ["kind"], registry=r
        )
        self.batch_padding = Histogram(
            "sentiment_batch_padding_ratio",
            "Padded / real tokens per forward pass (1 = no padding).",
            ["kind"],
            buckets=PADDING_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("sentiment_queue_depth", "Texts waiting for the model.", registry=r, multiprocess_mode="livesum")
        self.queue_wait = Histogram(
            "sentiment_queue_wait_seconds", "Time a text waited in the queue before its batch started.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "sentiment_forward_seconds",
            "Model forward (and backward, for explain) time per batch, by the precision it ran in.",
            ["kind", "precision"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter("sentiment_texts", "Texts encoded.", registry=r)
        self.truncated = Counter("sentiment_texts_truncated", "Texts longer than the model's max_length, cut head+tail.", registry=r)
        self.tokens = Counter("sentiment_tokens", "Tokens kept for the model.", registry=r)
        self.unknown_tokens = Counter(
            "sentiment_unknown_tokens", "Kept tokens outside the vocabulary (OOV rate = this / tokens).", registry=r
        )
        self.oov_fraction = Histogram(
            "sentiment_text_oov_fraction", "Per-text fraction of kept tokens outside the vocabulary.", buckets=FRACTION_BUCKETS, registry=r
        )
        self.rejected = Counter("sentiment_rejected", "Texts refused or dropped, by reason.", ["reason"], registry=r)
        self.model_info = Gauge(
            "sentiment_model_info",
            "The model being served (value 1; with several processes, models served before in this run stay at 0).",
            ["name", "version", "device"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_reloads = Counter("sentiment_model_reloads", "Model reloads by result (ok, error).", ["result"], registry=r)
        self.model_reloads.labels("ok"), self.model_reloads.labels("error")  # both series exist from the start, at 0

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from `depth()` at each scrape (shared: also at each batch, for the other processes' scrapes)."""
        if self.shared:
            self._depth = depth
        else:
            self.queue_depth.set_function(depth)

    def _sample_rss(self) -> None:
        self._rss_sampled = time.monotonic()
        self.rss.set(rss_bytes())

    def _sample_depth(self) -> None:
        if self._depth is not None:
            self.queue_depth.set(self._depth())

    def set_model(self, name: str, version: str, device: str) -> None:
        """The model serving now (the one series of sentiment_model_info: a reload replaces it)."""
        if not self.shared:
            self.model_info.clear()
        elif self._model is not None:  # a shared file keeps every series it ever held: the one replaced reads 0
            self.model_info.labels(*self._model).set(0)
        self._model = (name, version, device)
        self.model_info.labels(*self._model).set(1)
        if self.shared:  # each process's RSS series reads its memory with the model loaded, before its first batch
            self._sample_rss()

    def observe_reload(self, ok: bool) -> None:
        self.model_reloads.labels("ok" if ok else "error").inc()

    def observe_batch(self, kind: str, size: int, padded_tokens: int, waits: Iterable[float], real_tokens: int = 0) -> None:
        """One forward pass of `kind` ("predict" / "explain") started: its size, padded and real tokens, each text's queue wait."""
        self.batch_size.labels(kind).observe(size)
        self.batch_tokens.labels(kind).observe(padded_tokens)
        if real_tokens:  # padding waste = padded / real tokens
            self.batch_real_tokens.labels(kind).inc(real_tokens)
            self.batch_padded_tokens.labels(kind).inc(padded_tokens)
            self.batch_padding.labels(kind).observe(padded_tokens / real_tokens)
        for wait in waits:
            self.queue_wait.observe(wait)
        if self.shared:
            self._sample_depth()
            if time.monotonic() - self._rss_sampled >= 1.0:
                self._sample_rss()

    def observe_forward(self, kind: str, seconds: float, precision: str = "fp32") -> None:
        self.forward_seconds.labels(kind, precision).observe(seconds)

    def observe_text(self, kept_tokens: int, unknown_tokens: int, truncated: bool) -> None:
        """One text encoded: tokens kept for the model, how many of them are out of vocabulary, whether it was cut."""
        self.texts.inc()
        self.tokens.inc(kept_tokens)
        if truncated:
            self.truncated.inc()
        if kept_tokens:
            self.unknown_tokens.inc(unknown_tokens)
            self.oov_fraction.observe(unknown_tokens / kept_tokens)

    def render(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        self._sample_depth()
        self._sample_rss()
        group = CollectorRegistry()
        multiprocess.MultiProcessCollector(group)
        return generate_latest(group)


def rss_bytes() -> int:
    """This process's resident memory (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def share_across_processes(directory: str) -> None:
    """Keep values in `directory`'s files from now on, for this process and the processes it starts.

    prometheus_client picks its value class once, at import, from PROMETHEUS_MULTIPROC_DIR; the primary serving
    process imported it before it knew it would have company, so it picks again here, before any collector exists.
    """
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()


def process_died(pid: int) -> None:
    """Drop a dead process's live gauges (in progress, queue depth, model info) from the shared files."""
    if MULTIPROC_ENV in os.environ:
        multiprocess.mark_process_dead(pid)
