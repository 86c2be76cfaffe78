"""The CUDA path (run by bench/gpu.sh on a GPU machine; skipped, saying why, everywhere else)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from contract import artifact as artifact_io
from contract.predictor import Predictor
from contract.vocab import pad_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu.sh runs these on one)")
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "sentiment.pt"


def _ids(n: int, vocab_size: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(2, vocab_size) for _ in range(rng.randint(1, 400))] for _ in range(n)]


def test_shipped_model_on_cuda_matches_cpu_on_both_routes() -> None:
    cpu, cuda = artifact_io.load(SHIPPED), artifact_io.load(SHIPPED, "cuda")
    ids = _ids(48, cpu.manifest.vocab_size)
    reference = Predictor(cpu.module).predict_batch(ids)
    for limit in (0.0, float("inf")):  # packed, dense
        cuda.module.dense_max_padding = limit
        got = Predictor(cuda.module, device="cuda").predict_batch(ids)
        assert max(abs(a - b) for a, b in zip(got, reference, strict=True)) < 1e-4


def test_explain_runs_on_cuda() -> None:
    cuda = artifact_io.load(SHIPPED, "cuda")
    x, lengths = pad_batch(_ids(4, cuda.manifest.vocab_size))
    with torch.enable_grad():
        probs, attributions = cuda.module.explain(x.cuda(), lengths.cuda())
    assert probs.shape == (4,) and attributions.shape == x.shape and attributions.is_cuda
    assert float(attributions.abs().sum()) > 0


@pytest.mark.anyio
async def test_service_answers_on_cuda(make_settings) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from app.main import create_app

    app = create_app(make_settings(model_path=SHIPPED, device="cuda"))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/predict", json={"texts": ["A wonderful film.", "Dull and awful."]})
        model = (await client.get("/model")).json()
    assert response.status_code == 200 and model["device"].startswith("cuda")
    assert [p["label"] for p in response.json()["predictions"]] == ["positive", "negative"]
