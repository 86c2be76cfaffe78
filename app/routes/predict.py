"""POST /predict: classify one or many texts, optionally with token attributions.

Two doors, one answer. The FastAPI route documents the endpoint (OpenAPI)
and handles every request the fast lane declines. The fast lane (`fast_lane`,
called by the request envelope with the body already read) skips routing,
dependency solving and response-model validation, which cost more event-loop
time per request than the model's own share on 2 cores; it validates with the
same pydantic model (in Rust, from the raw bytes) and builds the answer with the
same `render`. Anything unusual (invalid input, an API key to check, a bad
header) goes to the FastAPI route, so error answers have one source.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Scope

from app.dependencies import Inference, deadline, inference
from app.errors import BATCHER_ERRORS, InvalidInput, ServiceError, documented, exception_response
from app.runner import Prediction
from app.schemas import (
    PREDICT_EXAMPLES,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    check_texts,
)
from contract.manifest import Manifest

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


def _out(prediction: Prediction) -> dict[str, Any]:
    """One prediction as PredictionOut's JSON (the response model documents the same shape)."""
    explanation = None
    if prediction.explanation is not None:
        tokens = [{"token": a.token, "start": a.start, "end": a.end, "attribution": a.attribution} for a in prediction.explanation]
        explanation = {"method": "gradient_x_input", "tokens": tokens}
    return {
        "label": prediction.label,
        "score": prediction.score,
        "p_positive": prediction.p_positive,
        "n_tokens": prediction.n_tokens,
        "truncated": prediction.truncated,
        "explanation": explanation,
    }


def render(manifest: Manifest, predictions: list[Prediction]) -> Response:
    """The 200 answer, serialized once by orjson (no response-model round trip)."""
    body = {"model": manifest.name, "model_version": manifest.version, "predictions": [_out(p) for p in predictions]}
    return Response(orjson.dumps(body), media_type="application/json")


def _check(body: PredictRequest, call: Inference) -> tuple[list[str], str, Any]:
    texts = body.items
    if body.text is not None:
        field, item = "text", lambda _: "text"
    else:
        field, item = "texts", lambda i: f"texts.{i}"
    check_texts(texts, field=field, item=item, max_items=call.settings.max_items_per_request, max_chars=call.settings.max_text_chars)
    return texts, field, item


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    body: Annotated[PredictRequest, Body(openapi_examples=PREDICT_EXAMPLES)], call: Annotated[Inference, Depends(inference)]
) -> Response:
    """Sentiment of each text, in input order. Concurrent requests share forward passes."""
    texts, _, _ = _check(body, call)
    predictions = await call.runner.predict(texts, explain=body.explain, timeout=call.timeout)
    return render(call.runner.artifact.manifest, predictions)


_JSON = (b"application/json",)


async def fast_lane(scope: Scope, body: bytes) -> Response | None:
    """The answer to a plain, valid /predict request, or None to let the FastAPI route handle it."""
    state = scope["app"].state
    settings = state.settings
    if settings.api_key is not None:
        return None
    try:
        runner = state.service.runner
    except ServiceError:  # not started: the route says so
        return None
    timeout_header, json_body = None, False
    for name, value in scope["headers"]:
        if name == b"content-type":
            json_body = value.startswith(_JSON)
        elif name == b"x-request-timeout-ms":
            timeout_header = value.decode("latin-1")
    if not json_body:
        return None
    try:
        request = PredictRequest.model_validate_json(body)
        call = Inference(runner, settings, deadline(settings, timeout_header))
        texts, _, _ = _check(request, call)
    except (ValidationError, InvalidInput, ValueError):
        return None  # the route answers with the one error format
    try:
        predictions = await runner.predict(texts, explain=request.explain, timeout=call.timeout)
    except (ServiceError, *BATCHER_ERRORS) as exc:
        return exception_response(scope, exc, state.metrics)
    return render(runner.artifact.manifest, predictions)
