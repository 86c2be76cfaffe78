"""Open Inference Protocol v2: metadata, health, infer round trip, errors as {"error": "..."}."""

from __future__ import annotations

import pytest

from tests.conftest import ServeFactory

pytestmark = pytest.mark.anyio

MODEL = "/v2/models/tiny-test-model"
TEXTS = ["A wonderful, moving film. I loved every minute of it!", "Dull, boring and awful: a complete waste of time.", "great"]


def infer_body(data: list[object], shape: list[int] | None = None, **extra: object) -> dict[str, object]:
    return {"inputs": [{"name": "text", "shape": shape or [len(data)], "datatype": "BYTES", "data": data}], **extra}


async def test_server_metadata_and_health(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        server = (await client.get("/v2")).json()
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        model_ready = await client.get(f"{MODEL}/ready")
        version_ready = await client.get(f"{MODEL}/versions/0.0.1/ready")
    assert server["name"] == "sentiment-service" and isinstance(server["version"], str) and server["extensions"] == ["binary_tensor_data"]
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert model_ready.json() == {"name": "tiny-test-model", "ready": True}
    assert version_ready.status_code == 200


async def test_model_metadata(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        metadata = (await client.get(MODEL)).json()
        by_version = (await client.get(f"{MODEL}/versions/0.0.1")).json()
    assert metadata == {
        "name": "tiny-test-model",
        "versions": ["0.0.1"],
        "platform": "pytorch_torchscript",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "p_positive", "datatype": "FP32", "shape": [-1]}],
    }
    assert by_version == metadata


async def test_infer_round_trip_matches_predict(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        response = await client.post(f"{MODEL}/infer", json=infer_body(TEXTS, id="req-7"))
        versioned = await client.post(f"{MODEL}/versions/0.0.1/infer", json=infer_body(TEXTS))
        nested = await client.post(f"{MODEL}/infer", json=infer_body([[t] for t in TEXTS], shape=[3, 1]))
        predict = (await client.post("/predict", json={"texts": TEXTS})).json()
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("tiny-test-model", "0.0.1", "req-7")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("p_positive", "FP32", [3])
    assert output["data"] == pytest.approx([p["p_positive"] for p in predict["predictions"]], abs=1e-6)
    assert output["data"][0] > 0.5 > output["data"][1]
    assert "id" not in versioned.json()
    assert versioned.json()["outputs"] == body["outputs"]
    assert nested.json()["outputs"][0]["data"] == pytest.approx(output["data"], abs=1e-6)


async def test_infer_with_requested_output(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        ok = await client.post(f"{MODEL}/infer", json=infer_body(TEXTS, outputs=[{"name": "p_positive"}]))
        unknown = await client.post(f"{MODEL}/infer", json=infer_body(TEXTS, outputs=[{"name": "logits"}]))
    assert ok.status_code == 200
    assert unknown.status_code == 422 and "logits" in unknown.json()["error"]


async def test_unknown_model_or_version_is_404_with_an_oip_error(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        responses = [
            await client.get("/v2/models/other"),
            await client.get("/v2/models/other/ready"),
            await client.get(f"{MODEL}/versions/9.9"),
            await client.post("/v2/models/other/infer", json=infer_body(TEXTS)),
            await client.post(f"{MODEL}/versions/9.9/infer", json=infer_body(TEXTS)),
        ]
    for response in responses:
        assert response.status_code == 404
        assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    assert "other" in responses[0].json()["error"] and "9.9" in responses[2].json()["error"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"inputs": [{"name": "words", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, "named 'text'"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "BYTES"),
        (infer_body(["a", "b"], shape=[3]), "shape [3] but 2"),
        (infer_body([1, 2]), "must be a string"),
        (infer_body(["ok", "  "]), "element 1: text must not be empty"),
        (infer_body([]), "inputs.0.data: List should have at least 1 item"),
        ({"inputs": []}, "inputs"),
        ({"inputs": "text"}, "inputs"),
        ({}, "inputs"),
    ],
)
async def test_invalid_infer_requests_name_the_problem(serve: ServeFactory, body: dict[str, object], expected: str) -> None:
    async with serve() as (client, _):
        response = await client.post(f"{MODEL}/infer", json=body)
    assert response.status_code == 422
    assert set(response.json()) == {"error"} and expected in response.json()["error"]


async def test_malformed_json_is_400_with_an_oip_error(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        response = await client.post(f"{MODEL}/infer", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


async def test_infer_needs_the_api_key_when_one_is_set(serve: ServeFactory) -> None:
    async with serve(api_key="s3cret") as (client, _):
        denied = await client.post(f"{MODEL}/infer", json=infer_body(TEXTS))
        allowed = await client.post(f"{MODEL}/infer", json=infer_body(TEXTS), headers={"Authorization": "Bearer s3cret"})
        metadata = await client.get(MODEL)
    assert denied.status_code == 401 and set(denied.json()) == {"error"}
    assert allowed.status_code == 200
    assert metadata.status_code == 200


async def test_infer_applies_the_request_limits(serve: ServeFactory) -> None:
    async with serve(max_items_per_request=2, max_text_chars=10) as (client, _):
        too_many = await client.post(f"{MODEL}/infer", json=infer_body(["a", "b", "c"]))
        too_long = await client.post(f"{MODEL}/infer", json=infer_body(["short", "x" * 11]))
    assert too_many.status_code == 422 and "3 items, at most 2" in too_many.json()["error"]
    assert too_long.status_code == 422 and "element 1: 11 characters" in too_long.json()["error"]
