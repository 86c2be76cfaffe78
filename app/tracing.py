"""OpenTelemetry traces of every request, its queue wait and the batch forward it rode in; nothing at all when off.

On/off, from the standard variables only: tracing is on when OTEL_TRACES_EXPORTER
names an exporter (`otlp`, `console`, `otlp,console`...) and OTEL_SDK_DISABLED is
not `true`; unset, empty or `none` is off. (The OTel spec's default exporter is
`otlp`: here unset means off, so a service nobody configured never dials a
collector.) Off, `from_env()` returns None without importing the SDK: no
middleware, no interceptor, and one `is not None` branch per request
(`Service.predict`); the batcher runs the plain `process`. On, everything else is the SDK's own reading of OTEL_*:
exporters by name through the SDK's auto-configuration helpers (the ones
`opentelemetry-instrument` uses), OTEL_EXPORTER_OTLP_ENDPOINT / _PROTOCOL /
_HEADERS by the exporters, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES by the
resource (default service name: sentiment-service), OTEL_TRACES_SAMPLER by the
provider, OTEL_BSP_* by the batch span processor, OTEL_PROPAGATORS by the
propagator. The provider is the app's own, not the global one.

Spans:
- the request: a SERVER span per HTTP request (FastAPI's native telemetry, given
  this provider) or gRPC call (opentelemetry-instrumentation-grpc's interceptor),
  child of the client's `traceparent`. The answer carries the server span's
  `traceparent` (an HTTP header; gRPC initial metadata). Probes and /metrics are
  not traced.
- `queue wait`: child of the request, from enqueue to the start of a batch it
  rode in (one per batch when a request's texts were split), linked to that
  batch's forward span, so every request's trace leads to its batch.
- `forward`: one per batch, with its size, padded and real tokens, precision,
  worker and model version. One batch serves many requests: it links to the
  request span of every request in it; its parent is the oldest of them (the
  request the batcher cut the batch for), since a span lives in one trace.

Each request's trace context rides to its batch on its `RequestContext`
(`enqueued()`, stamped by `Service.predict` once its texts are encoded, as they
queue), which every queued job keeps; `app.runner.traced_process`, the batcher's
`process` when tracing is on, opens the batch's spans (`batch()`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext

SERVICE_NAME = "sentiment-service"
UNTRACED_PATHS = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """The on/off rule above: OTEL_TRACES_EXPORTER names an exporter and the SDK is not disabled."""
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return exporters not in ("", "none") and environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def from_env() -> Tracing | None:
    """Tracing configured from OTEL_*, or None (and no SDK import) when it is off."""
    if not enabled():
        return None
    from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER(_ARG), span limits
    exporters, _, _ = _import_exporters(_get_exporter_names("traces"), [], [])
    for exporter in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter()))  # each exporter reads its own OTEL_EXPORTER_*
    return Tracing(provider)


@dataclass(frozen=True, slots=True, eq=False)
class Enqueued:
    """A request's span context and the moment its texts were queued: what rides on RequestContext.trace to the batch."""

    context: SpanContext
    at_ns: int  # time.time_ns()


