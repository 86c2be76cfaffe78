"""Language-model pre-training: it learns, it initialises the classifier exactly, its cache is keyed, and fine-tuning levers act."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import pytest
import torch

from contract.predictor import pad_batch
from contract.vocab import Vocab
from training import lm
from training.config import TrainConfig
from training.loop import Examples, fit, layer_groups
from training.model import SentimentLSTM

CPU = torch.device("cpu")
WORDS = ["the", "film", "was", "good", "bad", "great", "awful", "plot", "acting", "and", "but", "not", "very", "boring", "fun"]


def corpus(n: int = 60, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[WORDS[(i + j) % len(WORDS)] if rng.random() < 0.9 else rng.choice(WORDS) for j in range(12)] for i in range(n)]


def config(tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        embed_dim=8, hidden=8, lm_tokens=6_000, lm_bptt=10, lm_batch=8, lm_lr=1e-2, lm_dropout=0.0, lm_cache=tmp_path / "lm.pt"
    )
    return dataclasses.replace(base, **changes)


def test_pretraining_learns_the_stream_in_both_directions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    texts, cfg = corpus(), config(tmp_path, lm_tokens=16_000)
    vocab = Vocab.build(texts, 100, 1)
    model = lm.BiLM(len(vocab), cfg.embed_dim, cfg.hidden, 0.0)
    window = lm.stream(texts, vocab)[None, : cfg.lm_bptt + 1]  # [1, T+1]
    with torch.no_grad():
        before = [float(x) for x in model.losses(window)]
    figures = lm.pretrain(model, lm.stream(texts, vocab), cfg, CPU)
    with torch.no_grad():
        after = [float(x) for x in model.eval().losses(window)]
    assert figures["steps"] == 200 and figures["tokens_per_direction"] == 16_000  # 16000 / (8 x 10)
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1]  # the stream is nearly periodic: both LMs learn it


def test_initialised_classifier_runs_the_lms_own_lstms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    texts, cfg = corpus(), config(tmp_path)
    vocab = Vocab.build(texts, 100, 1)
    bilm = lm.BiLM(len(vocab), cfg.embed_dim, cfg.hidden, 0.0)
    model = SentimentLSTM(len(vocab), cfg.embed_dim, cfg.hidden, 0.0).eval()
    lm.initialise(model, bilm)
    ids, lengths = pad_batch([vocab.encode(t, 12, 12).ids for t in texts[:3]])  # [3, 12]
    x = model.embedding(ids)
    with torch.no_grad():
        h = model._packed(x, lengths)  # [3, T, 2H]
        forward = bilm.forward_lstm(bilm.embedding(ids))[0]  # [3, T, H]
        backward = bilm.backward_lstm(bilm.embedding(ids.flip(1)))[0].flip(1)  # all rows full length: reversal is a flip
    assert torch.allclose(h[..., : cfg.hidden], forward, atol=1e-6)
    assert torch.allclose(h[..., cfg.hidden :], backward, atol=1e-6)


def test_cache_is_reused_when_the_key_matches_and_replaced_with_a_warning_when_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    texts, cfg = corpus(), config(tmp_path, lm_tokens=800)
    vocab = Vocab.build(texts, 100, 1)
    key = lm.cache_key(cfg, vocab, "data-sha", "holdout-sha")
    first, figures = lm.pretrained(texts, vocab, None, cfg, key, CPU)
    assert not figures["from_cache"] and cfg.lm_cache.exists()
    again, figures = lm.pretrained(texts, vocab, None, cfg, key, CPU)
    assert figures["from_cache"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    other_vocab = Vocab.build(texts[:10], 100, 1)
    stale = lm.cache_key(cfg, other_vocab, "data-sha", "holdout-sha")
    assert stale != key and lm.cache_key(dataclasses.replace(cfg, lm_bptt=11), vocab, "data-sha", "holdout-sha") != key
    with caplog.at_level(logging.WARNING, logger="training.cache"):
        _, figures = lm.pretrained(texts[:10], other_vocab, None, cfg, stale, CPU)
    assert not figures["from_cache"] and "does not match" in caplog.text
    assert torch.load(cfg.lm_cache, weights_only=True)["key"] == stale  # overwritten for the new run


def test_gradual_unfreezing_trains_only_the_head_in_epoch_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = config(tmp_path, epochs=1, unfreeze=True, lr_decay=2.6, batch_size=4, dropout=0.0)
    model = SentimentLSTM(20, cfg.embed_dim, cfg.hidden, 0.0)
    before = [[p.detach().clone() for p in group] for group in layer_groups(model)]
    ids = [[random.Random(i).randrange(2, 20) for _ in range(6)] for i in range(16)]
    fit(model, Examples(ids, [i % 2 for i in range(16)]), Examples(ids[:4], [0, 1, 0, 1]), cfg, CPU)
    after = layer_groups(model)
    assert all(torch.equal(a, b) for a, b in zip(before[0] + before[1], after[0] + after[1], strict=True))  # embedding, LSTM frozen
    assert not all(torch.equal(a, b) for a, b in zip(before[2], after[2], strict=True))  # the head moved
    assert all(p.requires_grad for group in after for p in group)  # nothing left frozen for export or later training
