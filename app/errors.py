"""Typed errors and their one mapping to HTTP status codes and JSON bodies (and gRPC status codes).

Every error answer, whoever raises it, goes through `error_response`:
`{"error": {"type": ..., "message": ...}}`, except under /v2 where the Open
Inference Protocol wants `{"error": "..."}`. Client mistakes are 4xx naming
the problem; only genuine bugs are 500, and those never leak internals. Each
error also names its gRPC status code (`grpc_code`, a `grpc.StatusCode` name,
so this module needs no grpcio); app/grpc_server.py answers with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app import batcher

if TYPE_CHECKING:
    from app.metrics import Metrics

logger = logging.getLogger(__name__)

OIP_PREFIX = "/v2"
RETRY_AFTER_S = "1"


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    grpc_code: ClassVar[str] = "INTERNAL"
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    status, type, grpc_code = 422, "invalid_input", "INVALID_ARGUMENT"


class MalformedBody(ServiceError):
    status, type, grpc_code = 400, "malformed_body", "INVALID_ARGUMENT"


class Unauthorized(ServiceError):
    status, type, grpc_code = 401, "unauthorized", "UNAUTHENTICATED"
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status, type, grpc_code = 403, "forbidden", "PERMISSION_DENIED"


class ReloadFailed(ServiceError):
    """The model file failed to load, verify or pass the golden check: the model serving before still serves."""

    status, type, grpc_code = 422, "reload_failed", "FAILED_PRECONDITION"


class NotFound(ServiceError):
    status, type, grpc_code = 404, "not_found", "NOT_FOUND"


class PayloadTooLarge(ServiceError):
    status, type, grpc_code = 413, "payload_too_large", "RESOURCE_EXHAUSTED"


class Overloaded(ServiceError):
    status, type, grpc_code = 503, "overloaded", "RESOURCE_EXHAUSTED"
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": RETRY_AFTER_S}


class ShuttingDown(ServiceError):
    status, type, grpc_code = 503, "shutting_down", "UNAVAILABLE"
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": RETRY_AFTER_S}


class NotReady(ServiceError):
    status, type, grpc_code = 503, "not_ready", "UNAVAILABLE"
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": RETRY_AFTER_S}


class RequestTimeout(ServiceError):
    """The client did not send its request (head or body) in time; the server closes the connection."""

    status, type, grpc_code = 408, "request_timeout", "DEADLINE_EXCEEDED"
    headers: ClassVar[Mapping[str, str]] = {"Connection": "close"}


class Timeout(ServiceError):
    status, type, grpc_code = 504, "deadline_exceeded", "DEADLINE_EXCEEDED"


# The batcher knows nothing of these errors; app/service.py turns its refusals into them with this table, once.
BATCHER_ERRORS: dict[type[Exception], type[ServiceError]] = {
    batcher.QueueFull: Overloaded,
    batcher.Closed: ShuttingDown,
    batcher.DeadlineExceeded: Timeout,
}

HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_response(path: str, status: int, type_: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error body format (OIP's plain string under /v2)."""
    body: object = {"error": message} if path.startswith(OIP_PREFIX) else {"error": {"type": type_, "message": message}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def service_error_response(path: str, exc: ServiceError, metrics: Metrics | None) -> JSONResponse:
    """The answer to a ServiceError, raised in a route or met in middleware; refusals (503, 504) are counted."""
    if exc.status in (503, 504) and metrics is not None:
        metrics.rejected.labels(exc.type).inc()
    return error_response(path, exc.status, exc.type, exc.message, exc.headers)


def documented(model: type, descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's OpenAPI `responses`: each error status with its body model and what it means there."""
    return {status: {"model": model, "description": description} for status, description in descriptions.items()}


def _from_service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return service_error_response(request.url.path, exc, getattr(request.app.state, "metrics", None))


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _from_service_error(request, exc)


def _describe(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(request.url.path, exc.errors(), request.headers.get("content-type", ""))


def validation_error_response(path: str, errors: Sequence[Any], content_type: str) -> JSONResponse:
    """The answer to a body that failed validation (FastAPI's errors, or the /predict fast lane's with `body` first in each loc)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (e.get("ctx") or {}).get("error", "")
        position = e.get("loc", ("body", "?"))[-1]
        return error_response(path, 400, MalformedBody.type, f"request body is not valid JSON: {detail} (at character {position})")
    messages = [f"{_describe(tuple(e.get('loc', ())))}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}" for e in errors[:10]]
    if "json" not in content_type and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        messages.append(f"the body must be JSON sent with `Content-Type: application/json` (got {content_type or 'none'!r})")
    return error_response(path, 422, InvalidInput.type, "; ".join(messages))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message, type_ = str(exc.detail), HTTP_TYPES.get(exc.status_code, "http_error")
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's body parsing wraps it in a vague 400
        message, type_ = f"request body is not valid UTF-8 (byte {exc.__cause__.start})", MalformedBody.type
    elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        message, type_ = f"request body could not be parsed: {exc.__cause__}", MalformedBody.type
    return error_response(request.url.path, exc.status_code, type_, message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A genuine bug: log it with the request id, tell the client nothing internal."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    logger.error("unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id, exc_info=exc)
    response = error_response(request.url.path, 500, ServiceError.type, f"internal server error (request id {request_id})")
    response.headers["X-Request-ID"] = request_id
    return response


def install(app: FastAPI) -> None:
    """Register the mapping on an app."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
