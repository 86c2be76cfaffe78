"""The native HTTP API end to end in-process (lifespan running): /predict, health, /model, /metrics, docs."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from app import runner as runner_module
from app.runner import Runner
from app.service import encode
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
    run_batch = Runner.run_batch

    def spy(self: Runner, jobs: list[runner_module.Job]) -> list[runner_module.Output]:
        if armed.is_set():
            batches.append(len(jobs))
            gate.wait(10)
        return run_batch(self, jobs)

    monkeypatch.setattr(Runner, "run_batch", spy)
    texts = [POSITIVE, NEGATIVE, "great", "i hated the plot", "the best film", "boring " * 30, "it was a mess", "superb actors"]
    async with serve(max_batch_size=64, model_workers=1, min_batch_size=1, max_batch_padding=100) as (client, app):  # mixed lengths
        armed.set()
        first = asyncio.create_task(client.post("/predict", json={"text": texts[0]}))
        while not batches:
            await asyncio.sleep(0.002)
        rest = [asyncio.create_task(client.post("/predict", json={"text": t})) for t in texts[1:]]
        while app.state.service.queue_depth < len(texts) - 1:
            await asyncio.sleep(0.002)
        gate.set()
        responses = await asyncio.gather(first, *rest)
    armed.clear()
    assert batches == [1, len(texts) - 1], "8 requests, 2 forward passes"
    got = [r.json()["predictions"][0]["p_positive"] for r in responses]
    alone = Runner(tiny_artifact)
    expected = [alone.run_batch(encode(alone, [t], False, None))[0].p_positive for t in texts]
    assert got == pytest.approx(expected, abs=1e-5)


async def test_a_request_larger_than_a_batch_is_split_and_kept_in_order(serve: ServeFactory, tiny_artifact: Artifact) -> None:
    texts = [f"{'great ' * (i % 5 + 1)}{'awful ' * (i % 3)}" for i in range(23)]
    async with serve(max_batch_size=4) as (client, app):
        response = await client.post("/predict", json={"texts": texts})
        batches = app.state.metrics.registry.get_sample_value("sentiment_batch_size_count", {"kind": "predict"})
    alone = Runner(tiny_artifact)
    expected = [alone.run_batch(encode(alone, [t], False, None))[0].p_positive for t in texts]
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
    assert info["precision"] == "fp32"  # the test settings pin fp32
    assert info["metrics"] == {"test": {"accuracy": 1.0}}
    assert info["holdout"] == loaded.manifest.holdout == {"sha256": "0" * 64, "listed": 753, "reviews_dropped": 753}


@pytest.mark.parametrize("load", [True, False])  # the file loaded in bf16, or the shared fp32 artifact placed in bf16
async def test_bf16_serves_near_fp32_and_says_so(
    serve: ServeFactory, tiny_artifact: Artifact, load: bool, caplog: pytest.LogCaptureFixture
) -> None:
    texts = ["a wonderful film, loved it", "dull boring waste of time", "the plot was fine"]
    with caplog.at_level("INFO", logger="app"):
        async with serve(load=load, precision="bf16") as (client, _):
            info = (await client.get("/model")).json()
            served = [p["p_positive"] for p in (await client.post("/predict", json={"texts": texts})).json()["predictions"]]
            explained = (await client.post("/predict", json={"text": texts[0], "explain": True})).json()["predictions"][0]
            metrics = (await client.get("/metrics")).text
    assert info["precision"] == "bf16" and "in bf16:" in caplog.text
    exact = Runner(tiny_artifact).predictor.predict(texts)
    assert tiny_artifact.precision == tiny_artifact.module.precision == "fp32"  # the shared artifact was not switched
    assert 0 < max(abs(a - b) for a, b in zip(served, exact, strict=True)) < 2e-2
    assert explained["p_positive"] == pytest.approx(exact[0], abs=1e-6)  # explanations run fp32
    assert 'sentiment_forward_seconds_count{kind="predict",precision="bf16"}' in metrics
    assert 'sentiment_forward_seconds_count{kind="explain",precision="fp32"}' in metrics


async def test_metrics_expose_requests_batches_queue_and_text_statistics(serve: ServeFactory) -> None:
    # One worker, batching from 2 texts, no padding cap: one batch.
    async with serve(model_workers=1, min_batch_size=1, max_batch_padding=100) as (client, _):
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
        'sentiment_batch_padded_tokens_total{kind="predict"} 48.0',
        'sentiment_batch_real_tokens_total{kind="predict"} 26.0',  # 24 + 2: padding waste 48 / 26
        'sentiment_batch_padding_ratio_count{kind="predict"} 1.0',
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


FAST_LANE_BODIES = [
    {"text": POSITIVE},
    {"text": NEGATIVE, "explain": False},
    {"texts": [POSITIVE, "boring " * 40, "zzz"]},
    {"text": "Loved it, wonderful!", "explain": True},
]


async def _answers(serve: ServeFactory, bodies: list[dict], headers: dict[str, str] | None = None) -> list[tuple[int, bytes]]:
    async with serve() as (client, _):
        return [((r := await client.post("/predict", json=b, headers=headers)).status_code, r.content) for b in bodies]


@pytest.fixture
def lane_answers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Apps created after this record, per /predict request reaching the fast lane, whether it answered."""
    from app.routes.predict import FastLane

    answered: list[bool] = []
    original = FastLane.answer

    async def spy(self, scope, body):  # type: ignore[no-untyped-def]
        response = await original(self, scope, body)
        answered.append(response is not None)
        return response

    monkeypatch.setattr(FastLane, "answer", spy)
    return answered


