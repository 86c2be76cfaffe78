"""The native HTTP API end to end in-process (lifespan running): /predict, health, /model, /metrics, docs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from app import runner as runner_module
from app.runner import Runner
from contract import artifact as artifact_io
from contract.artifact import Artifact
from contract.manifest import Manifest
from contract.text import NORMALIZER_VERSION, normalize_token
from contract.vocab import Vocab
from tests.conftest import ServeFactory

pytestmark = pytest.mark.anyio

POSITIVE = "A wonderful, moving film. I loved every minute of it!"
NEGATIVE = "Dull, boring and awful: a complete waste of time."


async def test_predict_one_text(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        response = await client.post("/predict", json={"text": POSITIVE})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["model_version"]) == ("tiny-test-model", "0.0.1")
    (prediction,) = body["predictions"]
    assert prediction["label"] == "positive"
    assert prediction["score"] == prediction["p_positive"] > 0.5
    assert prediction["n_tokens"] == 11 and prediction["truncated"] is False and prediction["explanation"] is None


async def test_predict_many_texts_in_input_order(serve: ServeFactory) -> None:
    texts = [NEGATIVE, POSITIVE, "great great", "awful waste " * 20]
    async with serve() as (client, _):
        response = await client.post("/predict", json={"texts": texts})
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["negative", "positive", "positive", "negative"]
    assert predictions[0]["score"] == pytest.approx(1 - predictions[0]["p_positive"])
    assert [p["truncated"] for p in predictions] == [False, False, False, True]
    assert predictions[3]["n_tokens"] == 40


async def test_explain_returns_spans_into_the_original_text(serve: ServeFactory) -> None:
    text = "Wonderful!  I <b>LOVED</b> it &amp; the  actors\u2019 don\u2019t work"
    async with serve() as (client, _):
        plain = (await client.post("/predict", json={"text": text})).json()["predictions"][0]
        explained = (await client.post("/predict", json={"text": text, "explain": True})).json()["predictions"][0]
    assert explained["p_positive"] == pytest.approx(plain["p_positive"], abs=1e-5)
    explanation = explained["explanation"]
    assert explanation["method"] == "gradient_x_input"
    tokens = explanation["tokens"]
    assert [t["token"] for t in tokens] == ["wonderful", "!", "i", "loved", "it", "the", "actors", "don't", "work"]
    for t in tokens:
        assert normalize_token(text[t["start"] : t["end"]]) == t["token"]
        assert isinstance(t["attribution"], float)


async def test_request_id_is_echoed_or_generated(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        echoed = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
        generated = await client.post("/predict", json={"text": "great"})
        unsafe = await client.get("/health/live", headers={"X-Request-ID": "has space"})
        error = await client.post("/predict", json={"text": ""}, headers={"X-Request-ID": "err-1"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    assert len(generated.headers["X-Request-ID"]) == 32
    assert unsafe.headers["X-Request-ID"] != "has space"
    assert error.headers["X-Request-ID"] == "err-1"


async def test_concurrent_requests_share_forward_passes_with_unchanged_results(
    serve: ServeFactory, tiny_artifact: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    gate = threading.Event()
    armed = threading.Event()
    forward = Runner.forward

    def spy(self: Runner, jobs: list[runner_module.Job]) -> list[runner_module.Output]:
        if armed.is_set():
            batches.append(len(jobs))
            gate.wait(10)
        return forward(self, jobs)

    monkeypatch.setattr(Runner, "forward", spy)
    texts = [POSITIVE, NEGATIVE, "great", "i hated the plot", "the best film", "boring " * 30, "it was a mess", "superb actors"]
    async with serve(max_batch_size=64, model_workers=1, min_batch_size=1) as (client, app):
        armed.set()
        first = asyncio.create_task(client.post("/predict", json={"text": texts[0]}))
        while not batches:
            await asyncio.sleep(0.002)
        rest = [asyncio.create_task(client.post("/predict", json={"text": t})) for t in texts[1:]]
        while app.state.service.runner.batcher.depth < len(texts) - 1:
            await asyncio.sleep(0.002)
        gate.set()
        responses = await asyncio.gather(first, *rest)
    armed.clear()
    assert batches == [1, len(texts) - 1], "8 requests, 2 forward passes"
    got = [r.json()["predictions"][0]["p_positive"] for r in responses]
    alone = Runner(tiny_artifact)
    expected = [alone.forward(alone.encode([t]))[0].p_positive for t in texts]
    assert got == pytest.approx(expected, abs=1e-5)


async def test_a_request_larger_than_a_batch_is_split_and_kept_in_order(serve: ServeFactory, tiny_artifact: Artifact) -> None:
    texts = [f"{'great ' * (i % 5 + 1)}{'awful ' * (i % 3)}" for i in range(23)]
    async with serve(max_batch_size=4) as (client, app):
        response = await client.post("/predict", json={"texts": texts})
        batches = app.state.metrics.registry.get_sample_value("sentiment_batch_size_count", {"kind": "predict"})
    alone = Runner(tiny_artifact)
    expected = [alone.forward(alone.encode([t]))[0].p_positive for t in texts]
    assert [p["p_positive"] for p in response.json()["predictions"]] == pytest.approx(expected, abs=1e-5)
    assert batches >= 6  # 23 texts, at most 4 per forward pass


async def test_health_live_and_ready(serve: ServeFactory) -> None:
    async with serve() as (client, app):
        assert (await client.get("/health/live")).json() == {"status": "alive"}
        assert (await client.get("/health/ready")).json() == {"status": "ready"}
        app.state.service.begin_drain()  # what SIGTERM does before in-flight requests finish
        draining = await client.get("/health/ready")
        still_live = await client.get("/health/live")
    assert draining.status_code == 503
    assert draining.json()["error"]["type"] == "not_ready" and "shutting down" in draining.json()["error"]["message"]
    assert still_live.status_code == 200


class Constant(nn.Module):
    """A 'model' that calls everything positive: it must fail the golden check."""

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.full([ids.size(0)], 0.9)

    @torch.jit.export
    def explain(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full([ids.size(0)], 0.9), torch.zeros(ids.shape)


async def test_a_model_failing_the_golden_check_is_live_but_never_ready(serve: ServeFactory, tmp_path: Path) -> None:
    vocab = Vocab(["<pad>", "<unk>", "film"])
    manifest = Manifest("always-positive", "0", ("negative", "positive"), 3, 16, 4, NORMALIZER_VERSION)
    path = tmp_path / "constant.pt"
    artifact_io.save(torch.jit.script(Constant()), vocab, manifest, path)
    async with serve(load=True, model_path=path) as (client, _):
        ready = await client.get("/health/ready")
        oip_ready = await client.get("/v2/health/ready")
        live = await client.get("/health/live")
        predict = await client.post("/predict", json={"text": NEGATIVE})
    assert ready.status_code == 503 and "golden" in ready.json()["error"]["message"]
    assert oip_ready.status_code == 503 and "golden" in oip_ready.json()["error"]
    assert live.status_code == 200
    assert predict.json()["predictions"][0]["label"] == "positive"  # it still answers; the probe keeps traffic away


async def test_model_info(serve: ServeFactory, tiny_model_path: Path) -> None:
    async with serve(load=True) as (client, _):
        info = (await client.get("/model")).json()
    loaded = artifact_io.load(tiny_model_path)
    assert info["name"] == "tiny-test-model" and info["version"] == "0.0.1"
    assert info["labels"] == ["negative", "positive"]
    assert info["file_sha256"] == artifact_io.file_sha256(tiny_model_path)
    assert info["weights_sha256"] == loaded.manifest.weights_sha256 == artifact_io.weights_sha256(loaded.module)
    assert info["vocab_size"] == len(loaded.vocab) and info["max_length"] == loaded.manifest.max_length
    assert info["device"] == "cpu" and info["normalizer_version"] == NORMALIZER_VERSION
    assert info["metrics"] == {"test": {"accuracy": 1.0}}
    assert info["holdout"] == loaded.manifest.holdout == {"sha256": "0" * 64, "listed": 753, "reviews_dropped": 753}


async def test_metrics_expose_requests_batches_queue_and_text_statistics(serve: ServeFactory) -> None:
    async with serve(model_workers=1, min_batch_size=1) as (client, _):  # one worker, batching from 2 texts: one batch
        await client.post("/predict", json={"texts": ["great " * 40, "zzz film"]})
        await client.post("/predict", json={"text": "great", "explain": True})
        await client.post("/predict", json={"text": ""})
        await client.get("/v2/models/nope")
        response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'sentiment_http_requests_total{method="POST",route="/predict",status="200"} 2.0',
        'sentiment_http_requests_total{method="POST",route="/predict",status="422"} 1.0',
        'sentiment_http_requests_total{method="GET",route="/v2/models/{name}",status="404"} 1.0',
        'sentiment_batch_size_count{kind="predict"} 1.0',
        'sentiment_batch_size_count{kind="explain"} 1.0',
        'sentiment_batch_tokens_sum{kind="predict"} 48.0',  # 2 texts x 24 tokens (the tiny model's max_length)
        "sentiment_queue_depth 0.0",
        "sentiment_texts_total 3.0",
        "sentiment_texts_truncated_total 1.0",
        "sentiment_unknown_tokens_total 1.0",
        'sentiment_model_info{device="cpu",name="tiny-test-model",version="0.0.1"} 1.0',
    ):
        assert line in text, line
    for family in (
        "sentiment_http_request_duration_seconds_bucket",
        "sentiment_queue_wait_seconds_bucket",
        "sentiment_forward_seconds_bucket",
    ):
        assert family in text, family
    assert "sentiment_text_oov_fraction_bucket" in text and "process_resident_memory_bytes" in text


async def test_openapi_docs_have_examples(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        docs = await client.get("/docs")
        spec = (await client.get("/openapi.json")).json()
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert {"one text", "batch", "explain"} <= set(body["examples"])
    assert spec["components"]["schemas"]["PredictResponse"]["examples"]
    assert {"/v2/models/{name}/infer", "/health/ready", "/model", "/metrics"} <= set(spec["paths"])


async def test_the_demo_page_is_served(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        response = await client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")


async def test_cors_is_off_by_default_and_on_when_configured(serve: ServeFactory) -> None:
    origin = {"Origin": "https://example.org"}
    async with serve() as (client, _):
        off = await client.post("/predict", json={"text": "great"}, headers=origin)
    async with serve(cors_origins="https://example.org") as (client, _):
        on = await client.post("/predict", json={"text": "great"}, headers=origin)
        preflight = await client.options(
            "/predict", headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        )
    assert "access-control-allow-origin" not in off.headers
    assert on.headers["access-control-allow-origin"] == "https://example.org"
    assert preflight.status_code == 200 and "X-Request-ID" in on.headers.get("access-control-expose-headers", "")
