"""What FastAPI routes get injected: the service, an admitted RequestContext for inference, readiness.

All `async def` although none awaits: FastAPI runs a plain `def` dependency in
its thread pool, a hop per dependency per request (py-spy: 12 % of the event
loop's time went to those hops); these never block, so they run inline.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import WithJsonSchema

from app.errors import NotReady
from app.request_context import RequestContext
from app.schemas import TIMEOUT_MS_PATTERN, timeout_header
from app.service import Service

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <SENTIMENT_API_KEY>`.")


def service_of(request: Request) -> Service:
    """The app's service (what a route asks about the model and the lifecycle)."""
    return request.app.state.service  # type: ignore[no-any-return]


async def get_service(request: Request) -> Service:
    return service_of(request)


ServiceDep = Annotated[Service, Depends(get_service)]


def require_ready(request: Request) -> None:
    """Raise NotReady with the service's reason unless it should get traffic (the health and OIP probes)."""
    ok, reason = service_of(request).ready()
    if not ok:
        raise NotReady(reason)


async def request_context(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_request_timeout_ms: Annotated[
        str | None,
        Header(
            description="Give up (504) if not answered within this many milliseconds (1 to 999999999); at most the server's default.",
        ),
        # The schema's pattern is the one `timeout_header` checks (with a message naming the header); never null: a header is absent or a string.
        WithJsonSchema({"type": "string", "pattern": TIMEOUT_MS_PATTERN}),
    ] = None,
) -> RequestContext:
    """The request admitted by the service (API key, deadline), before FastAPI validates the body: one dependency.

    One node instead of a graph of small ones: FastAPI's dependency solving
    cost 0.2-0.4 ms per request with the former 8 nodes (an in-process probe
    with the model stubbed out: 1.33-1.51 -> 1.17-1.23 ms per /predict), which
    the event loop spends on every request. The bearer scheme and the header
    stay declared here, so OpenAPI still documents both.
    """
    return service_of(request).admit(
        api_key=credentials.credentials if credentials is not None else None,
        timeout_s=timeout_header(x_request_timeout_ms),
        request_id=request.scope.get("state", {}).get("request_id", "-"),
    )


Context = Annotated[RequestContext, Depends(request_context)]
