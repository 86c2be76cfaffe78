"""The CUDA path (run by bench/gpu.sh on a GPU machine; skipped, saying why, everywhere else)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from contract import artifact as artifact_io
from contract.device import has_native_bf16
from contract.predictor import Predictor, pad_batch
from training.export import BF16_TOLERANCE

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


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)),
    reason="needs a CUDA device with native bf16",
)
def test_shipped_model_bf16_on_cuda_is_near_fp32_and_ignores_batch_mates_on_both_routes() -> None:
    fp32, bf16 = artifact_io.load(SHIPPED, "cuda"), artifact_io.load(SHIPPED, "cuda", "auto")
    assert (bf16.precision, bf16.module.precision) == ("bf16", "bf16")  # auto picks bf16 on a GPU with native bf16
    assert bf16.module.bf16_weights[0].dtype == torch.bfloat16 and bf16.module.bf16_weights[0].is_cuda
    ids = _ids(48, fp32.manifest.vocab_size)
    reference = Predictor(fp32.module, device="cuda").predict_batch(ids)
    for limit in (0.0, float("inf")):  # packed, dense
        bf16.module.dense_max_padding = limit
        predictor = Predictor(bf16.module, device="cuda")
        got = predictor.predict_batch(ids)
        assert 0 < max(abs(a - b) for a, b in zip(got, reference, strict=True)) < 2e-2  # rounded, so not identical, but close
        alone = [predictor.predict_batch([row])[0] for row in ids[:16]]
        assert max(abs(a - b) for a, b in zip(alone, got[:16], strict=True)) <= BF16_TOLERANCE  # batch-mates and padding


def test_explain_runs_on_cuda() -> None:
    cuda = artifact_io.load(SHIPPED, "cuda")
    x, lengths = pad_batch(_ids(4, cuda.manifest.vocab_size))
    with torch.enable_grad():
        probs, attributions = cuda.module.explain(x.cuda(), lengths.cuda())
    assert probs.shape == (4,) and attributions.shape == x.shape and attributions.is_cuda
    assert float(attributions.abs().sum()) > 0


@pytest.mark.anyio
@pytest.mark.parametrize("precision", ["fp32", "auto"])
async def test_service_answers_on_cuda(make_settings, precision: str) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from app.main import create_app

    app = create_app(make_settings(model_path=SHIPPED, device="cuda", precision=precision))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/predict", json={"texts": ["A wonderful film.", "Dull and awful."]})
        model = (await client.get("/model")).json()
    assert response.status_code == 200 and model["device"].startswith("cuda")
    expected = "bf16" if precision == "auto" and has_native_bf16(torch.device("cuda")) else "fp32"
    assert model["precision"] == expected
    assert [p["label"] for p in response.json()["predictions"]] == ["positive", "negative"]