class Tracing:
    """The app's tracer provider and the spans the service opens itself (see the module docstring)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("app.tracing")
        self._trace = trace
        self._traceparent = TraceContextTextMapPropagator()  # the answer carries traceparent only, never baggage

    def fastapi_telemetry(self) -> dict[str, Any]:
        """`FastAPI(telemetry=...)`: server spans on this provider; metrics stay Prometheus', logs stay logging's."""
        return {
            "tracer_provider": self.provider,
            "metrics": False,
            "logs": False,
            "operation_spans": False,  # the request span is the queue wait's direct parent
            "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS,
        }

    def grpc_interceptors(self) -> list[Any]:
        """The gRPC server's interceptors: a SERVER span per call (not health checks), then its traceparent sent back."""
        import grpc
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        tracing = self

        class ReturnTraceparent(grpc.aio.ServerInterceptor):  # type: ignore[misc]
            async def intercept_service(self, continuation: Any, details: Any) -> Any:
                handler = await continuation(details)
                if handler is None or handler.unary_unary is None:
                    return handler
                behavior = handler.unary_unary

                async def unary(request: Any, context: Any) -> Any:
                    metadata = tracing.traceparent()
                    if metadata:
                        await context.send_initial_metadata(tuple(metadata.items()))
                    return await behavior(request, context)

                return grpc.unary_unary_rpc_method_handler(
                    unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
                )

        return [aio_server_interceptor(self.provider, filter_=filters.negate(filters.health_check())), ReturnTraceparent()]

    def traceparent(self) -> dict[str, str]:
        """{"traceparent": ...} of the current span, or {} outside a traced request."""
        carrier: dict[str, str] = {}
        self._traceparent.inject(carrier)
        return carrier

    def enqueued(self) -> Enqueued | None:
        """The current request's span context, stamped now (call it just before queueing); None outside a span."""
        context = self._trace.get_current_span().get_span_context()
        return Enqueued(context, time.time_ns()) if context.is_valid else None

    @contextmanager
    def batch(self, traces: Sequence[Enqueued | None], lengths: Sequence[int], precision: str, model_version: str) -> Iterator[None]:
        """Around one batch's forward (worker thread): the `forward` span and each request's `queue wait` span."""
        requests: dict[Enqueued, int] = {}  # request -> its texts in this batch
        for enqueued in traces:
            if enqueued is not None:
                requests[enqueued] = requests.get(enqueued, 0) + 1
        if not requests:  # the warm-up, or a caller outside any request span
            yield
            return
        trace = self._trace
        started = time.time_ns()
        oldest = min(requests, key=lambda r: r.at_ns)
        span = self.tracer.start_span(
            "forward",
            context=trace.set_span_in_context(trace.NonRecordingSpan(oldest.context)),
            links=[trace.Link(r.context, {"sentiment.texts": n}) for r, n in requests.items()],
            attributes={
                "sentiment.batch.size": len(lengths),
                "sentiment.batch.requests": len(requests),
                "sentiment.batch.padded_tokens": len(lengths) * max(lengths),
                "sentiment.batch.real_tokens": sum(lengths),
                "sentiment.precision": precision,
                "sentiment.worker": threading.current_thread().name,
                "sentiment.model.version": model_version,
            },
            start_time=started,
        )
        forward = trace.Link(span.get_span_context())
        for request, n in requests.items():
            wait = self.tracer.start_span(
                "queue wait",
                context=trace.set_span_in_context(trace.NonRecordingSpan(request.context)),
                links=[forward],
                attributes={"sentiment.texts": n},
                start_time=request.at_ns,
            )
            wait.end(end_time=started)
        with trace.use_span(span, end_on_exit=True):  # records an exception and sets the error status
            yield

    def force_flush(self) -> None:
        """Export what is buffered (the service stops, or a test reads its spans)."""
        self.provider.force_flush()


class ResponseTraceparent:
    """ASGI: the answer carries the server span's `traceparent`; a fast-laned request's span gets its route.

    FastAPI's telemetry opens the server span before any middleware and names
    it after the route it selects; the /predict fast lane answers without
    routing, so its span is named here from the envelope's `scope["route"]`.
    """

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                carrier = self.tracing.traceparent()
                if carrier:
                    MutableHeaders(scope=message).append("traceparent", carrier["traceparent"])
                    route = getattr(scope.get("route"), "path", None)
                    if "endpoint" not in scope and route:  # answered without routing: name the span as FastAPI would
                        span = self.tracing._trace.get_current_span()
                        span.update_name(f"{scope['method']} {route}")
                        span.set_attribute("http.route", route)
            await send(message)

        await self.app(scope, receive, send_traced)
