"""Training and evaluation epochs: length-bucketed batches, clipping, one-cycle Adam, early stopping."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from contract.predictor import pad_batch
from contract.vocab import head_tail
from training.config import TrainConfig
from training.model import SentimentLSTM

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch figures, for the log, the learning-curve plot and the model card."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0

    def record(self, train_loss: float, val_loss: float, val_accuracy: float, seconds: float) -> None:
        """Append one epoch's figures and log them."""
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.val_accuracy.append(val_accuracy)
        self.seconds.append(seconds)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, %.0fs", len(self.val_loss), train_loss, val_loss, val_accuracy, seconds
        )

    def then(self, later: History) -> History:
        """This run followed by `later` (a second stage from this one's weights): epochs and the kept one counted across both."""
        return History(
            self.train_loss + later.train_loss,
            self.val_loss + later.val_loss,
            self.val_accuracy + later.val_accuracy,
            self.seconds + later.seconds,
            len(self.train_loss) + later.best_epoch,
        )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of logits on the side of 0 their 0/1 label says. logits, labels: FloatTensor[N]."""
    return float(((logits > 0).float() == labels).float().mean())


def bucketed(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are similar, so little compute goes to padding.

    Sorting within random pools of 50 batches keeps batches near-homogeneous in
    length while every epoch still sees a different order.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def crop_to_shortest(batch: Sequence[list[int]]) -> list[list[int]]:
    """Cut every sequence of a training batch to the batch's shortest length, keeping head and tail.

    Why: on CPU, the LSTM backward over a packed batch whose lengths differ
    falls off the oneDNN path and runs ~5x slower (measured: 6.3 s vs 1.2 s of
    CPU per 64x210 batch). Batches are length-bucketed, so this drops only a
    few middle tokens per review: cheap augmentation, not lost signal.
    """
    shortest = min(len(ids) for ids in batch)
    return [[ids[i] for i in head_tail(len(ids), shortest, shortest // 4)] for ids in batch]


def _batches(ids: Sequence[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Length-sorted batches for inference (order restored by the caller)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()  # not inference_mode: calibration fits a temperature on these
def predict_logits(model: SentimentLSTM, ids: Sequence[list[int]], batch_size: int, device: torch.device) -> torch.Tensor:
    """-> uncalibrated logits FloatTensor[N] in input order."""
    model.eval()
    out = torch.empty(len(ids))
    for batch in _batches(ids, batch_size):
        x, lengths = pad_batch([ids[i] for i in batch])  # [B, T], [B]
        out[batch] = model.logits(x.to(device), lengths.to(device)).float().cpu()
    return out


@dataclass(frozen=True, slots=True)
class PairIds:
    """A counterfactual pair as ids: the original, its label-flipping revision, and the original's label."""

    original: list[int]
    revised: list[int]
    label: int  # of the original; the revision's is 1 - label


