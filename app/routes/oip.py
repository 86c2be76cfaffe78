"""Open Inference Protocol v2 (KServe / Triton REST): server and model metadata, health, infer.

The model takes one BYTES tensor `text` of shape [N] and returns one FP32
tensor `p_positive` of shape [N]. Errors are `{"error": "..."}` as the
protocol asks (errors.error_response picks that format under /v2).
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from app.config import Settings
from app.dependencies import Inference, get_runner, inference, require_ready
from app.errors import InvalidInput, NotFound, documented
from app.runner import Runner
from app.schemas import (
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    OipError,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
    check_texts,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

INPUT = TensorMetadata(name="text", datatype="BYTES", shape=[-1])
OUTPUT = TensorMetadata(name="p_positive", datatype="FP32", shape=[-1])
PLATFORM = "pytorch_torchscript"
ERRORS = documented(
    OipError,
    {
        400: "Malformed JSON or invalid UTF-8.",
        401: "Missing or wrong API key.",
        413: "Body over the size limit.",
        404: "Unknown model or version.",
        422: "Invalid request.",
        503: "Not ready, overloaded or shutting down.",
        504: "Deadline exceeded.",
    },
)


def _server_version() -> str:
    try:
        return metadata.version("sentiment-service")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _model(runner: Runner, name: str, version: str | None) -> Runner:
    """The runner if `name` (and `version`, when given) is what it serves, else 404."""
    manifest = runner.artifact.manifest
    if name != manifest.name:
        raise NotFound(f"unknown model {name!r}; this server serves {manifest.name!r}")
    if version is not None and version != manifest.version:
        raise NotFound(f"model {name!r} has no version {version!r}; it serves version {manifest.version!r}")
    return runner


def _flatten(data: list[Any]) -> list[Any]:
    """OIP allows tensor data flat or nested row-major; flatten it."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _texts(request: InferRequest, settings: Settings) -> list[str]:
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT.name:
        names = [i.name for i in request.inputs]
        raise InvalidInput(f"expected exactly one input named {INPUT.name!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != INPUT.datatype:
        raise InvalidInput(f"input {INPUT.name!r} must have datatype BYTES, got {tensor.datatype!r}")
    data = _flatten(tensor.data)
    size = 1
    for dim in tensor.shape:
        size *= dim
    if any(dim < 0 for dim in tensor.shape) or size != len(data):
        raise InvalidInput(f"input {INPUT.name!r} has shape {tensor.shape} but {len(data)} data elements")
    if not data:
        raise InvalidInput(f"input {INPUT.name!r} holds no texts")
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise InvalidInput(f"input {INPUT.name!r} element {i} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInput(f"input {INPUT.name!r} element {i} is empty or whitespace only")
    for output in request.outputs or []:
        if output.name != OUTPUT.name:
            raise InvalidInput(f"unknown output {output.name!r}; this model has {OUTPUT.name!r}")
    check_texts(
        data,
        field=f"input {INPUT.name!r}",
        item=lambda i: f"input {INPUT.name!r} element {i}",
        max_items=settings.max_items_per_request,
        max_chars=settings.max_text_chars,
    )
    return data


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="sentiment-service", version=_server_version(), extensions=[])


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses=ERRORS)
async def server_ready(request: Request) -> ServerReady:
    require_ready(request)
    return ServerReady(ready=True)


def _metadata(runner: Runner, name: str, version: str | None) -> ModelMetadata:
    manifest = _model(runner, name, version).artifact.manifest
    return ModelMetadata(name=manifest.name, versions=[manifest.version], platform=PLATFORM, inputs=[INPUT], outputs=[OUTPUT])


def _ready(request: Request, runner: Runner, name: str, version: str | None) -> ModelReady:
    _model(runner, name, version)
    require_ready(request)
    return ModelReady(name=name, ready=True)


async def _infer(body: InferRequest, call: Inference, name: str, version: str | None) -> InferResponse:
    manifest = _model(call.runner, name, version).artifact.manifest
    texts = _texts(body, call.settings)
    predictions = await call.runner.predict(texts, timeout=call.timeout)
    output = InferOutput(name=OUTPUT.name, shape=[len(texts)], datatype=OUTPUT.datatype, data=[p.p_positive for p in predictions])
    return InferResponse(model_name=manifest.name, model_version=manifest.version, id=body.id, outputs=[output])


RunnerDep = Annotated[Runner, Depends(get_runner)]
InferenceDep = Annotated[Inference, Depends(inference)]
INFER = {"response_model": InferResponse, "response_model_exclude_none": True, "responses": ERRORS}


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(runner: RunnerDep, name: str) -> ModelMetadata:
    return _metadata(runner, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_version_metadata(runner: RunnerDep, name: str, version: str) -> ModelMetadata:
    return _metadata(runner, name, version)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=ERRORS)
async def model_ready(request: Request, runner: RunnerDep, name: str) -> ModelReady:
    return _ready(request, runner, name, None)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=ERRORS)
async def model_version_ready(request: Request, runner: RunnerDep, name: str, version: str) -> ModelReady:
    return _ready(request, runner, name, version)


@router.post("/models/{name}/infer", **INFER)  # type: ignore[arg-type]
async def infer(body: InferRequest, call: InferenceDep, name: str) -> InferResponse:
    """P(positive) for each text of the BYTES input `text`; shares batches with /predict."""
    return await _infer(body, call, name, None)


@router.post("/models/{name}/versions/{version}/infer", **INFER)  # type: ignore[arg-type]
async def infer_version(body: InferRequest, call: InferenceDep, name: str, version: str) -> InferResponse:
    """As `infer`, for an explicit model version."""
    return await _infer(body, call, name, version)
