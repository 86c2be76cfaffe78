"""contract.predictor: length-sorted batches, input order, and the same probabilities as the service's /predict."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contract import artifact as artifact_io
from contract.artifact import Artifact
from contract.predictor import Predictor, length_sorted_batches
from contract.scored import label_and_score
from tests import tiny_model
from tests.conftest import ServeFactory

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "sentiment.pt"


def mixed_texts(n: int, seed: int = 1) -> list[str]:
    """Texts of very different lengths (1 to ~3x the tiny model's max_length tokens), some without any token."""
    rng = random.Random(seed)
    words = tiny_model.POSITIVE + tiny_model.NEGATIVE + tiny_model.NEUTRAL + ["unseen", "Wörds", "<br />"]
    return [" ".join(rng.choices(words, k=rng.choice([0, 1, 2, 5, 12, 30, 70]))) or "<br />" for _ in range(n)]


@pytest.mark.parametrize("max_size, max_tokens", [(4, 10_000), (64, 50), (1, 1), (1000, 10_000)])
def test_batches_cover_every_index_once_within_the_budgets(max_size: int, max_tokens: int) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(500)]
    batches = length_sorted_batches(lengths, max_size, max_tokens)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= max_size
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= max_tokens or len(batch) == 1  # a lone text over the budget still runs
    # length-sorted, longest batches first: no batch mixes lengths across another batch's range
    spans = [(min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches]
    assert all(spans[k][0] >= spans[k + 1][1] for k in range(len(spans) - 1))


def test_empty_input() -> None:
    assert length_sorted_batches([], 64, 1000) == []


def test_predict_is_in_input_order_and_independent_of_batching(tiny_artifact: Artifact) -> None:
    texts = mixed_texts(300)
    alone = [Predictor.from_artifact(tiny_artifact).predict_batch([e.ids])[0] for e in Predictor.from_artifact(tiny_artifact).encode(texts)]
    for size, tokens in [(64, 64 * 24), (7, 10_000), (1, 1)]:
        probs = Predictor.from_artifact(tiny_artifact, max_batch_size=size, max_batch_tokens=tokens).predict(texts)
        assert probs == pytest.approx(alone, abs=1e-5)
    assert len({round(p, 4) for p in alone}) > 20  # the texts really differ, so order mistakes would show


def test_submit_on_threads_equals_predict(tiny_artifact: Artifact) -> None:
    predictor = Predictor.from_artifact(tiny_artifact, max_batch_size=8)
    texts = mixed_texts(200, seed=2)
    ids = [e.ids for e in predictor.encode(texts)]
    with ThreadPoolExecutor(2) as pool:
        pending = predictor.submit(ids, pool)
        assert len(pending.futures) == len(pending.batches) > 10
        assert pending.result() == predictor.predict_ids(ids)


def test_label_and_score() -> None:
    assert label_and_score(0.75, ("neg", "pos")) == ("pos", 0.75)
    assert label_and_score(0.25, ("neg", "pos")) == ("neg", 0.75)
    assert label_and_score(0.5, ("neg", "pos")) == ("pos", 0.5)  # the service's tie rule: p >= 0.5 is positive


@pytest.mark.anyio
async def test_probabilities_equal_the_services_predict(serve: ServeFactory, tiny_artifact: Artifact) -> None:
    texts = mixed_texts(120, seed=3)
    async with serve() as (client, _):
        served = []
        for start in range(0, len(texts), 40):
            response = await client.post("/predict", json={"texts": texts[start : start + 40]})
            assert response.status_code == 200
            served += [p["p_positive"] for p in response.json()["predictions"]]
    assert Predictor.from_artifact(tiny_artifact).predict(texts) == pytest.approx(served, abs=1e-5)


@pytest.mark.anyio
@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped model file is not in this checkout")
async def test_shipped_model_equals_the_services_predict(serve: ServeFactory) -> None:
    """The real BiLSTM and real lengths (up to max_length 400, truncated beyond): batching changes nothing."""
    rng = random.Random(4)
    words = ["the", "film", "was", "a", "wonderful", "moving", "story", "but", "plot", "dragged", "acting", "awful", "loved", "it"]
    texts = [" ".join(rng.choices(words, k=rng.choice([1, 8, 40, 150, 420, 900]))) for _ in range(48)]
    async with serve(load=True, model_path=SHIPPED) as (client, _):
        response = await client.post("/predict", json={"texts": texts})
    served = [p["p_positive"] for p in response.json()["predictions"]]
    predictor = Predictor.from_artifact(artifact_io.load(SHIPPED))
    assert predictor.predict(texts) == pytest.approx(served, abs=1e-5)
