"""What routes get injected: the runner, the settings, the caller's deadline, the API-key check, readiness.

All `async def` although none awaits: FastAPI runs a plain `def` dependency in
its thread pool, a hop per dependency per request (py-spy: 12 % of the event
loop's time went to those hops); these never block, so they run inline.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import InvalidInput, Unauthorized
from app.runner import Runner

_bearer = HTTPBearer(auto_error=False, description="Only when the server sets SENTIMENT_API_KEY.")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_runner(request: Request) -> Runner:
    return request.app.state.runner


def not_ready_reason(request: Request) -> str | None:
    """None when the service should get traffic, else why not (shared by /health/ready and OIP)."""
    runner: Runner | None = getattr(request.app.state, "runner", None)
    if runner is None:
        return "model not loaded"
    if request.app.state.draining or not runner.batcher.accepting:
        return "shutting down: draining accepted requests"
    if not runner.golden_ok:
        return "model failed the built-in golden check (it mislabels known examples)"
    return None


async def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the configured key is presented as a Bearer token (compared in constant time)."""
    if settings.api_key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing `Authorization: Bearer <key>` header")
    if not hmac.compare_digest(credentials.credentials.encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized("invalid API key")


async def request_timeout(
    settings: Annotated[Settings, Depends(get_settings)],
    x_request_timeout_ms: Annotated[
        str | None, Header(description="Give up (504) if not answered within this many milliseconds; at most the server's default.")
    ] = None,
) -> float | None:
    """Seconds this request may take: the client's deadline, capped by the server default (None = no limit)."""
    default = settings.request_timeout_ms or None
    if x_request_timeout_ms is None:
        return default / 1000 if default else None
    try:
        wanted = int(x_request_timeout_ms)
    except ValueError:
        wanted = 0
    if wanted <= 0:
        raise InvalidInput(f"X-Request-Timeout-Ms must be a positive integer, got {x_request_timeout_ms!r}")
    return min(wanted, default) / 1000 if default else wanted / 1000
