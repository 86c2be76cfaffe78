"""Triton's binary tensor data extension over HTTP: round trips, and every malformed body a clear 400/422, never a 500."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from app import binary_tensors
from app.errors import InvalidInput, MalformedBody
from tests.conftest import ServeFactory

pytestmark = pytest.mark.anyio

URL = "/v2/models/tiny-test-model/infer"
TEXTS = ["A wonderful, moving film. I loved every minute of it!", "Dull, boring and awful: a complete waste of time.", "ok ☃"]


def packed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_body(raw: bytes, *, shape: list[int] | None = None, size: int | None = None, **extra: object) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": shape or [len(TEXTS)],
                "parameters": {"binary_data_size": len(raw) if size is None else size},
            }
        ],
        **extra,
    }
    head = orjson.dumps(header)
    return head + raw, {binary_tensors.HEADER: str(len(head))}


def test_decode_bytes_reads_length_prefixed_utf8() -> None:
    assert binary_tensors.decode_bytes(packed(b"ab", b"", "é".encode()), "t") == ["ab", "", "é"]
    with pytest.raises(MalformedBody, match="element 1: length prefix says 9 bytes"):
        binary_tensors.decode_bytes(packed(b"ab") + struct.pack("<I", 9) + b"xy", "t")
    with pytest.raises(MalformedBody, match="length prefix is cut off"):
        binary_tensors.decode_bytes(packed(b"ab") + b"\x01\x00", "t")
    with pytest.raises(InvalidInput, match="element 0 is not valid UTF-8"):
        binary_tensors.decode_bytes(packed(b"\xff\xfe"), "t")


def test_decode_numeric_and_encode_fp32() -> None:
    assert binary_tensors.decode("INT32", np.array([1, -2], "<i4").tobytes(), "t") == [1, -2]
    with pytest.raises(MalformedBody, match="whole number of FP32"):
        binary_tensors.decode("FP32", b"\x00" * 6, "t")
    assert np.frombuffer(binary_tensors.encode_fp32([0.25, 0.5]), "<f4").tolist() == [0.25, 0.5]


async def test_binary_in_binary_out_equals_predict(serve: ServeFactory) -> None:
    body, headers = binary_body(packed(*(t.encode() for t in TEXTS)), id="b1", parameters={"binary_data_output": True})
    async with serve() as (client, _):
        response = await client.post(URL, content=body, headers=headers)
        json_out = await client.post(URL, content=body, headers={**headers, "content-type": "application/octet-stream"}, params={})
        predict = (await client.post("/predict", json={"texts": TEXTS})).json()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers[binary_tensors.HEADER])
    header = orjson.loads(response.content[:length])
    assert header["id"] == "b1" and header["outputs"][0]["parameters"] == {"binary_data_size": 4 * len(TEXTS)}
    values = np.frombuffer(response.content[length:], "<f4").tolist()
    assert values == pytest.approx([p["p_positive"] for p in predict["predictions"]], abs=1e-6)
    assert json_out.status_code == 200


async def test_json_without_content_type_is_accepted_on_oip_only(serve: ServeFactory) -> None:
    oip = orjson.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}]})
    async with serve() as (client, _):
        accepted = await client.post(URL, content=oip)
        per_output = await client.post(
            URL, content=orjson.dumps({**orjson.loads(oip), "outputs": [{"name": "p_positive", "parameters": {"binary_data": True}}]})
        )
        predict = await client.post("/predict", content=b'{"text": "great"}')
    assert accepted.status_code == 200 and accepted.json()["outputs"][0]["data"][0] > 0
    assert per_output.status_code == 200 and binary_tensors.HEADER.lower() in per_output.headers
    assert predict.status_code == 422 and "Content-Type: application/json" in predict.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "expected"),
    [
        (b'{"inputs": []}', {binary_tensors.HEADER: "x"}, 400, "must be a byte count"),
        (b'{"inputs": []}', {binary_tensors.HEADER: "99"}, 400, "is 99 but the body has 14 bytes"),
        (b'{"inputs": [', {binary_tensors.HEADER: "12"}, 400, "JSON header (the first 12 bytes) is not valid JSON"),
        (b"[1]", {binary_tensors.HEADER: "3"}, 400, "must be an object"),
        (*binary_body(packed(b"a", b"b"), size=40), 400, "binary_data_size 40 runs past the end"),
        (*binary_body(packed(b"a", b"b"), size=-1), 400, "binary_data_size must be a byte count"),
        (*binary_body(packed(b"a") + struct.pack("<I", 50) + b"b"), 400, "length prefix says 50 bytes"),
        (*binary_body(packed(b"a", b"b") + b"\x00"), 400, "length prefix is cut off"),
        (*binary_body(packed(b"a", b"b"), size=5), 400, "bytes after the JSON header and binary inputs"),
        (*binary_body(packed(b"good", b"\xc3\x28", b"x")), 422, "element 1 is not valid UTF-8"),
        (*binary_body(packed(b"a", b"b")), 422, "has shape [3] but 2 data elements"),
        (*binary_body(packed(b"a", b" ", b"c")), 422, "element 1: text must not be empty"),
    ],
    ids=["length-not-int", "length-past-end", "header-not-json", "header-not-object", "size-past-end", "size-negative",
         "prefix-past-end", "prefix-cut", "bytes-left-over", "not-utf8", "wrong-count", "blank"],
)  # fmt: skip
async def test_malformed_binary_bodies_name_the_problem(
    serve: ServeFactory, body: bytes, headers: dict[str, str], status: int, expected: str
) -> None:
    async with serve() as (client, _):
        response = await client.post(URL, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and expected in response.json()["error"]


async def test_binary_bodies_keep_the_size_limit(serve: ServeFactory) -> None:
    body, headers = binary_body(packed(b"x" * 400, b"y", b"z"))
    async with serve(max_body_bytes=300) as (client, _):
        response = await client.post(URL, content=body, headers=headers)
    assert response.status_code == 413
