"""Prometheus collectors, on a registry per app so several apps (tests) can coexist in one process.

Fed with primitive events (a kind, sizes, seconds): it imports nothing from
`app` and knows nothing of the objects it counts, so the runner and the
batcher can change without touching it, and it cannot form an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

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
        ProcessCollector(registry=r)  # RSS, CPU, open fds: memory must stay bounded under load
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
        self.in_progress = Gauge("sentiment_http_requests_in_progress", "HTTP requests being served.", registry=r)
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
        self.queue_depth = Gauge("sentiment_queue_depth", "Texts waiting for the model.", registry=r)
        self.queue_wait = Histogram(
            "sentiment_queue_wait_seconds", "Time a text waited in the queue before its batch started.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "sentiment_forward_seconds",
            "Model forward (and backward, for explain) time per batch.",
            ["kind"],
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
        self.model_info = Gauge("sentiment_model_info", "The model being served (value 1).", ["name", "version", "device"], registry=r)
        self.model_reloads = Counter("sentiment_model_reloads", "Model reloads by result (ok, error).", ["result"], registry=r)
        self.model_reloads.labels("ok"), self.model_reloads.labels("error")  # both series exist from the start, at 0

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from `depth()` at each scrape."""
        self.queue_depth.set_function(depth)

    def set_model(self, name: str, version: str, device: str) -> None:
        """The model serving now (the one series of sentiment_model_info: a reload replaces it)."""
        self.model_info.clear()
        self.model_info.labels(name, version, device).set(1)

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

    def observe_forward(self, kind: str, seconds: float) -> None:
        self.forward_seconds.labels(kind).observe(seconds)

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
        return generate_latest(self.registry)
