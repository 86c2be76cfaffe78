"""What routes get injected: the runner, or for inference the runner, settings, deadline and API-key check; readiness.

All `async def` although none awaits: FastAPI runs a plain `def` dependency in
its thread pool, a hop per dependency per request (py-spy: 12 % of the event
loop's time went to those hops); these never block, so they run inline.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import WithJsonSchema

from app.config import Settings
from app.errors import InvalidInput, NotReady, Unauthorized
from app.runner import Runner

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <SENTIMENT_API_KEY>`.")
# Milliseconds as a plain positive integer (1 .. 999999999): the schema's pattern and the fast lane's check are this one.
TIMEOUT_MS_PATTERN = r"^[1-9][0-9]{0,8}$"
_TIMEOUT_MS = re.compile(TIMEOUT_MS_PATTERN)


async def get_runner(request: Request) -> Runner:
    return request.app.state.service.runner


def require_ready(request: Request) -> None:
    """Raise NotReady with the service's reason unless it should get traffic (the health and OIP probes)."""
    ok, reason = request.app.state.service.ready()
    if not ok:
        raise NotReady(reason)


@dataclass(frozen=True, slots=True)
class Inference:
    """What an inference route needs, resolved once per request: the runner, the settings, the caller's deadline."""

    runner: Runner
    settings: Settings
    timeout: float | None  # seconds; None = no limit


async def inference(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_request_timeout_ms: Annotated[
        str | None,
        Header(
            description="Give up (504) if not answered within this many milliseconds (1 to 999999999); at most the server's default.",
        ),
        # The schema's pattern is the one `deadline` checks (with a message naming the header); never null: a header is absent or a string.
        WithJsonSchema({"type": "string", "pattern": TIMEOUT_MS_PATTERN}),
    ] = None,
) -> Inference:
    """The API-key check and the deadline in one dependency.

    One node instead of a graph of small ones: FastAPI's dependency solving
    cost 0.2-0.4 ms per request with the former 8 nodes (an in-process probe
    with the model stubbed out: 1.33-1.51 -> 1.17-1.23 ms per /predict), which
    the event loop spends on every request. The bearer scheme and the header
    stay declared here, so OpenAPI still documents both.
    """
    settings: Settings = request.app.state.settings
    check_api_key(settings, credentials)
    return Inference(request.app.state.service.runner, settings, deadline(settings, x_request_timeout_ms))


def check_api_key(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Unauthorized unless the configured key is presented as a Bearer token (compared in constant time)."""
    if settings.api_key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing `Authorization: Bearer <key>` header")
    if not hmac.compare_digest(credentials.credentials.encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized("invalid API key")


def deadline(settings: Settings, x_request_timeout_ms: str | None) -> float | None:
    """Seconds this request may take: the client's deadline, capped by the server default (None = no limit)."""
    default = settings.request_timeout_ms or None
    if x_request_timeout_ms is None:
        return default / 1000 if default else None
    if not _TIMEOUT_MS.fullmatch(x_request_timeout_ms):
        raise InvalidInput(f"X-Request-Timeout-Ms must be a whole number of milliseconds from 1 to 999999999, got {x_request_timeout_ms!r}")
    wanted = int(x_request_timeout_ms)
    return min(wanted, default) / 1000 if default else wanted / 1000
