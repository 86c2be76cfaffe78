"""The whole run as steps: prepare -> fit (stage one, stage two) -> calibrate -> evaluate -> manifest -> export -> report."""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from contract.device import resolve_device
from contract.manifest import Manifest
from contract.text import NORMALIZER_VERSION
from training import behaviour, report, short_texts, stage_one, stage_two
from training.calibrate import brier, expected_calibration_error, fit_temperature
from training.config import TrainConfig
from training.evaluate import metrics, robustness
from training.export import export
from training.loop import History, predict_logits
from training.model import SentimentLSTM
from training.prepare import Splits, prepare
from training.report import Scores

log = logging.getLogger(__name__)
LABELS = ("negative", "positive")


@dataclass
class Fitted:
    """A fitted model and what its fit reports."""

    model: SentimentLSTM
    history: History
    lm_figures: dict[str, float]
    distillation: dict[str, float]
    from_cache: bool  # stage one came from --stage-one-cache
    seconds: float


@dataclass
class Evaluation:
    """Figures of the calibrated model, and the probabilities the plots need."""

    calibration: dict[str, float]
    test: dict[str, Any]
    robustness: dict[str, Any]
    behaviour: dict[str, dict[str, float]]
    scores: Scores


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def fit(splits: Splits, config: TrainConfig, device: torch.device) -> Fitted:
    """Stage one (or its cache), then stage two's distillation when --distill."""
    start = time.perf_counter()
    model = stage_one.new_model(splits, config)
    history, lm_figures, from_cache = stage_one.run(model, splits, config, device)
    distillation: dict[str, float] = {}
    if config.distill:
        history, distillation = stage_two.run(model, history, splits, config, device)
    return Fitted(model, history, lm_figures, distillation, from_cache, time.perf_counter() - start)


def calibrate(model: SentimentLSTM, splits: Splits, config: TrainConfig, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """Fit the temperature on validation and set it in the model -> (uncalibrated validation logits [N], figures)."""
    val_logits, y_val = predict_logits(model, splits.val_ids, config.eval_batch_size, device), splits.y_val  # [N], [N]
    temperature = fit_temperature(val_logits, y_val)
    model.temperature.fill_(temperature)
    calibration = {
        "temperature": temperature,
        "val_ece_15_before": expected_calibration_error(torch.sigmoid(val_logits), y_val),
        "val_ece_15_after": expected_calibration_error(torch.sigmoid(val_logits / temperature), y_val),
        "val_brier_before": brier(torch.sigmoid(val_logits), y_val),
        "val_brier_after": brier(torch.sigmoid(val_logits / temperature), y_val),
    }
    log.info("calibration: %s", calibration)
    return val_logits, calibration


def evaluate(model: SentimentLSTM, splits: Splits, config: TrainConfig, device: torch.device) -> Evaluation:
    """Calibrate, then the test set (touched once, here, after every choice is made), CAD dev, short texts and the
    behavioural suite, all on the calibrated model."""
    val_logits, calibration = calibrate(model, splits, config, device)
    temperature = calibration["temperature"]

    def calibrated(texts: list[str]) -> torch.Tensor:
        ids = [splits.encoder.encode(t).ids for t in texts]
        return torch.sigmoid(predict_logits(model, ids, config.eval_batch_size, device) / temperature)

    y_test = torch.tensor([float(r.label) for r in splits.dataset.test])
    test_logits = predict_logits(model, [splits.encoder.encode(r.text).ids for r in splits.dataset.test], config.eval_batch_size, device)
    test = metrics(torch.sigmoid(test_logits / temperature), y_test)
    test["ece_15_uncalibrated"] = expected_calibration_error(torch.sigmoid(test_logits), y_test)
    test["brier_uncalibrated"] = brier(torch.sigmoid(test_logits), y_test)
    log.info("test: accuracy %.4f, f1 %.4f, auc %.4f, ece %.4f", test["accuracy"], test["f1"], test["roc_auc"], test["ece_15"])
    short = short_texts.build((r.text, r.label) for r in splits.dataset.validation)
    robust = robustness(calibrated, splits.cad_dev, short) if splits.cad_dev else {}
    if robust:
        log.info(
            "CAD dev: originals %.4f, revisions %.4f, both right %.4f; short texts %.4f",
            robust["cad_dev_original"]["accuracy"],
            robust["cad_dev_revised"]["accuracy"],
            robust["cad_dev_pairs"]["both_right"],
            robust["short_text"].get("accuracy", float("nan")),
        )
    behavioural = behaviour.pass_rates(calibrated)
    log.info("behavioural suite, validation half: %s", {k: round(v, 4) for k, v in behavioural["validation"].items()})
    val_probs = torch.sigmoid(val_logits)
    scores = Scores(torch.sigmoid(test_logits / temperature), y_test, val_probs, torch.sigmoid(val_logits / temperature), splits.y_val)
    return Evaluation(calibration, test, robust, behavioural, scores)


def manifest(config: TrainConfig, splits: Splits, fitted: Fitted, evaluation: Evaluation, started: float) -> Manifest:
    """What the file says about itself: the contract's settings, every figure, and how it was made."""
    history, device = fitted.history, next(fitted.model.parameters()).device
    return Manifest(
        name=config.name,
        version=config.version,
        labels=LABELS,
        vocab_size=len(splits.vocab),
        max_length=config.max_length,
        head_length=config.head_length,
        normalizer_version=NORMALIZER_VERSION,
        data_sha256=splits.dataset.sha256,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        git_commit=report.git_commit(),
        metrics={
            "test": evaluation.test,
            "validation": {"accuracy": history.val_accuracy[history.best_epoch - 1], **evaluation.calibration},
            "robustness": evaluation.robustness,
            "behaviour": evaluation.behaviour,
        },
        training={
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
            "hardware": hardware(device),
            "fit_seconds": round(fitted.seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "best_epoch": history.best_epoch,
            "parameters": sum(p.numel() for p in fitted.model.parameters()),
            "cad_train_pairs": len(splits.pairs),
            "lm_pretraining": fitted.lm_figures,
            "stage_one_from_cache": fitted.from_cache,
            "distillation": fitted.distillation,
        },
        holdout=splits.holdout.manifest_entry(splits.dataset.excluded) if config.holdout else {},
    )


def train(config: TrainConfig) -> Path:
    """Run the whole pipeline; returns the artifact path."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    splits = prepare(config)
    log.info("device %s", device)
    fitted = fit(splits, config, device)
    evaluation = evaluate(fitted.model, splits, config, device)
    final, checks = export(
        fitted.model,
        splits.vocab,
        manifest(config, splits, fitted, evaluation, started),
        config.out,
        splits.val_ids[:256],
        splits.dataset.validation[0].text,
    )
    report.write(config.out, final, fitted.history, checks, evaluation.scores, splits.val_ids)
    return config.out
