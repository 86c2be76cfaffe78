"""POST /admin/reload: serve the model file at SENTIMENT_MODEL_PATH again, without a restart or a failed request.

Mounted only when SENTIMENT_ADMIN_KEY is set, and it needs that key as a
bearer token (401 without one, 403 with another). The reload itself is the
service's (`Service.reload`, which SIGHUP and SENTIMENT_MODEL_WATCH_S also
start): a file that fails to load, verify or pass the golden check is answered
422 and the model serving before goes on serving. With several serving
processes (app/process_group.py) the one that took the request answers for
itself and, once it serves the new file, has the others reload too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.dependencies import ServiceDep
from app.errors import documented
from app.schemas import ErrorResponse, ReloadResponse

_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminKey", description="`Authorization: Bearer <SENTIMENT_ADMIN_KEY>`.")
router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS = documented(
    ErrorResponse,
    {
        401: "No admin key presented.",
        403: "Wrong admin key.",
        422: "The model file failed to load, verify or pass the golden check; the model loaded before still serves.",
        503: "Not serving (starting or shutting down).",
    },
)


@router.post("/reload", response_model=ReloadResponse, responses=ERRORS)
async def reload(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)], request: Request
) -> ReloadResponse:
    """Load the model file again beside the serving one; it takes over between batches once it passed every check."""
    service.check_admin_key(credentials.credentials if credentials is not None else None)
    runner = await service.reload()
    group = request.app.state.process_group
    if group is not None:
        group.reload_others()
    manifest = runner.artifact.manifest
    return ReloadResponse(name=manifest.name, version=manifest.version, file_sha256=runner.artifact.file_sha256, loaded_at=runner.loaded_at)
