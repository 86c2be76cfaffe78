"""Embedding + bidirectional LSTM + max/mean pooling + linear + sigmoid.

Packed sequences make every output independent of padding and of the other
texts in the batch (the serving batcher mixes strangers' texts). Calibration
is a temperature buffer divided into the logit, so the exported file returns
calibrated probabilities with no extra step at serve time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from contract.vocab import PAD_ID


class SentimentLSTM(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * hidden, 1)  # [max-pool ; mean-pool] of 2 directions
        self.register_buffer("temperature", torch.ones(()))

    def logits_from_embeddings(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: FloatTensor[B, T, E] embedded ids, lengths: LongTensor[B] -> uncalibrated logits FloatTensor[B]."""
        total = x.size(1)
        packed = pack_padded_sequence(self.dropout(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=total)  # [B, T, 2H], zeros past each length
        mask = torch.arange(total, device=x.device)[None, :] < lengths[:, None]  # [B, T]
        mean = h.sum(1) / lengths[:, None].to(h.dtype)  # [B, 2H]; padded steps are 0 so the sum is exact
        peak = h.masked_fill(~mask[:, :, None], float("-inf")).max(1).values  # [B, 2H]
        return self.head(self.dropout(torch.cat([peak, mean], 1))).squeeze(1)  # [B]

    def logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: LongTensor[B, T] (PAD_ID-padded), lengths: LongTensor[B] >= 1 -> logits FloatTensor[B]."""
        return self.logits_from_embeddings(self.embedding(ids), lengths)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """-> calibrated P(positive) FloatTensor[B]: the artifact's public interface."""
        return torch.sigmoid(self.logits(ids, lengths) / self.temperature)

    @torch.jit.export
    def explain(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (P(positive) FloatTensor[B], per-token gradient x input on the logit FloatTensor[B, T]).

        Gradient x input on the embeddings: one forward + one backward for the
        whole batch, so explanations batch like predictions. Positive values
        push towards "positive"; padding positions are 0.
        Call it with grad mode on (not under inference_mode): TorchScript
        cannot switch grad mode itself.
        """
        x = self.embedding(ids).detach().requires_grad_(True)  # [B, T, E]
        logit = self.logits_from_embeddings(x, lengths) / self.temperature  # [B]
        grad = torch.autograd.grad([logit.sum()], [x])[0]
        assert grad is not None
        attribution = (grad * x).sum(2)  # [B, T]
        mask = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]
        return torch.sigmoid(logit.detach()), attribution.detach() * mask
