"""The FastAPI app (`create_app`) and the `sentiment-serve` command (`cli`).

The lifespan starts and stops the app's `Service` (app/service.py: the model,
readiness, draining, reload); `cli` runs it behind `app.server.Server`, which
turns SIGTERM into the service's drain and closes connections without losing
any, and turns SIGHUP into a model reload (`Service.reload`).
With SENTIMENT_GRPC_PORT set, the lifespan also starts app/grpc_server.py on
the same loop and runner; the service's drain stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

from app import allocator, errors, logs, process_group, tracing
from app.config import Settings
from app.metrics import Metrics
from app.middleware import RequestEnvelope
from app.routes import admin, demo, docs, health, model, oip, predict
from app.routes import metrics as metrics_route
from app.runner import DeviceUnavailable, resolve_device
from app.server import Protocol, Server
from app.service import Service
from app.tracing import ResponseTraceparent, Tracing
from app.version import package_version
from contract import artifact as artifact_io
from contract.artifact import Artifact, ArtifactError
from contract.device import cap_kernel_cache

if TYPE_CHECKING:
    from app.grpc_server import GrpcServer

logger = logging.getLogger("app")

DESCRIPTION = """Sentiment (positive / negative) of English movie reviews, from an embedding + BiLSTM model.

Concurrent requests are merged into shared forward passes. `POST /predict` is the native API;
`/v2/...` implements the Open Inference Protocol v2 (KServe, Triton clients; JSON or binary tensor data),
also over gRPC on `SENTIMENT_GRPC_PORT` when set.
Errors are JSON: `{"error": {"type", "message"}}` (`{"error": "..."}` under `/v2`)."""


def create_app(settings: Settings | None = None, *, artifact: Artifact | None = None, tracer: Tracing | None = None) -> FastAPI:
    """An app serving `settings.model_path` (or an already loaded and verified `artifact`); traced by `tracer` or OTEL_*."""
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    tracer = tracer if tracer is not None else tracing.from_env()  # telemetry hook: None unless OTEL_* turns tracing on
    service = Service(settings, metrics, artifact, tracing=tracer)
    grpc = _grpc_server(service, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            if grpc is not None:
                await grpc.start()
            yield
        finally:
            await service.stop()  # the server already served its connections; this waits for other listeners, then the runner

    app = FastAPI(
        title="Sentiment service",
        version=package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by app/routes/docs.py from a package, not a CDN
        redoc_url=None,  # ReDoc has no offline bundle here; Swagger UI at /docs covers it
        **({"telemetry": tracer.fastapi_telemetry()} if tracer is not None else {}),  # telemetry hook: request spans
    )
    app.openapi = lambda: docs.openapi(app, api_key=settings.api_key is not None)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service
    app.state.process_group = None  # the cli's Primary or Secondary when several processes serve (app/process_group.py)
    errors.install(app)
    app.add_middleware(predict.FastLane, service=service, metrics=metrics)  # inside the envelope: gets the body it read
    app.add_middleware(
        RequestEnvelope,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        access_log=logs.access_log(settings),  # telemetry hook
    )
    if settings.cors_origins:  # added last = outermost, so even error answers carry CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-Request-Timeout-Ms"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    if tracer is not None:  # telemetry hook: answers carry the server span's traceparent
        app.add_middleware(ResponseTraceparent, tracing=tracer)
    for module in (predict, health, model, metrics_route, oip, demo, docs):
        app.include_router(module.router)
    if settings.admin_key is not None:
        app.include_router(admin.router)
    return app


def _grpc_server(service: Service, settings: Settings) -> GrpcServer | None:
    """The gRPC listener when SENTIMENT_GRPC_PORT is set (grpcio and its stubs come with the [grpc] extra)."""
    if settings.grpc_port is None:
        return None
    try:
        from app.grpc_server import GrpcServer
    except ImportError as exc:
        raise ImportError(
            f"SENTIMENT_GRPC_PORT is set but gRPC support is not installed ({exc}): pip install 'sentiment-service[grpc]'"
        ) from exc
    return GrpcServer(service, settings)


def _fail(message: str, code: int) -> NoReturn:
    print(f"sentiment-serve: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def cli(argv: list[str] | None = None) -> None:
    """`sentiment-serve [--host H] [--port P]`; everything else from SENTIMENT_* variables."""
    parser = argparse.ArgumentParser(
        prog="sentiment-serve", description="Serve the sentiment model over HTTP. Other settings come from SENTIMENT_* variables."
    )
    parser.add_argument("--host", help="interface to listen on (default SENTIMENT_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (default SENTIMENT_PORT or 8000)")
    parser.add_argument("--group", help=argparse.SUPPRESS)  # a secondary's "FD:PID": its pipe to its primary, and the primary
    args = parser.parse_args(argv)
    # SIGTERM while loading exits at once; after a graceful shutdown uvicorn re-raises it: exit 0, not "killed".
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    try:
        settings = Settings(**{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'SENTIMENT_' + '_'.join(map(str, e['loc'])).upper() if e['loc'] else 'settings'}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}", 2)
    uvicorn_logging = logs.configure(settings)  # telemetry hook: text or json, in one place (app/logs.py)
    allocator.tune()  # before the model allocates: 2 malloc arenas (app/allocator.py)
    cap_kernel_cache()  # before the first forward: oneDNN keeps 8 LSTM shapes, not 1,024 (contract/device.py)
    try:
        device = resolve_device(settings.device)
        settings = process_group.share(settings, process_group.resolve(settings.processes, device))
        forks = args.group is None and settings.processes > 1 and device.type == "cpu"
        with process_group.one_torch_thread(forks):  # no thread pool may exist at the fork; the secondaries share the weights
            artifact = artifact_io.load(settings.model_path, device, settings.precision)
    except (ArtifactError, DeviceUnavailable) as exc:
        _fail(str(exc), 1)
    group, sockets = _group(settings, args.group, forks)
    try:
        app = create_app(settings, artifact=artifact)
    except ImportError as exc:
        _fail(str(exc), 2)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=Protocol,
        log_level=settings.log_level,
        **uvicorn_logging,  # log_config and access_log
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]  # uvicorn takes seconds; float works
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        server_header=False,
    )
    service: Service = app.state.service
    app.state.process_group = group
    server = Server(config, service, app.state.metrics, group)
    signal.signal(signal.SIGHUP, lambda sig, _frame: (service.reload_soon(), group and group.signal(sig)))  # reload, keep serving
    try:
        if isinstance(group, process_group.Primary):
            group.reload_self = service.reload_soon
            group.start()
        server.run(sockets)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        if isinstance(group, process_group.Primary):
            if not group.stopping:  # start-up failed: the secondaries were told nothing yet
                group.signal(signal.SIGTERM)
            group.wait(settings.drain_delay_s + settings.shutdown_timeout_s + 10)
    if not server.started:
        raise SystemExit(3)  # start-up failed; uvicorn logged why


def _group(settings: Settings, secondary_of: str | None, forks: bool) -> tuple[process_group.Group | None, list[socket.socket] | None]:
    """This process's part in a group of serving processes and its own listener; (None, None) when it serves alone.

    `secondary_of` is the hidden `--group FD:PID` the primary gives the secondaries it spawns; None in the primary.
    With `forks`, the primary forks its secondaries here, and each returns from this call a second time as one."""
    if settings.processes == 1:
        return None, None
    try:
        sock = process_group.bind(settings.host, settings.port, check_free=secondary_of is None)
    except OSError as exc:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {exc}", 3)
    if secondary_of is not None:
        return process_group.Secondary(secondary_of), [sock]
    port = sock.getsockname()[1]
    try:
        primary = process_group.Primary(settings.processes, settings.host, port)
    except OSError as exc:  # a read-only filesystem without a writable TMPDIR
        _fail(f"{settings.processes} serving processes need a writable temporary directory (TMPDIR) for their metrics: {exc}", 3)
    if forks and (forked := primary.fork(settings.host, port)) is not None:
        sock.close()  # the primary's; this secondary listens on its own
        secondary, own = forked
        return secondary, [own]
    logger.info("serving with %d processes on port %d", settings.processes, port)
    return primary, [sock]


if __name__ == "__main__":
    cli()
