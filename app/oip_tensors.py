"""What the served model takes and gives under the Open Inference Protocol, for HTTP (app/routes/oip.py) and gRPC alike.

One BYTES input `text` of shape [N] in, one FP32 output `p_positive` of shape
[N] out. The input checks live here once, so a request is judged the same
whichever protocol and encoding (JSON, binary tensors, protobuf) carried it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.errors import InvalidInput, NotFound
from app.schemas import INPUT_NAME, OUTPUT_NAME, TensorMetadata, not_blank
from app.service import TextsField
from contract.manifest import Manifest

INPUT = TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])
OUTPUT = TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1])
PLATFORM = "pytorch_torchscript"
SERVER_NAME = "sentiment-service"
FIELD = TextsField(f"input {INPUT_NAME!r}", lambda i: f"input {INPUT_NAME!r} element {i}")  # names the texts in limit errors


class Tensor(Protocol):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


def check_model(manifest: Manifest, name: str, version: str | None) -> Manifest:
    """`manifest` (the model serving) if `name` (and `version`, when given) names it, else NotFound."""
    if name != manifest.name:
        raise NotFound(f"unknown model {name!r}; this server serves {manifest.name!r}")
    if version is not None and version != manifest.version:
        raise NotFound(f"model {name!r} has no version {version!r}; it serves version {manifest.version!r}")
    return manifest


def flatten(data: list[Any]) -> list[Any]:
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


def check_outputs(names: Sequence[str]) -> None:
    for name in names:
        if name != OUTPUT.name:
            raise InvalidInput(f"unknown output {name!r}; this model has {OUTPUT.name!r}")


def texts(inputs: Sequence[Tensor]) -> list[str]:
    """The texts of the one BYTES input `text`, checked (count against shape, strings, not blank), else InvalidInput.

    The limits (texts per request, characters per text) are the service's
    (`Service.predict`, with `FIELD` naming the texts as here)."""
    if len(inputs) != 1 or inputs[0].name != INPUT.name:
        raise InvalidInput(f"expected exactly one input named {INPUT.name!r}, got {[i.name for i in inputs]}")
    tensor = inputs[0]
    where = FIELD.name
    if tensor.datatype != INPUT.datatype:
        raise InvalidInput(f"{where} must have datatype BYTES, got {tensor.datatype!r}")
    data = flatten(tensor.data)
    size = 1
    for dim in tensor.shape:
        size *= dim
    if any(dim < 0 for dim in tensor.shape) or size != len(data):
        raise InvalidInput(f"{where} has shape {list(tensor.shape)} but {len(data)} data elements")
    if not data:
        raise InvalidInput(f"{where} holds no texts")
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise InvalidInput(f"{FIELD.item(i)} must be a string, got {type(text).__name__}")
        try:
            not_blank(text)
        except ValueError as exc:
            raise InvalidInput(f"{FIELD.item(i)}: {exc}") from None
    return data
