"""Test-set figures, and `python -m training.evaluate MODEL --data PATH` to recompute them from a shipped file.

Evaluation goes through `contract.artifact.load` and the artifact's own
encoder, exactly as the service does, so the figures are those of the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from contract import artifact
from contract.predictor import Predictor
from training import data
from training.calibrate import brier, expected_calibration_error


def metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float | list[list[int]]]:
    """probs: P(positive) FloatTensor[N]; labels: FloatTensor[N] of 0/1."""
    predicted = (probs >= 0.5).long()
    y = labels.long()
    return {
        "accuracy": float((predicted == y).float().mean()),
        "f1": float(f1_score(y, predicted)),
        "roc_auc": float(roc_auc_score(y, probs)),
        "ece_15": expected_calibration_error(probs, labels),
        "brier": brier(probs, labels),
        "confusion": confusion_matrix(y, predicted).tolist(),  # rows true neg/pos, cols predicted neg/pos
        "n": len(y),
    }


def predict_texts(loaded: artifact.Artifact, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """P(positive) FloatTensor[N] for raw texts, via the artifact's encoder and length-sorted batches: the serving path."""
    predictor = Predictor.from_artifact(loaded, max_batch_size=batch_size, max_batch_tokens=batch_size * loaded.manifest.max_length)
    return torch.tensor(predictor.predict(texts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="aclImdb tarball or folder (default: the usual places)")
    parser.add_argument("--limit", type=int, default=None, help="reviews per class (quick checks)")
    args = parser.parse_args(argv)
    try:
        loaded = artifact.load(args.model)
        dataset = data.load(data.find(args.data), limit=args.limit)
    except (artifact.ArtifactError, data.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    probs = predict_texts(loaded, [r.text for r in dataset.test])
    result = metrics(probs, torch.tensor([float(r.label) for r in dataset.test]))
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
