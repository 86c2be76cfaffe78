"""Vocabulary round trip, head+tail truncation and padding."""

from __future__ import annotations

import pytest
import torch

from contract.predictor import pad_batch
from contract.vocab import PAD, PAD_ID, UNK, UNK_ID, Vocab, head_tail


def test_build_orders_by_frequency_then_token_and_respects_min_freq() -> None:
    vocab = Vocab.build([["b", "a", "a", "c"], ["b", "a", "d"]], max_size=10, min_freq=2)
    assert vocab.tokens == (PAD, UNK, "a", "b")


def test_max_size_caps_the_table() -> None:
    vocab = Vocab.build([[str(i)] * 3 for i in range(50)], max_size=12, min_freq=1)
    assert len(vocab) == 12


def test_text_round_trip_and_sha() -> None:
    vocab = Vocab.build([["hello", "world", "hello", "ünï", "world"]], max_size=10, min_freq=1)
    again = Vocab.from_text(vocab.to_text())
    assert again == vocab
    assert again.sha256() == vocab.sha256()
    assert Vocab.from_text(Vocab([PAD, UNK, "x"]).to_text()).sha256() != vocab.sha256()


def test_rejects_bad_tables() -> None:
    with pytest.raises(ValueError):
        Vocab(["a", "b"])
    with pytest.raises(ValueError):
        Vocab([PAD, UNK, "a", "a"])


def test_encode_unknown_and_empty() -> None:
    vocab = Vocab([PAD, UNK, "good"])
    enc = vocab.encode(["good", "zzz"], max_length=10, head_length=3)
    assert enc.ids == [2, UNK_ID]
    assert enc.n_unknown == 1 and not enc.truncated
    empty = vocab.encode([], max_length=10, head_length=3)
    assert empty.ids == [UNK_ID] and empty.n_tokens == 0  # never an empty sequence for the LSTM


def test_head_tail_truncation_keeps_start_and_end() -> None:
    assert head_tail(10, 4, 1) == [0, 7, 8, 9]
    assert head_tail(3, 4, 1) == [0, 1, 2]
    vocab = Vocab([PAD, UNK, *[f"w{i}" for i in range(20)]])
    enc = vocab.encode([f"w{i}" for i in range(20)], max_length=6, head_length=2)
    assert enc.ids == [2, 3, 18, 19, 20, 21]
    assert enc.truncated and enc.n_tokens == 20 and enc.kept == [0, 1, 16, 17, 18, 19]


def test_pad_batch_shapes_and_padding_id() -> None:
    ids, lengths = pad_batch([[5, 6, 7], [8]])
    assert ids.shape == (2, 3)
    assert lengths.tolist() == [3, 1]
    assert ids.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]]
    assert ids.dtype == torch.long
