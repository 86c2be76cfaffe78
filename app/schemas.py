"""What HTTP clients send and get: request and response bodies (with the examples /docs shows), for /predict,
health, /model and OIP v2, and the two inference headers (bearer token, deadline) read into plain values.

Static rules (types, exactly one of text/texts, no blank text) live here;
limits that depend on settings are the service's (`Service.predict`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)

from app.errors import InvalidInput
from contract import scored
from contract.scored import NOT_BLANK_PATTERN


def not_blank(text: str) -> str:
    """contract.scored's blank-text rule as a validator (/predict's `Text`, and OIP's tensors through app/oip_tensors.py)."""
    error = scored.blank_error(text)
    if error is not None:
        raise ValueError(error)
    return text


Text = Annotated[StrictStr, AfterValidator(not_blank), Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN})]

REVIEW = "A wonderful, moving film. I loved every minute of it!"


# Milliseconds as a plain positive integer (1 .. 999999999): the header's documented pattern and `timeout_header`'s check.
TIMEOUT_MS_PATTERN = r"^[1-9][0-9]{0,8}$"
_TIMEOUT_MS = re.compile(TIMEOUT_MS_PATTERN)


def timeout_header(value: str | None) -> float | InvalidInput | None:
    """`X-Request-Timeout-Ms` in seconds (None: absent), or the InvalidInput naming the header, for `Service.admit` to raise."""
    if value is None:
        return None
    if not _TIMEOUT_MS.fullmatch(value):
        return InvalidInput(f"X-Request-Timeout-Ms must be a whole number of milliseconds from 1 to 999999999, got {value!r}")
    return int(value) / 1000


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, else None: read as FastAPI's HTTPBearer reads it."""
    scheme, token = get_authorization_scheme_param(authorization)
    return token if scheme.lower() == "bearer" and token else None


# ---------------------------------------------------------------- /predict


def _exactly_one_schema(schema: dict[str, Any]) -> None:
    """The schema says what the validator enforces: exactly one of `text`/`texts`, neither null."""
    for name in ("text", "texts"):
        field = schema["properties"][name]
        field.update(next(branch for branch in field.pop("anyOf") if branch.get("type") != "null"))
        field.pop("default", None)
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [{"text": REVIEW}, {"texts": [REVIEW, "Dull and boring."], "explain": False}]


