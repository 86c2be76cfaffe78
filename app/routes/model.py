"""GET /model: which model is serving, where from, and how good it was measured to be."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request

from app.dependencies import service_of
from app.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo)
async def model_info(request: Request) -> ModelInfo:
    runner = service_of(request).model
    manifest = runner.artifact.manifest
    return ModelInfo(
        name=manifest.name,
        version=manifest.version,
        labels=list(manifest.labels),
        file_sha256=runner.artifact.file_sha256,
        weights_sha256=manifest.weights_sha256,
        vocab_sha256=manifest.vocab_sha256,
        vocab_size=manifest.vocab_size,
        max_length=manifest.max_length,
        head_length=manifest.head_length,
        normalizer_version=manifest.normalizer_version,
        device=str(runner.device),
        precision=str(runner.artifact.precision),
        processes=max(1, service_of(request).settings.processes),  # 0: an app outside the cli, alone
        created_at=manifest.created_at,
        git_commit=manifest.git_commit,
        metrics=manifest.metrics,
        holdout=manifest.holdout,
        loaded_at=runner.loaded_at,
        pid=os.getpid(),
    )
