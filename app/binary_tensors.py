"""Triton's binary tensor data extension: tensor bytes codecs and the HTTP body framing.

Binary tensors skip JSON's per-element cost. Over HTTP the body is a JSON
header of `Inference-Header-Content-Length` bytes, then each tensor's raw bytes
in input order (sizes in `parameters.binary_data_size`); gRPC's
`raw_input_contents` / `raw_output_contents` carry the same raw layout. BYTES
elements are each a 4-byte little-endian length, then that many bytes; numeric
tensors are little-endian, row-major.

Framing errors (a length past the end, bytes left over) are MalformedBody (400);
text that is not UTF-8 is InvalidInput (422). Element counts against `shape`
are checked where the texts are (app/oip_tensors.py), for JSON and binary alike.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from app.errors import InvalidInput, MalformedBody

HEADER = "Inference-Header-Content-Length"
MEDIA_TYPE = "application/octet-stream"
EXTENSION = "binary_tensor_data"

_LENGTH = struct.Struct("<I")
# OIP datatype -> little-endian numpy dtype, for non-BYTES inputs (decoded so the usual "must be BYTES" error names them).
NUMERIC = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def decode_bytes(raw: bytes | memoryview, name: str) -> list[str]:
    """A BYTES tensor's raw contents (length-prefixed elements) -> its elements as text (the model reads UTF-8 only)."""
    raw = memoryview(raw)
    items: list[bytes] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + _LENGTH.size > end:
            raise MalformedBody(f"input {name!r} element {len(items)}: the 4-byte length prefix is cut off ({end - pos} byte(s) left)")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        if length > end - pos:
            raise MalformedBody(
                f"input {name!r} element {len(items)}: length prefix says {length} bytes, past the end of the tensor ({end - pos} left)"
            )
        items.append(bytes(raw[pos : pos + length]))
        pos += length
    return decode_texts(items, name)


def decode_texts(items: Sequence[bytes], name: str) -> list[str]:
    """BYTES elements given one by one (gRPC's bytes_contents) -> text."""
    texts = []
    for i, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input {name!r} element {i} is not valid UTF-8 (byte {exc.start})") from None
    return texts


def decode(datatype: object, raw: bytes | memoryview, name: str) -> list[Any]:
    """A tensor's raw contents -> a flat list of its elements."""
    if datatype == "BYTES":
        return decode_bytes(raw, name)
    dtype = NUMERIC.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:  # BF16 (no numpy dtype) or not a datatype at all
        raise InvalidInput(f"input {name!r}: binary data of datatype {datatype!r} is not supported; this model takes BYTES")
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise MalformedBody(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} elements ({itemsize} bytes each)")
    return np.frombuffer(raw, dtype=dtype).tolist()


def encode_fp32(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def split_body(body: bytes, header_length: str) -> dict[str, Any]:
    """A binary-extension HTTP body -> the JSON request, with each binary input's elements put in its `data`."""
    try:
        length = int(header_length)
    except ValueError:
        raise MalformedBody(f"{HEADER} must be a byte count, got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise MalformedBody(f"{HEADER} is {length} but the body has {len(body)} bytes")
    try:
        request = orjson.loads(body[:length])
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the JSON header (the first {length} bytes) is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise MalformedBody("the JSON header must be an object")
    view, pos = memoryview(body), length
    inputs = request.get("inputs")
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        size = _binary_size(tensor, f"inputs.{i}")
        if size is None:
            continue
        name = tensor.get("name")
        if "data" in tensor:
            raise MalformedBody(f"input {name!r} has both `data` and `binary_data_size`")
        if size > len(body) - pos:
            raise MalformedBody(f"input {name!r}: binary_data_size {size} runs past the end of the body ({len(body) - pos} bytes left)")
        tensor["data"] = decode(tensor.get("datatype"), view[pos : pos + size], str(name))
        pos += size
    if pos != len(body):
        raise MalformedBody(f"{len(body) - pos} bytes after the JSON header and binary inputs are not claimed by any binary_data_size")
    return request


def _binary_size(tensor: object, where: str) -> int | None:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("parameters"), dict):
        return None
    size = tensor["parameters"].get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise MalformedBody(f"{where}.parameters.binary_data_size must be a byte count, got {size!r}")
    return size


def join_body(header: dict[str, Any], tensors: list[bytes]) -> tuple[bytes, int]:
    """The binary-extension response body (JSON header, then each tensor's bytes) and the header's length."""
    head = orjson.dumps(header)
    return head + b"".join(tensors), len(head)
