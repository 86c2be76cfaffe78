"""POST /predict: classify one or many texts, optionally with token attributions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from app.dependencies import Inference, inference
from app.errors import documented
from app.runner import Prediction
from app.schemas import (
    PREDICT_EXAMPLES,
    ErrorResponse,
    Explanation,
    PredictionOut,
    PredictRequest,
    PredictResponse,
    TokenAttribution,
    check_texts,
)

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


def _out(prediction: Prediction) -> PredictionOut:
    explanation = None
    if prediction.explanation is not None:
        explanation = Explanation(
            tokens=[TokenAttribution(token=a.token, start=a.start, end=a.end, attribution=a.attribution) for a in prediction.explanation]
        )
    return PredictionOut(
        label=prediction.label,
        score=prediction.score,
        p_positive=prediction.p_positive,
        n_tokens=prediction.n_tokens,
        truncated=prediction.truncated,
        explanation=explanation,
    )


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    body: Annotated[PredictRequest, Body(openapi_examples=PREDICT_EXAMPLES)], call: Annotated[Inference, Depends(inference)]
) -> PredictResponse:
    """Sentiment of each text, in input order. Concurrent requests share forward passes."""
    texts = body.items
    if body.text is not None:
        field, item = "text", lambda _: "text"
    else:
        field, item = "texts", lambda i: f"texts.{i}"
    check_texts(texts, field=field, item=item, max_items=call.settings.max_items_per_request, max_chars=call.settings.max_text_chars)
    predictions = await call.runner.predict(texts, explain=body.explain, timeout=call.timeout)
    manifest = call.runner.artifact.manifest
    return PredictResponse(model=manifest.name, model_version=manifest.version, predictions=[_out(p) for p in predictions])
