"""Word2vec pre-training on train + unlabelled reviews, to initialise the embedding table."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import torch

from contract.vocab import PAD_ID, Vocab

log = logging.getLogger(__name__)


def stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector with hash(word + seed); Python's str hash differs per process, so a
    run could not be repeated. CRC32 is the same in every process."""
    return zlib.crc32(text.encode())


def word2vec_matrix(
    corpus: Sequence[list[str]], vocab: Vocab, dim: int, epochs: int, skipgram: bool, seed: int, workers: int
) -> torch.Tensor:
    """-> FloatTensor[V, dim]: word2vec vectors for vocabulary tokens, small noise for the rest, zeros for PAD.

    Reproducible only with workers=1: with more, gensim's threads see the corpus in a scheduling-dependent order.
    """
    from gensim.models import Word2Vec  # heavy and train-only: imported on use

    w2v = Word2Vec(
        sentences=corpus,
        vector_size=dim,
        window=5,
        min_count=2,
        sg=int(skipgram),
        negative=5,
        epochs=epochs,
        seed=seed,
        workers=workers,
        hashfxn=stable_hash,
        max_vocab_size=None,
    )
    g = torch.Generator().manual_seed(seed)
    scale = float(torch.from_numpy(w2v.wv.vectors).std())
    matrix = torch.randn(len(vocab), dim, generator=g) * scale  # [V, dim]
    found = 0
    for i, token in enumerate(vocab.tokens):
        if token in w2v.wv.key_to_index:
            matrix[i] = torch.from_numpy(w2v.wv[token].copy())
            found += 1
    matrix[PAD_ID] = 0.0
    log.info("word2vec: %d of %d vocabulary tokens initialised", found, len(vocab))
    return matrix
