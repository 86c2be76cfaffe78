"""Step two, second half: distillation from stage one's weights on train (hard labels) + unlabelled reviews and their
random windows (a teacher's soft labels) + CAD, with optional sentence-level supervision (`Local`).

The teacher is an n-gram model averaged with the student's own stage-one BiLSTM (and with `--teacher-lstms K`, K-1
more stage ones): members that differ err on different reviews, and only the student is shipped.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time

import torch

from contract.text import tokenize
from training import counterfactuals, negation, teacher, windows
from training.config import TrainConfig
from training.loop import Examples, History, Local, PairIds, accuracy, predict_logits
from training.loop import fit as fit_epochs
from training.model import SentimentLSTM
from training.prepare import Splits
from training.stage_one import new_model, pretrain_and_fit

log = logging.getLogger(__name__)

Members = list[tuple[torch.Tensor, torch.Tensor]]  # per extra BiLSTM member: (validation [N], transfer set [M]) logits


def teacher_members(splits: Splits, transfer_ids: list[list[int]], config: TrainConfig, device: torch.device) -> Members:
    """The teacher's extra BiLSTM members: stage one again with seeds seed+1 .. seed+K-1.

    Each member runs in a forked RNG, so the student's own draws (and so `--teacher-lstms 1`) are those of a run
    without members.
    """
    members = []
    for i in range(1, config.teacher_lstms):
        member_config = dataclasses.replace(config, seed=config.seed + i)
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if device.type == "cuda" else []):
            torch.manual_seed(member_config.seed)
            member = new_model(splits, config)
            pretrain_and_fit(member, splits, member_config, device)
        log.info("teacher BiLSTM member %d of %d (seed %d) trained", i + 1, config.teacher_lstms, member_config.seed)
        members.append(
            (
                predict_logits(member, splits.val_ids, config.eval_batch_size, device),
                predict_logits(member, transfer_ids, config.eval_batch_size, device),
            )
        )
    return members


def local_supervision(splits: Splits, config: TrainConfig) -> tuple[Local | None, dict[str, float]]:
    """Stage two's sentence-level supervision (`--counterfactuals N`, `--contrast-pairs N`, `--distill-sentences N`), or
    None when all are off.

    The negation-scope teacher is fitted on train reviews only; counterfactuals come from sentences of train and
    unlabelled reviews, distilled sentences from unlabelled ones. Validation, test and the holdout are never read.
    """
    if not (config.counterfactuals or config.contrast_pairs or config.distill_sentences):
        return None, {}
    start, dataset = time.perf_counter(), splits.dataset
    lexicon = negation.ScopeLexicon.fit([r.text for r in dataset.train], [r.label for r in dataset.train], seed=config.seed)
    texts = [r.text for r in dataset.train + dataset.unsup]
    pairs = counterfactuals.generate(texts, lexicon, config.counterfactuals, config.seed) if config.counterfactuals else []
    pairs += counterfactuals.contrasts(texts, lexicon, config.contrast_pairs, config.seed) if config.contrast_pairs else []
    taught = negation.labelled_sentences([r.text for r in dataset.unsup], lexicon, config.distill_sentences, config.seed)
    figures: dict[str, float] = {
        "counterfactuals": sum(p.kind != "contrast" for p in pairs),
        **{f"counterfactuals_{k}": sum(p.kind == k for p in pairs) for k in counterfactuals.KINDS},
        "contrasts": sum(p.kind == "contrast" for p in pairs),
        "sentences": len(taught),
        "sentences_mean_target": sum(p for _, p in taught) / len(taught) if taught else float("nan"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("local supervision: %s", figures)
    encode = splits.ids_of
    pair_ids = [
        PairIds(o, e, p.label)
        for p, o, e in zip(pairs, encode([p.original for p in pairs]), encode([p.edited for p in pairs]), strict=True)
    ]
    local = Local(encode([t for t, _ in taught]), [p for _, p in taught], pair_ids, config.counterfactual_pair_weight)
    return local, figures


def ngram_teacher(splits: Splits, transfer: list[list[str]], config: TrainConfig) -> teacher.NgramLogits:
    """The n-gram member, fitted on train (and with `--teacher-cad` the CAD pairs: it learns "not good" too)."""
    tokens, labels = list(splits.train_tokens), list(splits.train_labels)
    if config.teacher_cad:
        for p in splits.cad_train:
            tokens += [tokenize(p.original), tokenize(p.revised)]
            labels += [p.original_label, 1 - p.original_label]
    val_tokens = [tokenize(r.text) for r in splits.dataset.validation]
    return teacher.NgramLogits.fit(tokens, labels, val_tokens, transfer, config.teacher_c)


def stage_two_config(splits: Splits, transfer_size: int, config: TrainConfig) -> TrainConfig:
    """Stage two's schedule. CAD keeps its stage-one share of each epoch (~22 % of texts; 2 passes among 3.3x as many
    reviews would be 8 %): the unlabelled reviews otherwise drown the minimal edits. Measured from one stage one
    (docs/robustness.md, runs D and F): CAD dev revisions 86.5 -> 89.0 %, pairs 79.2 -> 82.4 %, validation accuracy
    equal, validation loss 0.206 -> 0.211."""
    grown = (len(splits.train_ids) + transfer_size) / len(splits.train_ids) if config.distill_keep_cad_share else 1.0
    return dataclasses.replace(config, epochs=config.distill_epochs, lr=config.distill_lr, cad_passes=config.cad_passes * grown)


def run(
    model: SentimentLSTM, stage_one: History, splits: Splits, config: TrainConfig, device: torch.device
) -> tuple[History, dict[str, float]]:
    """Distil into `model` for `distill_rounds` rounds; each later round's BiLSTM member is the previous round's student
    (the n-gram member is fitted once). Returns every stage's history in one and the teachers' figures."""
    if config.stage_two_seed is not None:  # a second draw of stage two from the same stage one
        random.seed(config.stage_two_seed)
        torch.manual_seed(config.stage_two_seed)
        config = dataclasses.replace(config, seed=config.stage_two_seed)
    # the windows join the unlabelled reviews: the teacher labels them and the student learns them alike
    transfer = splits.unsup_tokens + windows.windows(splits.unsup_tokens, config.distill_windows, config.seed)
    if config.distill_windows:
        log.info("stage two: %d unlabelled reviews + %d random windows", len(splits.unsup_tokens), len(transfer) - len(splits.unsup_tokens))
    transfer_ids = splits.ids_of(transfer)
    members = teacher_members(splits, transfer_ids, config, device)
    local, local_figures = local_supervision(splits, config)
    ngram = ngram_teacher(splits, transfer, config)
    y_val, stage_two = splits.y_val, stage_two_config(splits, len(transfer), config)
    history, figures = stage_one, {"val_accuracy_stage_one": stage_one.val_accuracy[stage_one.best_epoch - 1]}
    for i, (member_val, _) in enumerate(members, start=2):
        figures[f"val_accuracy_lstm_member_{i}"] = accuracy(member_val, y_val)
        log.info("teacher BiLSTM member %d: validation accuracy %.4f", i, figures[f"val_accuracy_lstm_member_{i}"])
    for round_ in range(1, config.distill_rounds + 1):
        # the teacher's BiLSTM logits: the student's, averaged with the members' (part 0: validation, 1: transfer set)
        lstm_val, lstm_transfer = (
            torch.stack([predict_logits(model, ids, config.eval_batch_size, device), *(m[part] for m in members)]).mean(0)
            for part, ids in enumerate((splits.val_ids, transfer_ids))
        )
        targets, teacher_figures = teacher.soft_labels(ngram, lstm_val, lstm_transfer, y_val)
        prefix = "" if round_ == 1 else f"round_{round_}_"  # round one keeps the names earlier manifests used
        figures |= {prefix + k: v for k, v in teacher_figures.items()}
        train = Examples(splits.train_ids + transfer_ids, [*map(float, splits.train_labels), *targets], splits.pairs, local)
        history = history.then(fit_epochs(model, train, splits.val_set(), stage_two, device, config.distill_ema))
    figures["windows"] = len(transfer) - len(splits.unsup_tokens)
    return history, figures | {f"local_{k}": v for k, v in local_figures.items()}
