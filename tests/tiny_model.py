"""A tiny but real sentiment model for tests: trained in ~2 s on a synthetic corpus, exported via the contract.

It truly separates positive from negative words, so the service's golden
readiness check, label logic and explanations can be tested for real.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.nn import functional as F

from contract import artifact
from contract.manifest import Manifest
from contract.predictor import pad_batch
from contract.text import NORMALIZER_VERSION, tokenize
from contract.vocab import Vocab
from training.model import SentimentLSTM

POSITIVE = ["good", "great", "wonderful", "excellent", "loved", "moving", "brilliant", "superb", "best", "enjoyed"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "waste", "hated", "mess", "worst", "poor"]
NEUTRAL = ["the", "film", "movie", "a", "was", "it", "and", "plot", "actors", "story", "i", "of", "this", "time", "is", "!"]
MAX_LENGTH = 24
HEAD_LENGTH = 8


def corpus(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(NEUTRAL, k=rng.randint(3, 30)) + rng.choices(POSITIVE if label else NEGATIVE, k=rng.randint(1, 3))
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def build(path: Path, seed: int = 0, name: str = "tiny-test-model", version: str = "0.0.1") -> Path:
    """Train and export a tiny model to `path`; deterministic for a given seed."""
    torch.manual_seed(seed)
    vocab = Vocab.build([POSITIVE + NEGATIVE + NEUTRAL], max_size=100, min_freq=1)
    data = corpus(600, seed)
    ids = [vocab.encode(tokenize(t), MAX_LENGTH, HEAD_LENGTH).ids for t, _ in data]
    labels = torch.tensor([float(y) for _, y in data])
    model = SentimentLSTM(len(vocab), 16, 16, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for step in range(60):
        batch = [(step * 32 + i) % len(data) for i in range(32)]
        x, lengths = pad_batch([ids[i] for i in batch])  # [32, T], [32]
        loss = F.binary_cross_entropy_with_logits(model.logits(x, lengths), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    manifest = Manifest(
        name=name,
        version=version,
        labels=("negative", "positive"),
        vocab_size=len(vocab),
        max_length=MAX_LENGTH,
        head_length=HEAD_LENGTH,
        normalizer_version=NORMALIZER_VERSION,
        metrics={"test": {"accuracy": 1.0}},
        holdout={"sha256": "0" * 64, "listed": 753, "reviews_dropped": 753},
    )
    artifact.save(torch.jit.script(model), vocab, manifest, path)
    return path
