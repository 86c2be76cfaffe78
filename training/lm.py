"""Language-model pre-training of the classifier's BiLSTM (Dai & Le 2015; ULMFiT, Howard & Ruder 2018).

A forward and a backward LSTM language model share one embedding table and
are trained on train + unlabelled reviews (the robustness holdout is already
out of both). Their weights then initialise the classifier: the embedding,
the forward direction from the forward LM, the reverse direction from the
backward LM, which reads each text reversed exactly as the classifier's
reverse direction does.

A full softmax over 30k words would cost ~20x the LSTM itself, so each LM
predicts through `nn.AdaptiveLogSoftmaxWithLoss`: frequent words in a small
head, rare ones in cheaper, narrower tail clusters.

Pre-training is the slow part, so its weights are cached under a key of
everything they depend on (data, vocabulary, sizes, LM settings, seed):
re-running fine-tuning with the same key skips it; a stale cache is said
out loud and replaced.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from contract.vocab import PAD_ID, Vocab
from training import cache
from training.config import TrainConfig
from training.model import SentimentLSTM

log = logging.getLogger(__name__)

CUTOFFS = (1_000, 6_000)  # adaptive-softmax clusters: the 1k most frequent words cover ~75 % of review tokens


class BiLM(nn.Module):
    """Two LSTM language models over one embedding: forward predicts token t+1, backward token t-1."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.forward_lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        cutoffs = [c for c in CUTOFFS if c < vocab_size - 1] or [vocab_size // 2]  # tiny test vocabularies: one tail cluster
        self.forward_out = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab_size, cutoffs, div_value=4.0)
        self.backward_out = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab_size, cutoffs, div_value=4.0)

    def losses(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """window: LongTensor[B, T+1] of a token stream -> (forward, backward) mean negative log-likelihoods."""
        directions = ((window, self.forward_lstm, self.forward_out), (window.flip(1), self.backward_lstm, self.backward_out))
        out = []
        for ids, lstm, head in directions:
            h = lstm(self.dropout(self.embedding(ids[:, :-1])))[0]  # [B, T, H]
            out.append(head(self.dropout(h).reshape(-1, h.size(2)), ids[:, 1:].reshape(-1)).loss)
        return out[0], out[1]


def stream(corpus: Sequence[list[str]], vocab: Vocab) -> torch.Tensor:
    """-> LongTensor[N]: every text's whole id sequence, texts joined end to end (no truncation)."""
    return torch.tensor([i for tokens in corpus for i in vocab.encode(tokens, len(tokens), len(tokens)).ids], dtype=torch.long)


def cache_key(config: TrainConfig, vocab: Vocab, data_sha256: str, holdout_sha256: str) -> str:
    """Key of everything the LM weights depend on; a cache with another key is stale."""
    return cache.key(
        {
            "data": data_sha256,
            "holdout": holdout_sha256,
            "vocab": cache.vocab_digest(vocab),
            "sizes": [config.embed_dim, config.hidden],
            "lm": [config.lm_tokens, config.lm_bptt, config.lm_batch, config.lm_lr, config.lm_dropout],
            "word2vec": [config.word2vec, config.w2v_epochs, config.w2v_skipgram],  # the LM starts from that embedding
            "limit": config.limit,
            "seed": config.seed,
        }
    )


def pretrain(lm: BiLM, ids: torch.Tensor, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Train both LMs on random windows of the stream for `config.lm_tokens` tokens per direction; -> figures.

    Windows are stateless (no hidden state carried between them) because the
    classifier also starts every text from a zero state.
    """
    rng = random.Random(config.seed)
    window = config.lm_bptt + 1
    starts = list(range(0, len(ids) - window, config.lm_bptt))
    steps = max(3, math.ceil(config.lm_tokens / (config.lm_batch * config.lm_bptt)))
    optimizer = torch.optim.Adam(lm.parameters(), lr=config.lm_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lm_lr, total_steps=steps, pct_start=min(0.5, max(0.1, 2.5 / steps))
    )  # >= 2 warm-up steps
    lm.to(device).train()
    started, order, recent = time.perf_counter(), [], []
    bar = tqdm(range(steps), desc="LM pre-training", unit="step", leave=False)
    for _ in bar:
        if len(order) < config.lm_batch:
            order = rng.sample(starts, len(starts))  # one more pass over the stream, in a new order
        batch = torch.stack([ids[s : s + window] for s in order[-config.lm_batch :]]).to(device)  # [B, T+1]
        del order[-config.lm_batch :]
        forward, backward = lm.losses(batch)
        loss = (forward + backward) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 0.25)  # AWD-LSTM's clip: LM gradients spike on rare words
        optimizer.step()
        schedule.step()
        recent = ([*recent, loss.item()])[-100:]
        bar.set_postfix(ppl=f"{math.exp(sum(recent) / len(recent)):.0f}")
    seconds = time.perf_counter() - started
    figures = {
        "steps": steps,
        "tokens_per_direction": steps * config.lm_batch * config.lm_bptt,
        "stream_tokens": len(ids),
        "passes": steps * config.lm_batch * config.lm_bptt / max(1, len(ids)),
        "train_perplexity": math.exp(sum(recent) / len(recent)),
        "seconds": round(seconds, 1),
    }
    log.info("LM pre-training: %s", figures)
    return figures


def pretrained(
    corpus: Sequence[list[str]], vocab: Vocab, embedding: torch.Tensor | None, config: TrainConfig, key: str, device: torch.device
) -> tuple[BiLM, dict[str, float]]:
    """The BiLM for this run: from `config.lm_cache` when its key matches, else pre-trained (and cached)."""
    lm = BiLM(len(vocab), config.embed_dim, config.hidden, config.lm_dropout)
    saved = cache.load(config.lm_cache, key, "LM pre-training")
    if saved is not None:
        lm.load_state_dict(saved["state"])
        return lm, {**saved["figures"], "from_cache": True}
    if embedding is not None:
        lm.embedding.weight.data.copy_(embedding)  # word2vec gives the LM a head start
    figures = pretrain(lm, stream(corpus, vocab), config, device)
    cache.save(config.lm_cache, key, {"state": lm.cpu().state_dict(), "figures": figures}, "LM pre-training")
    return lm.cpu(), {**figures, "from_cache": False}


def initialise(model: SentimentLSTM, lm: BiLM) -> None:
    """Copy the LM weights into the classifier: embedding, forward direction, reverse direction."""
    with torch.no_grad():
        model.embedding.weight.copy_(lm.embedding.weight)
        for suffix, source in (("", lm.forward_lstm), ("_reverse", lm.backward_lstm)):
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(model.lstm, name + suffix).copy_(getattr(source, name))
