"""Embedding + bidirectional LSTM + pooling (max + mean by default) + linear + sigmoid.

Every output is independent of padding and of the other texts in the batch
(the serving batcher mixes strangers' texts). Two exact routes compute the
same BiLSTM from the same weights:
- packed (`pack_padded_sequence`): costs only real tokens, but runs PyTorch's
  generic per-step loop;
- dense: the forward direction is a plain LSTM over the right-padded batch,
  the backward one a plain LSTM over each row reversed within its own length,
  gathered back into place; masks keep padding out of the pooling. Dense
  input takes oneDNN's fused LSTM on CPU, ~1.5-2x faster per token, but it
  also computes the padding.
At inference the model takes the dense route when padded tokens are at most
`dense_max_padding` x real tokens (the serving batcher cuts length-homogeneous
batches so it nearly always is), else the packed one; training always packs,
so retraining reproduces the shipped weights. Calibration is a temperature
buffer divided into the logit, so the exported file returns calibrated
probabilities with no extra step at serve time.

Precision is a plain attribute too (`set_precision`, chosen by whoever loads
the file): "fp32" is the exact route above; "bf16" runs the embedding and the
dense LSTM in bfloat16 (oneDNN's bf16 kernels where the CPU has AVX512-BF16 or
AMX: ~1.5-3x the fp32 speed) and pooling, head, temperature and sigmoid in fp32;
it has no packed route (see `_logits_bf16`).
The bf16 weights are derived copies, cached outside the state dict, so the
file's weights and their sha256 are the fp32 ones whatever the precision.
`explain` always runs fp32: gradients through bf16 states would blur the
attributions, and explanations are rare and not the throughput path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from contract.vocab import PAD_ID

# Padded / real tokens up to which the dense route is cheaper than packing. Measured on the shipped model,
# 1 thread, IMDb test reviews: dense is 2.2-3x faster at batch 2-8 even at 1.5x padding, ~1.5x at batch 16
# with 1.8x padding, and breaks even around 2x padding at batch 32-64 (docs/benchmarks.md, "Kernels").
DENSE_MAX_PADDING = 2.0

# How the BiLSTM's states become one feature vector. "last" is each direction's final state (the forward one at the
# last real token, the backward one at the first); the shipped "max+mean" concatenates both pools (4H features).
POOLINGS = ("max+mean", "max", "mean", "last")


class SentimentLSTM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        dropout: float,
        dense_max_padding: float = DENSE_MAX_PADDING,
        pooling: str = "max+mean",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.pooling = pooling  # a plain attribute, kept in the TorchScript file (re-export reads it back)
        self.head = nn.Linear((4 if pooling == "max+mean" else 2) * hidden, 1)  # [max-pool ; mean-pool] of 2 directions, or one of them
        self.register_buffer("temperature", torch.ones(()))
        self.dense_max_padding = dense_max_padding  # a plain attribute: the weights (and their sha256) stay the same
        self.precision = "fp32"  # "fp32" | "bf16": a plain attribute, set by set_precision when the file is loaded
        # bf16 copies of [embedding, 4 forward LSTM tensors, 4 backward] once set_precision("bf16") fills it; starts with
        # one empty tensor only so that TorchScript can type it List[Tensor] (an empty list has no element type)
        self.bf16_weights = [torch.empty(0)]

    @torch.jit.export
    def set_precision(self, precision: str) -> None:
        """Choose the route ("fp32" | "bf16") and (re)build the bf16 weight cache on the weights' current device."""
        if precision != "fp32" and precision != "bf16":  # contract.device.PRECISIONS (TorchScript reads no global tuple)
            raise ValueError("precision must be fp32 or bf16, not " + precision)
        self.precision = precision
        self.bf16_weights = self._bf16_copies() if precision == "bf16" else [torch.empty(0)]

    def _bf16_copies(self) -> list[torch.Tensor]:
        """[embedding [V, E], w_ih, w_hh, b_ih, b_hh, w_ih_rev, w_hh_rev, b_ih_rev, b_hh_rev] in bfloat16."""
        lstm = self.lstm
        weights = [self.embedding.weight, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        weights += [lstm.weight_ih_l0_reverse, lstm.weight_hh_l0_reverse, lstm.bias_ih_l0_reverse, lstm.bias_hh_l0_reverse]
        return [w.detach().to(torch.bfloat16) for w in weights]

    def _bf16(self) -> list[torch.Tensor]:
        """The cached bf16 weights, or fresh copies when the cache is missing or was left on another device by `.to()`."""
        cached = self.bf16_weights
        if len(cached) == 9 and cached[0].device == self.embedding.weight.device:
            return cached
        return self._bf16_copies()

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: [B, T, E] -> h [B, T, 2H], zeros past each length."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0]

    def _dense(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: [B, T, E] -> h [B, T, 2H], undefined past each length (the caller masks it)."""
        lstm = self.lstm
        forward = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        backward = [lstm.weight_ih_l0_reverse, lstm.weight_hh_l0_reverse, lstm.bias_ih_l0_reverse, lstm.bias_hh_l0_reverse]
        return self._dense_with(x, lengths, forward, backward)

    def _dense_with(
        self, x: torch.Tensor, lengths: torch.Tensor, forward_weights: list[torch.Tensor], backward_weights: list[torch.Tensor]
    ) -> torch.Tensor:
        """`_dense` with explicit weights per direction ([w_ih, w_hh, b_ih, b_hh]), in x's dtype."""
        batch, total = x.size(0), x.size(1)
        zeros = x.new_zeros(1, batch, self.lstm.hidden_size)  # [1, B, H]: h0 = c0 = 0, as for packed input
        # [B, T, H]: step t sees tokens 0..t only, so padding after a row's end cannot reach it
        forward = torch.lstm(x, [zeros, zeros], forward_weights, True, 1, 0.0, False, False, True)[0]
        steps = torch.arange(total, device=x.device)[None, :]  # [1, T]
        last = lengths[:, None] - 1  # [B, 1]
        flip = torch.where(steps <= last, last - steps, steps)  # [B, T]: reverses each row within its length; an involution
        x_rev = x.gather(1, flip[:, :, None].expand(batch, total, x.size(2)))  # [B, T, E]: real tokens reversed, padding last
        backward = torch.lstm(x_rev, [zeros, zeros], backward_weights, True, 1, 0.0, False, False, True)[0]  # [B, T, H], reversed
        backward = backward.gather(1, flip[:, :, None].expand(batch, total, backward.size(2)))  # [B, T, H] back in place
        return torch.cat([forward, backward], 2)  # [B, T, 2H]

    def use_dense(self, lengths: torch.Tensor, total: int) -> bool:
        """The dense route pays when padding is small; training keeps the packed route (and its exact history)."""
        return (not self.training) and lengths.size(0) * total <= self.dense_max_padding * float(lengths.sum())

    def logits_from_embeddings(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: FloatTensor[B, T, E] embedded ids, lengths: LongTensor[B] -> uncalibrated logits FloatTensor[B]."""
        total = x.size(1)
        x = self.dropout(x)
        h = self._dense(x, lengths) if self.use_dense(lengths, total) else self._packed(x, lengths)  # [B, T, 2H]
        return self.head(self.dropout(self.pool(h, lengths))).squeeze(1)  # [B]

    def pool(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """h: [B, T, 2H] (anything past each length is ignored) -> features [B, 4H] for max+mean, else [B, 2H]."""
        if self.pooling == "last":
            hidden = h.size(2) // 2
            end = (lengths - 1)[:, None, None].expand(h.size(0), 1, h.size(2))  # [B, 1, 2H]
            forward = h.gather(1, end).squeeze(1)[:, :hidden]  # [B, H]: the forward state after the last real token
            return torch.cat([forward, h[:, 0, hidden:]], 1)  # [B, 2H]: the backward state after reading back to token 0
        mask = (torch.arange(h.size(1), device=h.device)[None, :] < lengths[:, None])[:, :, None]  # [B, T, 1]
        mean = h.masked_fill(~mask, 0.0).sum(1) / lengths[:, None].to(h.dtype)  # [B, 2H]
        if self.pooling == "mean":
            return mean
        peak = h.masked_fill(~mask, float("-inf")).max(1).values  # [B, 2H]
        if self.pooling == "max":
            return peak
        return torch.cat([peak, mean], 1)  # [B, 4H]

    def logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: LongTensor[B, T] (PAD_ID-padded), lengths: LongTensor[B] >= 1 -> logits FloatTensor[B]."""
        if self.precision == "bf16" and not self.training:
            return self._logits_bf16(ids, lengths)
        return self.logits_from_embeddings(self.embedding(ids), lengths)

    def _logits_bf16(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The bf16 route (inference only): embedding and BiLSTM in bf16, pooling and head in fp32 -> logits FloatTensor[B].

        Dense only: PyTorch's packed LSTM kernel in bf16 rounds differently from oneDNN's dense one (measured: a text's
        p moved by up to 2.4e-3 with its batch-mates), so a heavily padded batch runs as length-sorted groups, each dense
        within `dense_max_padding`, which keeps every text on the one kernel (batch-mates move p by < 1e-4).
        """
        weights = self._bf16()
        if self.use_dense(lengths, ids.size(1)):
            return self._logits_bf16_dense(ids, lengths, weights)
        batch = ids.size(0)
        order = torch.argsort(lengths, descending=True)  # [B]
        ordered: list[int] = lengths[order].tolist()
        logits = torch.empty(batch, device=ids.device)  # [B]
        start = 0
        while start < batch:
            longest, end, real = ordered[start], start + 1, ordered[start]
            while end < batch and (end - start + 1) * longest <= self.dense_max_padding * (real + ordered[end]):
                real, end = real + ordered[end], end + 1
            rows = order[start:end]  # [G]: a group of similar lengths
            logits[rows] = self._logits_bf16_dense(ids[rows, :longest], lengths[rows], weights)
            start = end
        return logits

    def _logits_bf16_dense(self, ids: torch.Tensor, lengths: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """ids: LongTensor[B, T], lengths: LongTensor[B], weights: `_bf16()` -> logits FloatTensor[B]."""
        x = F.embedding(ids, weights[0])  # [B, T, E] bf16
        h = self._dense_with(x, lengths, weights[1:5], weights[5:9])  # [B, T, 2H] bf16
        return self.head(self.pool(h.float(), lengths)).squeeze(1)  # [B] fp32

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