def pair_batches(pairs: Sequence[PairIds], passes: float, pair_batch: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches of pair indices covering `passes` × the pairs (a fraction takes a random part)."""
    whole, part = int(passes), passes - int(passes)
    order = list(range(len(pairs))) * whole + rng.sample(range(len(pairs)), round(part * len(pairs)))
    lengths = [len(pairs[i].original) for i in order]
    return [[order[j] for j in batch] for batch in bucketed(lengths, pair_batch, rng)]


def pair_loss(model: SentimentLSTM, batch: Sequence[PairIds], pair_weight: float, device: torch.device) -> torch.Tensor:
    """BCE on both members of each pair, plus `pair_weight` × a term that pushes the two logits apart.

    The term is softplus(-s·(z_original - z_revised)) with s = +1 when the original is positive: a
    logistic ranking loss that is small only when the minimal edit moved the logit the way the label
    moved, which is exactly what the CAD revisions measure.
    """
    x, lens = pad_batch(crop_to_shortest([p.original for p in batch] + [p.revised for p in batch]))  # [2P, T], [2P]
    z_original, z_revised = model.logits(x.to(device), lens.to(device)).chunk(2)  # [P], [P]
    return pair_objective(z_original, z_revised, torch.tensor([float(p.label) for p in batch], device=device), pair_weight)


def pair_objective(z_original: torch.Tensor, z_revised: torch.Tensor, y_original: torch.Tensor, pair_weight: float) -> torch.Tensor:
    """BCE on both members ([P] logits each, labels y and 1 - y) plus `pair_weight` × the ranking term (see pair_loss)."""
    loss = F.binary_cross_entropy_with_logits(torch.cat([z_original, z_revised]), torch.cat([y_original, 1 - y_original]))
    if pair_weight:
        loss = loss + pair_weight * F.softplus(-(2 * y_original - 1) * (z_original - z_revised)).mean()
    return loss


@dataclass(frozen=True)
class Local:
    """Sentence-level supervision for stage two (docs/robustness.md): what document labels cannot teach.

    `sentences` (ids) carry soft targets from the negation-scope teacher; `counterfactuals` are generated minimal-edit
    pairs. Both are short, so they are batched by exact length: no crop can cut the "not" out of a one-liner.
    """

    sentences: Sequence[list[int]] = ()
    targets: Sequence[float] = ()  # P(positive) per sentence
    counterfactuals: Sequence[PairIds] = ()
    pair_weight: float = 1.0  # of the pairwise term on the counterfactual pairs

    def batches(self, batch_size: int, pair_batch: int, rng: random.Random) -> list[tuple[str, list[int]]]:
        """One epoch's ("sentence" | "counterfactual", indices) batches."""
        sentence_keys = [(len(x),) for x in self.sentences]
        pair_keys = [(len(p.original), len(p.revised)) for p in self.counterfactuals]
        return [("sentence", b) for b in exact_length_batches(sentence_keys, batch_size, rng)] + [
            ("counterfactual", b) for b in exact_length_batches(pair_keys, pair_batch, rng)
        ]


def exact_length_batches(keys: Sequence[tuple[int, ...]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices sharing one key (their lengths): uniform lengths need no crop and stay on oneDNN's path."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    batches = []
    for k in sorted(groups):
        members = groups[k]
        rng.shuffle(members)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def counterfactual_loss(model: SentimentLSTM, batch: Sequence[PairIds], pair_weight: float, device: torch.device) -> torch.Tensor:
    """pair_loss for generated pairs of short texts: originals and edits in two forward passes, each of one length."""
    x, lens = pad_batch([p.original for p in batch])  # [P, T]
    x_edit, lens_edit = pad_batch([p.revised for p in batch])  # [P, T']
    z_original, z_revised = model.logits(x.to(device), lens.to(device)), model.logits(x_edit.to(device), lens_edit.to(device))
    return pair_objective(z_original, z_revised, torch.tensor([float(p.label) for p in batch], device=device), pair_weight)


def imdb_loss(model: SentimentLSTM, ids: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """BCE, plus with `epsilon` > 0 the BCE at the worst-case embedding perturbation (Miyato et al. 2017).

    The perturbation is the loss gradient on the embeddings, scaled per text to `epsilon` x that text's
    embedding norm (Miyato normalise the embeddings instead; a relative radius is the same idea without
    changing the served model). One extra forward and backward: ~2x the training time.
    """
    x = model.embedding(ids)  # [B, T, E]
    loss = F.binary_cross_entropy_with_logits(model.logits_from_embeddings(x, lengths), y)
    if not epsilon:
        return loss
    grad = torch.autograd.grad(loss, x, retain_graph=True)[0].detach()  # [B, T, E]
    scale = epsilon * x.detach().flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # [B]
    adversarial = F.binary_cross_entropy_with_logits(model.logits_from_embeddings(x + scale[:, None, None] * grad, lengths), y)
    return loss + adversarial


def layer_groups(model: SentimentLSTM) -> list[list[torch.nn.Parameter]]:
    """Parameters from the input up: embedding, LSTM, head (for discriminative rates and gradual unfreezing)."""
    return [list(model.embedding.parameters()), list(model.lstm.parameters()), list(model.head.parameters())]


@dataclass(frozen=True)
class Examples:
    """What a fit learns from or is judged on: texts' ids with labels (0/1, or a teacher's P(positive) as soft labels),
    and for training optionally CAD `pairs` and stage two's `local` supervision."""

    ids: Sequence[list[int]]
    labels: Sequence[float]
    pairs: Sequence[PairIds] = ()
    local: Local | None = None


def optimiser(model: SentimentLSTM, config: TrainConfig, steps: int) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.OneCycleLR]:
    """Adam over the layer groups (head at `lr`, each layer below / `lr_decay`) under a one-cycle schedule of `steps`."""
    groups = layer_groups(model)
    peaks = [config.lr / config.lr_decay ** (len(groups) - 1 - i) for i in range(len(groups))]
    optimizer = torch.optim.Adam([{"params": g, "lr": lr} for g, lr in zip(groups, peaks, strict=True)], weight_decay=config.weight_decay)
    warmup = max(0.1, 2.5 / steps)  # 10% warm-up; tiny smoke runs need >= 2 warm-up steps or OneCycleLR divides by 0
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=max(steps, 3), pct_start=min(warmup, 0.5))
    return optimizer, schedule


def epoch_plan(train: Examples, config: TrainConfig, rng: random.Random) -> list[tuple[str, list[int]]]:
    """One epoch's (kind, indices) batches: IMDb buckets, CAD pair batches and local batches, shuffled together so
    there is one schedule and one optimizer, not a fine-tune bolted on after."""
    plan = [("imdb", b) for b in bucketed([len(x) for x in train.ids], config.batch_size, rng)]
    if train.pairs:
        plan += [("cad", b) for b in pair_batches(train.pairs, config.cad_passes, config.pair_batch, rng)]
    if train.local:
        plan += train.local.batches(config.batch_size, config.pair_batch, rng)
    if train.pairs or train.local:
        rng.shuffle(plan)
    return plan


def batch_loss(
    model: SentimentLSTM, kind: str, batch: list[int], train: Examples, config: TrainConfig, device: torch.device
) -> torch.Tensor:
    """The loss of one planned batch, by its kind."""
    local = train.local
    if kind == "cad":
        return pair_loss(model, [train.pairs[i] for i in batch], config.pair_weight, device)
    if kind == "counterfactual" and local:
        return counterfactual_loss(model, [local.counterfactuals[i] for i in batch], local.pair_weight, device)
    if kind == "sentence" and local:
        x, lens = pad_batch([local.sentences[i] for i in batch])  # [B, T], all of one length
        y = torch.tensor([local.targets[i] for i in batch], dtype=torch.float32, device=device)  # [B]
        return F.binary_cross_entropy_with_logits(model.logits(x.to(device), lens.to(device)), y)
    x, lens = pad_batch(crop_to_shortest([train.ids[i] for i in batch]))  # [B, T], [B] with all lengths equal
    y = torch.tensor([train.labels[i] for i in batch], dtype=torch.float32, device=device)  # [B]
    return imdb_loss(model, x.to(device), lens.to(device), y, config.adversarial)


def fit(model: SentimentLSTM, train: Examples, val: Examples, config: TrainConfig, device: torch.device, ema: float = 0.0) -> History:
    """Train in place; on return the model holds the weights of the best validation-loss epoch.

    With `ema` > 0 (a decay) those are the weights' exponential moving average (Polyak averaging, as AWD-LSTM's
    averaged SGD): validation judges the average, and the raw weights only carry the optimisation on.

    CAD pairs get batches of their own (both members together, so the pairwise term sees them), shuffled among the
    IMDb batches; local sentences and counterfactual pairs join the same way (`epoch_plan`).
    """
    rng = random.Random(config.seed)
    per_epoch = len(epoch_plan(train, config, random.Random(0)))
    optimizer, schedule = optimiser(model, config, per_epoch * config.epochs)
    y_val = torch.tensor(val.labels, dtype=torch.float32)
    history, best_loss, best_state, stale = History(), math.inf, copy.deepcopy(model.state_dict()), 0
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True) if ema else None
    judged: SentimentLSTM = averaged.module if averaged else model  # the weights validation sees and the fit keeps
    for epoch in range(1, config.epochs + 1):
        start, total, seen = time.perf_counter(), 0.0, 0
        model.train()
        if config.unfreeze:
            for depth, group in enumerate(reversed(layer_groups(model))):  # epoch 1: head; epoch 2: + LSTM; then all
                for param in group:
                    param.requires_grad_(depth < epoch)
        bar = tqdm(epoch_plan(train, config, rng), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        for kind, batch in bar:
            loss = batch_loss(model, kind, batch, train, config, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            schedule.step()
            if averaged:
                averaged.update_parameters(model)
            total, seen = total + loss.item() * len(batch), seen + len(batch)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        logits = predict_logits(judged, val.ids, config.eval_batch_size, device)
        history.record(
            total / seen, F.binary_cross_entropy_with_logits(logits, y_val).item(), accuracy(logits, y_val), time.perf_counter() - start
        )
        if history.val_loss[-1] < best_loss:
            best_loss, best_state, stale, history.best_epoch = history.val_loss[-1], copy.deepcopy(judged.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stop: no validation improvement for %d epochs", stale)
                break
    model.load_state_dict(best_state)
    model.requires_grad_(True)
    return history
