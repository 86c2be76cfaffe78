"""Service settings: one pydantic-settings class read from `SENTIMENT_*` environment variables.

Built in `create_app`/`cli`, never at import time, so tests can run apps with
different settings side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.batcher import BatchPolicy
from contract.artifact import MODEL_FILE as MODEL_FILE  # re-exported for tests
from contract.artifact import default_model_path
from contract.predictor import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS
from contract.scored import DEFAULT_MAX_TEXT_CHARS

# Batches of 2-15 texts used to cost more than their texts one by one on CPU (mixed lengths through the
# packed BiLSTM), hence a minimum of 16 there. The batcher now cuts batches of similar lengths (max_padding)
# and the model runs those dense: batch 4 of length-sorted reviews does ~1.8x the reviews/s of batch 1
# (bench/raw_model.py --kernels), so any batch beats running its texts one by one.
AUTO_MIN_BATCH_SIZE = 1


class Settings(BaseSettings):
    """Everything an operator may tune; each field says why it exists."""

    model_config = SettingsConfigDict(env_prefix="SENTIMENT_", extra="ignore", frozen=True)

    model_path: Path = Field(
        default_factory=default_model_path,
        description="Model file to serve; verified (sha256, format, normalizer version) before the service starts.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs; `auto` picks CUDA when available.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="The model's route: `bf16` runs embedding + LSTM in bfloat16 (~1.5-2.5x faster where the hardware has it, "
        "p within ~2e-3 of fp32), `fp32` is exact; `auto` picks bf16 on CPUs with AVX512-BF16 or AMX and CUDA GPUs with bf16.",
    )
    host: str = Field("0.0.0.0", description="Interface to listen on (`sentiment-serve --host` overrides).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (`sentiment-serve --port` overrides).")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve the KServe/Triton GRPCInferenceService and grpc.health.v1 on this port (needs the [grpc] extra); "
        "unset = no gRPC. The image sets 8001, Triton's gRPC port, which tritonclient users expect.",
    )
    max_batch_size: int = Field(
        DEFAULT_MAX_BATCH_SIZE, ge=1, description="Most texts per forward pass; 1 turns batching off (the naive baseline)."
    )
    min_batch_size: int = Field(
        0,
        ge=0,
        description="Batches are 1 text or at least this many: when fewer wait per free worker, they run one by one; "
        "0 = auto: 1 (batches of similar lengths run the dense BiLSTM route, faster than their texts one by one).",
    )
    max_batch_padding: float = Field(
        1.2,
        ge=1.0,
        description="A batch grows (the oldest text plus those closest to it in length) only while its padded tokens "
        "stay within this many times its real tokens; the rest wait for the next free worker. Large = no cap.",
    )
    max_queue_age_ms: int = Field(
        250,
        ge=0,
        description="Texts waiting longer than this join the next batch whatever their length, so length grouping "
        "cannot hold back a text of a rare length (0 = off; the oldest text is always in the next batch).",
    )
    queue_age_factor: float = Field(
        2.0,
        ge=0.0,
        description="...and only when they also waited this many times the recent mean wait: under sustained overload "
        "every text is older than any fixed age, and the fixed rule alone would batch first-in-first-out, mixing lengths.",
    )
    max_batch_tokens: int = Field(
        DEFAULT_MAX_BATCH_TOKENS,
        ge=1,
        description="Most padded tokens (texts x longest text) per forward pass: bounds memory and latency per batch.",
    )
    max_queue: int = Field(1024, ge=1, description="Most texts waiting for the model; beyond it requests get 503 + Retry-After at once.")
    max_items_per_request: int = Field(
        256, ge=1, description="Most texts in one request (422 beyond), so one client cannot fill the queue."
    )
    max_text_chars: int = Field(
        DEFAULT_MAX_TEXT_CHARS, ge=1, description="Most characters per text (422 beyond); longer token sequences are truncated head+tail."
    )
    max_body_bytes: int = Field(1 << 20, ge=1, description="Most bytes per request body (413 beyond), counted while streaming.")
    request_timeout_ms: int = Field(
        30_000, ge=0, description="Default deadline per request (504 past it; 0 = none); `X-Request-Timeout-Ms` may ask for less."
    )
    processes: int = Field(
        0,
        ge=0,
        description="Serving processes sharing the port (SO_REUSEPORT), each with its own model and workers; 0 = auto: 1 on "
        "CUDA, on CPU 2 where there are 2 cores or more (one process's GIL holds it at ~1.6 of 2 cores; two answer 18-48 % "
        "more). Each has its own queue and limits (max_queue, max_in_flight, max_connections...: per process).",
    )
    model_workers: int = Field(
        0,
        ge=0,
        description="Batches that run at once in each process, each on its own thread; 0 = auto: 1 on CUDA, on CPU one per "
        "core of the process's share up to 4 (two 1-core batches beat one 2-core batch: the LSTM gains little from batch "
        "size or intra-op threads).",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Intra-op CPU threads per model worker; 0 = auto: the process's share of the cores split evenly by its "
        "workers (at least 1).",
    )
    api_key: SecretStr | None = Field(
        None, description="If set, /predict and /v2/models/*/infer need `Authorization: Bearer <key>`; health, metrics, docs stay open."
    )
    admin_key: SecretStr | None = Field(
        None,
        description="If set, `POST /admin/reload` exists and needs `Authorization: Bearer <key>`: it reloads the model from "
        "model_path without a restart (SIGHUP does the same). Unset = no admin routes.",
    )
    model_watch_s: float = Field(
        0.0,
        ge=0,
        description="Check model_path's modification time and size every this many seconds and reload the model when they "
        "change (say, a Kubernetes volume update); 0 = off.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty turns CORS off."
    )
    max_in_flight: int = Field(
        512,
        ge=1,
        description="Most requests with a body handled at once (JSON 503 + Retry-After beyond, before reading the body): "
        "with max_body_bytes it bounds memory held by bodies.",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Most open connections before stalled ones are reclaimed: past it, connections whose client has "
        "been idle or sending its head or body for 1 s or more are closed (JSON 408), longest first (app/server.py).",
    )
    max_connections_per_client: int = Field(
        0,
        ge=0,
        description="Most open connections from one client address (JSON 503 and close beyond); 0 = no cap. Keep it 0 "
        "behind a proxy or load balancer: there every connection comes from the proxy's address.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request head must arrive within this long of its first byte (JSON 408 and close beyond): "
        "slow-header clients (slowloris) cannot hold connections. Also gRPC's HTTP/2 handshake deadline.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body must arrive within this long of the end of its head (JSON 408 and close beyond); "
        "a total, not a rate, so it bounds how long a trickling sender holds a connection.",
    )
    malloc_trim_idle_ms: int = Field(
        0,
        description="0 = off. After this long with no request in progress and no text queued, return freed heap to "
        "the OS (glibc malloc_trim, off the event loop, once per idle period). No-op under jemalloc.",
        ge=0,
    )
    shutdown_timeout_s: float = Field(
        25.0, gt=0, description="On SIGTERM, how long in-flight requests may take to finish; keep below the orchestrator's grace period."
    )
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, readiness turns 503 at once but requests are still served for this long, so load balancers "
        "move away first (the preStop sleep, built in); then the listener closes. Grace period > this + shutdown_timeout_s.",
    )
    keep_alive_timeout_s: float = Field(
        75.0,
        gt=0,
        description="Idle keep-alive connections are closed after this long; keep it above the idle timeout of any proxy "
        "or load balancer in front (often 60 s), or the server closes connections the proxy is reusing (502s).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server log level (uvicorn and the app); `warning` keeps logs to problems."
    )
    access_log: bool = Field(False, description="Log every request (costs throughput; Prometheus metrics cover the counts).")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object per line (time, level, logger, message; a request's access line adds request_id, "
        "method, route, status, latency_ms, model_version, and trace_id when tracing is on); `text`: plain lines as uvicorn writes them.",
    )

    def batch_policy(self, workers: int) -> BatchPolicy:
        """The batcher's policy for `workers` model threads (the resolved `model_workers`): the one place settings become it."""
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_queue=self.max_queue,
            workers=workers,
            min_batch_size=self.min_batch_size or AUTO_MIN_BATCH_SIZE,
            max_batch_padding=self.max_batch_padding,
            max_queue_age_ms=self.max_queue_age_ms,
            queue_age_factor=self.queue_age_factor,
        )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key", "admin_key", mode="after")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _request_fits_queue(self) -> Settings:
        if self.max_items_per_request > self.max_queue:
            raise ValueError(f"max_items_per_request ({self.max_items_per_request}) must not exceed max_queue ({self.max_queue})")
        return self
