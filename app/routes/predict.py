"""POST /predict: classify one or many texts, optionally with token attributions.

Two doors, one answer. `FastLane`, an ASGI layer just inside the request
envelope (app/main.py wires it with the app's service), answers every
/predict request with a JSON body itself: it skips routing, dependency solving
and response-model validation, which cost more event-loop time per request
than the model's own share on 2 cores. It validates with the route's pydantic
model (in Rust, from the raw bytes), admits the request with the service and
answers errors through the same functions as the route. The FastAPI route
documents the endpoint (OpenAPI) and answers what the lane leaves to it before
validating anything: a body sent as another content type, or one that is not
JSON at all (FastAPI names the JSON error). Both call `Service.predict` and
build the answer with the same `render`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.dependencies import Context, service_of
from app.errors import ServiceError, documented, service_error_response, validation_error_response
from app.metrics import Metrics
from app.middleware import answered_by, replay
from app.request_context import RequestContext
from app.schemas import PREDICT_EXAMPLES, ErrorResponse, PredictRequest, PredictResponse, bearer_token, timeout_header
from app.service import TEXTS, Prediction, Result, Service, TextsField

PATH = "/predict"
router = APIRouter(tags=["predict"])

ERRORS = documented(
    ErrorResponse,
    {
        400: "Malformed JSON or invalid UTF-8.",
        401: "Missing or wrong API key (only when one is configured).",
        413: "Body over the size limit.",
        422: "Invalid input, named in the message.",
        503: "Queue full or shutting down; retry after `Retry-After` seconds.",
        504: "Not served within the deadline.",
    },
)
TEXT = TextsField("text", lambda _: "text")


def _out(prediction: Prediction) -> dict[str, Any]:
    """One prediction as PredictionOut's JSON (the response model documents the same shape)."""
    explanation = None
    if prediction.explanation is not None:
        tokens = [{"token": a.token, "start": a.start, "end": a.end, "attribution": a.attribution} for a in prediction.explanation]
        explanation = {"method": "gradient_x_input", "tokens": tokens}
    return {**prediction.as_dict(), "explanation": explanation}


def render(result: Result) -> Response:
    """The 200 answer, serialized once by orjson (no response-model round trip)."""
    body = {"model": result.model.name, "model_version": result.model.version, "predictions": [_out(p) for p in result.predictions]}
    return Response(orjson.dumps(body), media_type="application/json")


async def _predict(service: Service, body: PredictRequest, context: RequestContext, scope: Scope) -> Response:
    field = TEXT if body.text is not None else TEXTS
    result = await service.predict(body.items, context, explain=body.explain, field=field)
    answered_by(scope, result.model.version)  # telemetry hook: the access line names the model that answered
    return render(result)


@router.post(PATH, response_model=PredictResponse, responses=ERRORS)
async def predict(body: Annotated[PredictRequest, Body(openapi_examples=PREDICT_EXAMPLES)], context: Context, request: Request) -> Response:
    """Sentiment of each text, in input order. Concurrent requests share forward passes."""
    return await _predict(service_of(request), body, context, request.scope)


_JSON = "application/json"
# A body that is not a JSON object at all: FastAPI reports these its own way (before the key check), so the route answers.
_NOT_AN_OBJECT = frozenset({"json_invalid", "model_type"})


class FastLane:
    """POST /predict answered without FastAPI's routing (see the module docstring); everything else passes through."""

    def __init__(self, app: ASGIApp, *, service: Service, metrics: Metrics) -> None:
        self.app = app
        self.service = service
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:  # the envelope read the body already and hands it over in one message
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        # The metrics label, as a routed request would have, also when the answer raises (the router sets its own if
        # the lane declines).
        scope["route"] = _FastRoute(PATH)
        response = await self.answer(scope, body)
        if response is None:
            await self.app(scope, replay(body, receive), send)
            return
        await response(scope, receive, send)

    async def answer(self, scope: Scope, body: bytes) -> Response | None:
        """The answer to a /predict request with a JSON body, or None to leave the request to the route."""
        content_type, timeout, authorization = "", None, None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"x-request-timeout-ms":
                timeout = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        if not content_type.startswith(_JSON):
            return None
        request, invalid = None, None
        try:
            request = PredictRequest.model_validate_json(body)
        except ValidationError as exc:
            if any(e["type"] in _NOT_AN_OBJECT for e in exc.errors()):
                return None
            invalid = exc
        try:
            # The key and the deadline before the body's content, as the route's dependency does.
            context = self.service.admit(
                api_key=bearer_token(authorization), timeout_s=timeout_header(timeout), request_id=scope["state"]["request_id"]
            )
            if invalid is not None:
                return validation_error_response(PATH, _route_errors(body, invalid), content_type)
            assert request is not None
            return await _predict(self.service, request, context, scope)
        except ServiceError as exc:
            return service_error_response(PATH, exc, self.metrics)


def _route_errors(body: bytes, invalid: ValidationError) -> list[Any]:
    """The errors of an invalid body worded as the route words them (FastAPI validates parsed JSON, in Python mode:
    "a valid list" where JSON mode says "a valid array"); only on this error path is the body validated again."""
    try:
        PredictRequest.model_validate(json.loads(body))
    except ValidationError as exc:
        invalid = exc
    return [{**e, "loc": ("body", *e["loc"])} for e in invalid.errors()]


class _FastRoute:
    """What a fast-laned request has for `scope["route"]`: its path template (here the path itself)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path
