"""Synchronous batched inference: texts -> ids -> length-sorted batches -> P(positive) (or explanations), in input order.

The one copy of "encode, pad, forward" that the service's runner (per batch),
bulk scoring, training's evaluation, the export checks and the benchmarks all
use, so every consumer gets the probabilities the service gives; and the one
copy of "pad, forward, backward" for explanations (the service's runner).

Why length-sorted batches: the BiLSTM's cost per batch follows its longest
text, so texts of similar length batched together waste little on padding
(bench figures in docs/benchmarks.md). The model's output does not depend on
batch-mates or padding (checked at export to 1e-5 in fp32, 1e-3 in the bf16
route), so batching never changes a probability beyond that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import torch

from contract.artifact import Artifact
from contract.vocab import PAD_ID, Encoded, TextEncoder

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_TOKENS = 64 * 400  # padded tokens per forward: bounds memory per batch (the service's default)


def pad_batch(batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists with PAD_ID -> (ids LongTensor[B, T_max], lengths LongTensor[B])."""
    lengths = torch.tensor([len(ids) for ids in batch], dtype=torch.long)  # [B]
    out = torch.full((len(batch), int(lengths.max()) if len(batch) else 0), PAD_ID, dtype=torch.long)  # [B, T]
    for row, ids in enumerate(batch):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out, lengths


def length_sorted_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices into `lengths` grouped into batches of similar length, longest first.

    Each batch has at most `max_batch_size` texts and at most `max_batch_tokens`
    padded tokens (texts x its longest text), except a lone text longer than the
    budget, which gets a batch of its own. Longest first: the costliest batches
    start early, so parallel workers finish together.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]  # descending: the first is the longest
        if current and (len(current) >= max_batch_size or (len(current) + 1) * longest > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class Pending:
    """Probabilities of one `submit` that are still being computed; `result()` waits and puts them in input order."""

    size: int
    batches: list[list[int]]
    futures: list[Future[list[float]]]

    def result(self) -> list[float]:
        return scatter(self.size, self.batches, (f.result() for f in self.futures))


def scatter(size: int, batches: Sequence[Sequence[int]], results: Iterable[Sequence[float]]) -> list[float]:
    """Per-batch outputs back into input order."""
    out = [0.0] * size
    for rows, probs in zip(batches, results, strict=True):
        for i, p in zip(rows, probs, strict=True):
            out[i] = p
    return out


class Predictor:
    """A TorchScript module with the `forward(ids LongTensor[B, T], lengths LongTensor[B]) -> FloatTensor[B]` interface,
    its encoder and its device; thread-safe (no state changes after construction)."""

    def __init__(
        self,
        module: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        encoder: TextEncoder | None = None,
        device: torch.device | str = "cpu",
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        self.module = module
        self.encoder = encoder
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens

    @classmethod
    def from_artifact(cls, artifact: Artifact, device: torch.device | str = "cpu", **batching: int) -> Predictor:
        """For a loaded artifact (already on `device`: `contract.artifact.load(path, device)`)."""
        return cls(artifact.module, artifact.encoder, device, **batching)

    def encode(self, texts: Iterable[str]) -> list[Encoded]:
        if self.encoder is None:
            raise ValueError("this predictor has no encoder: give it ids")
        return [self.encoder.encode(text) for text in texts]

    def predict_batch(self, batch: Sequence[Sequence[int]]) -> list[float]:
        """One forward pass: pad `batch` (id lists), run the model on the device -> P(positive) per row."""
        ids, lengths = pad_batch(batch)  # [B, T], [B]
        with torch.inference_mode():
            probs = self.module(ids.to(self.device), lengths.to(self.device))  # [B]
        return probs.float().cpu().tolist()  # .cpu() syncs the device: callers' timings are real

    def explain_batch(self, batch: Sequence[Sequence[int]]) -> list[tuple[float, list[float]]]:
        """(P(positive), gradient x input per id) for each id list: one backward per group of equal-length rows.

        Why groups: on CPU, the LSTM backward over a packed batch of unequal
        lengths leaves the oneDNN path and costs ~5x more per text than the
        same texts one at a time (measured 16 vs 6 ms per median review);
        equal lengths stay on the fast path and still batch. Needs the
        module's `explain(ids, lengths) -> (probs [B], attributions [B, T])`.
        """
        out: list[tuple[float, list[float]]] = [(0.0, [])] * len(batch)
        groups: dict[int, list[int]] = {}
        for index, row in enumerate(batch):
            groups.setdefault(len(row), []).append(index)
        for rows in groups.values():
            ids, lengths = pad_batch([batch[i] for i in rows])  # [G, T], [G], no padding inside a group
            with torch.enable_grad():  # explain() differentiates: grad mode must be on
                probs, attributions = self.module.explain(ids.to(self.device), lengths.to(self.device))  # type: ignore[attr-defined]  # [G], [G, T]
            for i, p, row in zip(rows, probs.float().cpu().tolist(), attributions.float().cpu().tolist(), strict=True):
                out[i] = (p, row)
        return out

    def batches(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        return length_sorted_batches([len(x) for x in ids], self.max_batch_size, self.max_batch_tokens)

    def predict_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """P(positive) per id list, in input order, batch after batch on this thread."""
        batches = self.batches(ids)
        return scatter(len(ids), batches, (self.predict_batch([ids[i] for i in rows]) for rows in batches))

    def submit(self, ids: Sequence[Sequence[int]], executor: Executor) -> Pending:
        """Like `predict_ids`, with the batches run on `executor`'s threads (torch releases the GIL in the forward pass)."""
        batches = self.batches(ids)
        return Pending(len(ids), batches, [executor.submit(self.predict_batch, [ids[i] for i in rows]) for rows in batches])

    def predict(self, texts: Sequence[str]) -> list[float]:
        """P(positive) per text, in input order."""
        return self.predict_ids([e.ids for e in self.encode(texts)])
