"""Open Inference Protocol v2 (KServe / Triton REST): server and model metadata, health, infer.

The model's tensors and input checks are app/oip_tensors.py's (shared with
gRPC); the key, deadline and limits are the service's, as for every protocol. Infer takes JSON with or without a Content-Type (tritonclient sends
none), or Triton's binary tensor data extension (app/binary_tensors.py): a body
with an `Inference-Header-Content-Length` header is decoded into the same JSON
request before FastAPI validates it (`InferRoute`), so both encodings meet one
schema and one set of checks. Outputs are binary when the request asks
(`parameters.binary_data_output`, or an output's `binary_data`). Errors are
`{"error": "..."}` as the protocol asks (errors.error_response picks that
format under /v2).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from app import binary_tensors, oip_tensors
from app.dependencies import Context, ServiceDep, require_ready, service_of
from app.errors import documented
from app.middleware import answered_by
from app.oip_tensors import INPUT, OUTPUT, PLATFORM, SERVER_NAME
from app.request_context import RequestContext
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
)
from app.service import Service
from app.version import package_version


class InferRoute(APIRoute):
    """A route that first turns a binary-extension body into its JSON request (other requests pass unchanged)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            header_length = request.headers.get(binary_tensors.HEADER)
            if header_length is not None and request.method == "POST":
                body = binary_tensors.split_body(await request.body(), header_length)
                request = _json_request(request, orjson.dumps(body))
            return await handler(request)

        return route


def _json_request(request: Request, body: bytes) -> Request:
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({**request.scope, "headers": headers}, receive)


# strict_content_type=False: a body without a Content-Type is read as JSON (tritonclient sends none); /predict stays strict.
router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], route_class=InferRoute, strict_content_type=False)

ERRORS = documented(
    OipError,
    {
        400: "Malformed JSON, invalid UTF-8 or malformed binary tensor data.",
        401: "Missing or wrong API key (only when one is configured).",
        413: "Body over the size limit.",
        404: "Unknown model or version.",
        422: "Invalid request.",
        503: "Not ready, overloaded or shutting down.",
        504: "Deadline exceeded.",
    },
)


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=package_version(), extensions=[binary_tensors.EXTENSION])


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses=ERRORS)
async def server_ready(request: Request) -> ServerReady:
    require_ready(request)
    return ServerReady(ready=True)


def _metadata(service: Service, name: str, version: str | None) -> ModelMetadata:
    manifest = oip_tensors.check_model(service.model.artifact.manifest, name, version)
    return ModelMetadata(name=manifest.name, versions=[manifest.version], platform=PLATFORM, inputs=[INPUT], outputs=[OUTPUT])


def _ready(request: Request, service: Service, name: str, version: str | None) -> ModelReady:
    oip_tensors.check_model(service.model.artifact.manifest, name, version)
    require_ready(request)
    return ModelReady(name=name, ready=True)


async def _infer(request: Request, body: InferRequest, context: RequestContext, name: str, version: str | None) -> Response | InferResponse:
    service = service_of(request)
    oip_tensors.check_model(service.model.artifact.manifest, name, version)
    texts = oip_tensors.texts(body.inputs)
    oip_tensors.check_outputs([o.name for o in body.outputs or []])
    result = await service.predict(texts, context, field=oip_tensors.FIELD)
    values = [p.p_positive for p in result.predictions]
    model = result.model  # the model that answered (a reload may have happened since the check above)
    answered_by(request.scope, model.version)  # telemetry hook: the access line names it
    if not _binary_output(body):
        output = InferOutput(name=OUTPUT.name, shape=[len(texts)], datatype=OUTPUT.datatype, data=values)
        return InferResponse(model_name=model.name, model_version=model.version, id=body.id, outputs=[output])
    tensor = binary_tensors.encode_fp32(values)
    header: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if body.id is not None:
        header["id"] = body.id
    header["outputs"] = [
        {"name": OUTPUT.name, "datatype": OUTPUT.datatype, "shape": [len(texts)], "parameters": {"binary_data_size": len(tensor)}}
    ]
    content, length = binary_tensors.join_body(header, [tensor])
    return Response(content, media_type=binary_tensors.MEDIA_TYPE, headers={binary_tensors.HEADER: str(length)})


def _binary_output(body: InferRequest) -> bool:
    """Triton's rule: an output's `binary_data` parameter, else the request's `binary_data_output`, else JSON."""
    default = (body.parameters or {}).get("binary_data_output") is True
    for output in body.outputs or []:
        choice = (output.parameters or {}).get("binary_data")
        if choice is not None:
            return choice is True
    return default


INFER = {"response_model": InferResponse, "response_model_exclude_none": True, "responses": ERRORS}


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(service: ServiceDep, name: str) -> ModelMetadata:
    return _metadata(service, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_version_metadata(service: ServiceDep, name: str, version: str) -> ModelMetadata:
    return _metadata(service, name, version)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=ERRORS)
async def model_ready(request: Request, service: ServiceDep, name: str) -> ModelReady:
    return _ready(request, service, name, None)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=ERRORS)
async def model_version_ready(request: Request, service: ServiceDep, name: str, version: str) -> ModelReady:
    return _ready(request, service, name, version)


@router.post("/models/{name}/infer", **INFER)  # type: ignore[arg-type]
async def infer(request: Request, body: InferRequest, context: Context, name: str) -> Response | InferResponse:
    """P(positive) for each text of the BYTES input `text`; shares batches with /predict."""
    return await _infer(request, body, context, name, None)


@router.post("/models/{name}/versions/{version}/infer", **INFER)  # type: ignore[arg-type]
async def infer_version(request: Request, body: InferRequest, context: Context, name: str, version: str) -> Response | InferResponse:
    """As `infer`, for an explicit model version."""
    return await _infer(request, body, context, name, version)
