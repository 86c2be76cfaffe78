"""Liveness and readiness probes: ready only with a model that passed its golden check and while not draining."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.dependencies import require_ready
from app.schemas import ErrorResponse, HealthStatus

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthStatus)
async def live() -> HealthStatus:
    """The process answers; restart it only when this fails."""
    return HealthStatus(status="alive")


@router.get("/ready", response_model=HealthStatus, responses={503: {"model": ErrorResponse, "description": "Not ready, with the reason."}})
async def ready(request: Request) -> HealthStatus:
    """Send traffic here only when this is 200."""
    require_ready(request)
    return HealthStatus(status="ready")