class PredictRequest(BaseModel):
    """Either one `text` or a list of `texts`; `explain` adds per-token attributions."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_schema)

    text: Text | None = Field(None, description="One text to classify.")
    texts: list[Text] | None = Field(None, min_length=1, description="Several texts, answered in the same order.")
    explain: StrictBool = Field(False, description="Also return gradient x input attributions per token (slower).")

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        given = {"text", "texts"} & self.model_fields_set
        if len(given) != 1:
            raise ValueError("give exactly one of `text` or `texts`")
        if getattr(self, given.pop()) is None:
            raise ValueError("`text` / `texts` must not be null")
        return self

    @property
    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


PREDICT_EXAMPLES: dict[str, Any] = {
    "one text": {"summary": "One text", "value": {"text": REVIEW}},
    "batch": {"summary": "Several texts", "value": {"texts": [REVIEW, "Dull, boring and awful: a complete waste of time."]}},
    "explain": {"summary": "With token attributions", "value": {"text": "Loved it, wonderful!", "explain": True}},
}


class TokenAttribution(BaseModel):
    token: str = Field(description="The normalized token the model saw.")
    start: int = Field(description="Start character offset in the original text.")
    end: int = Field(description="End character offset (exclusive): text[start:end] is the token as sent.")
    attribution: float = Field(description="Gradient x input on the logit; > 0 pushes towards positive.")


class Explanation(BaseModel):
    method: Literal["gradient_x_input"] = "gradient_x_input"
    tokens: list[TokenAttribution]


# contract.scored's record, its fields in order, plus the explanation only the service gives.
PredictionOut = create_model(
    "PredictionOut",
    __doc__="One text's prediction: contract.scored's record, and token attributions when asked.",
    **{f.name: (f.python_type, Field(description=f.description)) for f in scored.FIELDS},
    explanation=(Explanation | None, None),
)


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "imdb-bilstm",
                    "model_version": "1.0.0",
                    "predictions": [
                        {"label": "positive", "score": 0.97, "p_positive": 0.97, "n_tokens": 12, "truncated": False, "explanation": None}
                    ],
                }
            ]
        }
    )

    model: str
    model_version: str
    predictions: list[PredictionOut]


# ---------------------------------------------------------------- errors, health, model


class ErrorDetail(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. `invalid_input`, `overloaded`.")
    message: str = Field(description="What was wrong, for humans.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"type": "invalid_input", "message": "texts.0: text must not be empty or whitespace only"}}]
        }
    )

    error: ErrorDetail


class HealthStatus(BaseModel):
    status: Literal["alive", "ready"]


class ModelInfo(BaseModel):
    name: str
    version: str
    labels: list[str]
    file_sha256: str = Field(description="sha256 of the model file as loaded.")
    weights_sha256: str = Field(description="sha256 of the weights, as recorded in the manifest and verified at load.")
    vocab_sha256: str
    vocab_size: int
    max_length: int = Field(description="Tokens the model reads per text (head + tail).")
    head_length: int
    normalizer_version: str
    device: str
    precision: str = Field(description="The route serving predictions: fp32 (exact) or bf16 (SENTIMENT_PRECISION); explanations run fp32.")
    processes: int = Field(description="Serving processes sharing the port, each with this model (SENTIMENT_PROCESSES).")
    created_at: str
    git_commit: str
    metrics: dict[str, Any]
    holdout: dict[str, Any] = Field(
        default_factory=dict,
        description="The robustness holdout left out of training (sha256 of the list, reviews listed and dropped); empty if it was not.",
    )
    loaded_at: str = Field(description="When this process loaded the model (ISO 8601, UTC): changes with each reload.")
    pid: int = Field(description="The serving process that answered, one of `processes` (its id, as in /metrics' pid label).")


class ReloadResponse(BaseModel):
    """The model now serving, after `POST /admin/reload`."""

    name: str
    version: str
    file_sha256: str
    loaded_at: str


# ---------------------------------------------------------------- Open Inference Protocol v2


class OipError(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


# The protocol's tensor datatypes (this model takes BYTES; app/oip_tensors.py says so for the others).
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"
]


# The served model's one input and one output (app/oip_tensors.py). The models below validate the protocol in
# general (so app/oip_tensors.py can name what is wrong with a request for another model); their schema says
# what this server accepts: that input, BYTES, non-blank texts, that output. What JSON Schema cannot say: the
# product of `shape` must equal the number of elements (422 otherwise).
def _integral(value: object) -> object:
    """JSON Schema's `integer` includes 2.0; a strict int alone would refuse it (and take neither "2" nor true)."""
    return int(value) if type(value) is float and value.is_integer() else value


Dim = Annotated[StrictInt, BeforeValidator(_integral), Field(ge=0, json_schema_extra={"minimum": 1})]
INPUT_NAME = "text"
OUTPUT_NAME = "p_positive"
_TEXT = {"type": "string", "pattern": NOT_BLANK_PATTERN}


class InferInput(BaseModel):
    name: StrictStr = Field(min_length=1, json_schema_extra={"enum": [INPUT_NAME]})
    shape: list[Dim] = Field(description="Dimensions; their product is the number of elements.")
    datatype: Datatype = Field(json_schema_extra={"enum": ["BYTES"]})
    data: list[Any] = Field(
        min_length=1,
        json_schema_extra={"items": {"anyOf": [_TEXT, {"type": "array", "minItems": 1, "items": _TEXT}]}},
        description="The texts, flat or nested row-major (with the binary tensor extension: in the body after the JSON instead).",
    )
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: StrictStr = Field(min_length=1, json_schema_extra={"enum": [OUTPUT_NAME]})
    parameters: dict[str, Any] | None = Field(None, description="`binary_data: true` asks for this output as binary tensor data.")


class InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "42", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [REVIEW, "Dull."]}]}]
        }
    )

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(None, description="`binary_data_output: true` asks for every output as binary tensor data.")
    inputs: list[InferInput] = Field(min_length=1, json_schema_extra={"maxItems": 1})
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_name": "imdb-bilstm",
                    "model_version": "1.0.0",
                    "id": "42",
                    "outputs": [{"name": "p_positive", "shape": [2], "datatype": "FP32", "data": [0.97, 0.03]}],
                }
            ]
        }
    )

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
