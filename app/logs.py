"""Logging, set up in one place: plain text as before, or one JSON object per line (SENTIMENT_LOG_FORMAT=json).

`configure(settings)` (called by `cli`) sets up the root logger and returns
what uvicorn should do with its own. Text keeps today's lines: the app's
`LEVEL: logger: message` and uvicorn's own formatters, including its access
line when SENTIMENT_ACCESS_LOG is on. JSON goes through python-json-logger;
uvicorn's loggers propagate to the one JSON handler, Python warnings too, and
the access line (still off by default: it costs throughput, and Prometheus
counts requests) is the app's own, written by the request envelope once the
answer is complete, with the fields uvicorn's lacks: request_id, method,
route, status, latency_ms, model_version, and trace_id when tracing is on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from starlette.types import Scope
from uvicorn.config import LOGGING_CONFIG

from app import tracing
from app.config import Settings
from app.middleware import model_version

TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"
access_logger = logging.getLogger("app.access")

# An access line: (scope, route template, status, seconds) -> None.
AccessLog = Callable[[Scope, str, int, float], None]


def configure(settings: Settings) -> dict[str, Any]:
    """Set up logging for the process; returns uvicorn.Config's `log_config` and `access_log` arguments."""
    level = settings.log_level.upper()
    if settings.log_format == "text":
        logging.basicConfig(level=level, format=TEXT_FORMAT, force=True)
        return {"log_config": LOGGING_CONFIG, "access_log": settings.access_log}
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",  # ISO 8601, UTC
            rename_fields={"levelname": "level", "name": "logger"},
        )
    )
    if tracing.enabled():
        handler.addFilter(_trace_ids())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # a warning printed raw would break one-object-per-line
    return {"log_config": None, "access_log": False}  # uvicorn's loggers propagate here; the access line is the app's


def access_log(settings: Settings) -> AccessLog | None:
    """The request envelope's per-request line: only in json form with SENTIMENT_ACCESS_LOG on (text keeps uvicorn's)."""
    if settings.log_format != "json" or not settings.access_log:
        return None

    def log(scope: Scope, route: str, status: int, seconds: float) -> None:
        extra = {
            "request_id": scope.get("state", {}).get("request_id"),
            "method": scope.get("method"),
            "route": route,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "model_version": model_version(scope),  # the one that answered (None: no model did), not the one serving now
        }
        access_logger.info("%s %s %d", scope.get("method"), scope.get("path"), status, extra=extra)

    return log


def _trace_ids() -> Callable[[logging.LogRecord], bool]:
    """A handler filter adding trace_id and span_id of the current span (a request's server span) to records that have one."""
    from opentelemetry import trace

    def add(record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True

    return add
