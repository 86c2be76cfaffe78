"""Faithfulness of the explanations (gradient x input): do the words they point at really drive the prediction?

Deletion test: for each review, remove the k words with the largest positive
attribution and measure how much P(positive) falls; compare with removing k
words chosen at random (seeded, several draws per review). Averaged over many
reviews, the attributed words must matter clearly more than random ones. The
mirror image is checked too: removing the k most negative words must raise
P(positive) more than random removal does.

Two models: the tiny test model on its synthetic corpus (always runs, seconds)
and the shipped model on 100 real IMDb test reviews. Two paths: the artifact's
own `explain` (token ids dropped from the encoded input) and the HTTP API end
to end (the response's character spans used to cut the words out of the text).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from contract import artifact
from contract.predictor import pad_batch
from tests import tiny_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "models" / "sentiment.pt"
IMDB = ROOT.parent / "shared" / "data" / "aclImdb.tar.gz"

SEED = 1234
BATCH = 32  # texts per forward pass (artifact) or per request (API)


@dataclass(frozen=True)
class Case:
    model: Path
    texts: list[str]
    k: int  # words removed per review
    draws: int  # random deletions per review: the baseline is an average, not one lucky or unlucky draw
    margin: float  # least mean gap in P(positive) change between attributed and random deletions


@dataclass(frozen=True)
class Drops:
    """Per review: P(positive) before minus after deleting k words (> 0: the prediction moved towards negative)."""

    top: list[float]  # the k most positively attributed words removed
    bottom: list[float]  # the k most negatively attributed words removed
    random: list[float]  # k random words removed, mean over the draws

    def summary(self) -> str:
        m = statistics.fmean
        return f"mean drop: top-k {m(self.top):+.4f}, random-k {m(self.random):+.4f}, bottom-k {m(self.bottom):+.4f} (n={len(self.top)})"


# ---------------------------------------------------------------- cases


@pytest.fixture(scope="session")
def tiny_case(tiny_model_path: Path) -> Case:
    # A corpus seed the model was not trained on (it trains on corpus(600, seed=0)).
    texts = [text for text, _ in tiny_model.corpus(120, seed=2024)]
    return Case(tiny_model_path, texts, k=2, draws=8, margin=0.05)


@pytest.fixture(scope="session")
def imdb_test_reviews() -> list[str]:
    if not IMDB.is_file():
        pytest.skip(f"IMDb data not found at {IMDB}")
    from training import data  # tests may use training code; the app never does

    reviews = data.load(IMDB, limit=50).test  # 50 positive + 50 negative test reviews (~10 s to read the tarball)
    return [r.text for r in reviews]


@pytest.fixture(scope="session")
def shipped_case(imdb_test_reviews: list[str]) -> Case:
    # Small margin: a confident, calibrated model moves little in probability; the significance and per-review checks carry it.
    return Case(SHIPPED_MODEL, imdb_test_reviews, k=5, draws=4, margin=0.01)


CASES = [
    pytest.param("tiny_case", id="tiny-synthetic"),
    pytest.param("shipped_case", id="shipped-imdb"),
]


# ---------------------------------------------------------------- the measurement, whatever the path


def plan(attributions: Sequence[Sequence[float]], k: int, draws: int) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """Which reviews to use and, per review, the deletions to try: top-k, bottom-k, then `draws` random k-sets.

    Returns (used review indices, [(review index, unit positions to delete)]), units being tokens or spans.
    """
    rng = random.Random(SEED)
    used: list[int] = []
    jobs: list[tuple[int, list[int]]] = []
    for i, attribution in enumerate(attributions):
        n = len(attribution)
        if n <= k:  # deleting every word says nothing
            continue
        used.append(i)
        order = sorted(range(n), key=lambda j: attribution[j])
        jobs.append((i, order[-k:]))
        jobs.append((i, order[:k]))
        jobs.extend((i, rng.sample(range(n), k)) for _ in range(draws))
    return used, jobs


def drops(before: Sequence[float], used: list[int], after: Sequence[float], draws: int) -> Drops:
    per_review = 2 + draws
    top, bottom, rand = [], [], []
    for r, i in enumerate(used):
        chunk = after[r * per_review : (r + 1) * per_review]
        top.append(before[i] - chunk[0])
        bottom.append(before[i] - chunk[1])
        rand.append(before[i] - statistics.fmean(chunk[2:]))
    return Drops(top, bottom, rand)


def check(result: Drops, margin: float) -> None:
    """Attributed deletions beat random ones by `margin` on average, significantly (paired, > 3 standard errors), and on most reviews."""
    n = len(result.top)
    assert n >= 50, f"only {n} usable reviews; the averages would be noise"
    for name, gaps in (
        ("top-k (most positive) words", [t - r for t, r in zip(result.top, result.random, strict=True)]),
        ("bottom-k (most negative) words", [r - b for b, r in zip(result.bottom, result.random, strict=True)]),
    ):
        gap, stderr = statistics.fmean(gaps), statistics.stdev(gaps) / n**0.5
        assert gap > margin, f"removing the {name} moves P(positive) only {gap:+.4f} more than random removal: {result.summary()}"
        assert gap > 3 * stderr, f"removing the {name}: gap {gap:+.4f} is within noise (3 x stderr = {3 * stderr:.4f}): {result.summary()}"
        wins = statistics.fmean(g > 0 for g in gaps)
        assert wins >= 0.6, f"removing the {name} beat random removal on only {wins:.0%} of reviews: {result.summary()}"


# ---------------------------------------------------------------- artifact level: ids in, ids deleted


def artifact_drops(case: Case) -> Drops:
    model = artifact.load(case.model)
    module, encoder = model.module, model.encoder
    ids = [encoder.encode(t).ids for t in case.texts]
    before: list[float] = []
    attributions: list[list[float]] = []
    for b in range(0, len(ids), BATCH):
        x, lengths = pad_batch(ids[b : b + BATCH])
        with torch.enable_grad():
            p, attribution = module.explain(x, lengths)
        before += p.tolist()
        attributions += [attribution[r, : int(lengths[r])].tolist() for r in range(len(p))]
    used, jobs = plan(attributions, case.k, case.draws)
    rows = [[t for j, t in enumerate(ids[i]) if j not in set(drop)] for i, drop in jobs]
    after: list[float] = []
    for b in range(0, len(rows), BATCH):
        x, lengths = pad_batch(rows[b : b + BATCH])
        with torch.inference_mode():
            after += module(x, lengths).tolist()
    return drops(before, used, after, case.draws)


@pytest.mark.parametrize("case_name", CASES)
def test_artifact_explanations_are_faithful(case_name: str, request: pytest.FixtureRequest) -> None:
    case: Case = request.getfixturevalue(case_name)
    check(artifact_drops(case), case.margin)


# ---------------------------------------------------------------- HTTP level: text in, spans cut out of the text


def cut(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` with each [start, end) replaced by a space (so neighbours never fuse into a new word)."""
    out, at = [], 0
    for start, end in sorted(spans):
        out += [text[at:start], " "]
        at = end
    return "".join([*out, text[at:]])


@pytest.mark.anyio
@pytest.mark.parametrize("case_name", CASES)
async def test_api_explanations_are_faithful(case_name: str, request: pytest.FixtureRequest, serve) -> None:  # type: ignore[no-untyped-def]
    case: Case = request.getfixturevalue(case_name)

    async with serve(load=True, model_path=case.model) as (client, _):

        async def predict(texts: list[str], explain: bool) -> list[dict]:
            out: list[dict] = []
            for b in range(0, len(texts), BATCH):
                response = await client.post("/predict", json={"texts": texts[b : b + BATCH], "explain": explain})
                assert response.status_code == 200, response.text
                out += response.json()["predictions"]
            return out

        explained = await predict(case.texts, explain=True)
        spans = [[(t["start"], t["end"]) for t in p["explanation"]["tokens"]] for p in explained]
        used, jobs = plan([[t["attribution"] for t in p["explanation"]["tokens"]] for p in explained], case.k, case.draws)
        texts = [cut(case.texts[i], [spans[i][j] for j in drop]) for i, drop in jobs]
        after = [p["p_positive"] for p in await predict(texts, explain=False)]
    check(drops([p["p_positive"] for p in explained], used, after, case.draws), case.margin)