def _decline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps answer every /predict request through the FastAPI route from now on."""
    from app.routes.predict import FastLane

    async def declined(self, scope, body):  # type: ignore[no-untyped-def]
        return None

    monkeypatch.setattr(FastLane, "answer", declined)


async def test_fast_lane_answers_plain_requests_exactly_as_the_route_does(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch, lane_answers: list[bool]
) -> None:
    fast = await _answers(serve, FAST_LANE_BODIES, {"X-Request-Timeout-Ms": "5000"})
    assert lane_answers == [True] * len(FAST_LANE_BODIES)
    _decline(monkeypatch)
    slow = await _answers(serve, FAST_LANE_BODIES, {"X-Request-Timeout-Ms": "5000"})
    assert [status for status, _ in fast] == [200] * len(FAST_LANE_BODIES)
    assert fast == slow  # byte for byte: one renderer
    assert json.loads(fast[3][1])["predictions"][0]["explanation"]["method"] == "gradient_x_input"


KEY = {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "lane"),
    [
        (b'{"text": "   "}', KEY, 422, True),  # blank: the route's validation message
        (b'{"text": "good", "extra": 1}', KEY, 422, True),
        (b'{"texts": ["good", " ", 5]}', KEY, 422, True),
        (b'{"texts": []}', KEY, 422, True),
        (b'{"text": "a", "texts": ["b"]}', KEY, 422, True),
        (b"{}", KEY, 422, True),
        (b'{"text": "good", "explain": "yes"}', KEY, 422, True),
        (b'{"texts": ["good", "good", "good"]}', KEY, 422, True),  # over max_items_per_request
        (b'{"text": "' + b"x" * 60 + b'"}', KEY, 422, True),  # over max_text_chars
        (b'{"text": "good"}', {**KEY, "X-Request-Timeout-Ms": "-5"}, 422, True),
        (b'{"text": "good"}', {}, 401, True),  # the key before anything about the body...
        (b'{"text": "   "}', {"Authorization": "Bearer wrong"}, 401, True),
        (b'{"text": "good"}', {"X-Request-Timeout-Ms": "-5"}, 401, True),  # ...or the deadline header
        (b'{"text": "good"', {}, 400, False),  # malformed JSON: FastAPI names the error (before the key, as ever)
        (b"[1]", KEY, 422, False),  # not an object
        (b"null", KEY, 422, False),
        (b'{"text": "good"}', {**KEY, "Content-Type": "text/plain"}, 422, False),
    ],
)
async def test_fast_lane_refuses_exactly_as_the_route_does_and_leaves_it_only_what_is_not_a_json_object(
    serve: ServeFactory,
    monkeypatch: pytest.MonkeyPatch,
    lane_answers: list[bool],
    body: bytes,
    headers: dict[str, str],
    status: int,
    lane: bool,
) -> None:
    settings = {"api_key": "s3cret", "max_items_per_request": 2, "max_text_chars": 50}

    async def answer() -> tuple[int, bytes, str | None]:
        async with serve(**settings) as (client, _):
            r = await client.post("/predict", content=body, headers={"Content-Type": "application/json", **headers})
        return r.status_code, r.content, r.headers.get("WWW-Authenticate")

    fast = await answer()
    assert lane_answers == [lane]
    _decline(monkeypatch)
    assert fast == await answer()  # byte for byte: one error format, the same checks in the same order
    assert fast[0] == status and "error" in json.loads(fast[1])


async def test_fast_lane_maps_a_full_queue_to_503_with_retry_after(serve: ServeFactory, lane_answers: list[bool]) -> None:
    async with serve(max_queue=1, max_items_per_request=1) as (client, app):
        queue = app.state.service._batcher
        queue._closing = True  # not accepting: the service refuses at once, as when draining
        response = await client.post("/predict", json={"text": POSITIVE})
        queue._closing = False
    assert lane_answers == [True]
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["error"]["type"] == "shutting_down"


SHIPPED = Path(__file__).resolve().parents[1] / "models" / "sentiment.pt"
IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb.tar.gz"


@pytest.mark.skipif(not IMDB.exists(), reason=f"IMDb tarball not at {IMDB}")
async def test_imdb_test_reviews_through_the_request_path_keep_the_contract_tokens_ids_and_probabilities(make_settings) -> None:  # type: ignore[no-untyped-def]
    """A bounded sample of IMDb test reviews (HTML, unicode, long texts): what /predict answers is what the contract computes."""
    import httpx

    from app.main import create_app
    from contract import artifact as artifact_io
    from contract.predictor import Predictor
    from contract.text import tokenize, tokenize_with_spans
    from training import data

    reviews = data.load(IMDB, limit=100).test  # 200 reviews, both classes
    texts = [r.text for r in reviews]
    shipped = artifact_io.load(SHIPPED)
    expected = Predictor.from_artifact(shipped).predict(texts)
    app = create_app(make_settings(model_path=SHIPPED, model_workers=2), artifact=shipped)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            plain = await asyncio.gather(*(client.post("/predict", json={"text": t}) for t in texts))
            explained = [await client.post("/predict", json={"text": t, "explain": True}) for t in texts[:40]]
    for text, response, p in zip(texts, plain, expected, strict=True):
        out = response.json()["predictions"][0]
        assert out["n_tokens"] == len(tokenize(text))
        assert out["p_positive"] == pytest.approx(p, abs=1e-5)
    for text, response in zip(texts[:40], explained, strict=True):
        encoded, kept = shipped.encoder.encode_with_spans(text)
        tokens = response.json()["predictions"][0]["explanation"]["tokens"]
        assert [(t["token"], t["start"], t["end"]) for t in tokens] == [(k.text, k.start, k.end) for k in kept]
        assert [shipped.vocab.id(t["token"]) for t in tokens] == encoded.ids
        assert [k.text for k in tokenize_with_spans(text)] == tokenize(text)
