"""Test-set and robustness figures, and `python -m training.evaluate MODEL --data PATH` to recompute them from a file.

Evaluation goes through `contract.artifact.load` and the artifact's own
encoder, exactly as the service does, so the figures are those of the file.
Besides IMDb test it reports CAD dev (originals, revisions, both members of a
pair right), the short-text set built from validation reviews, each with
ECE, and the behavioural suite's pass rates per capability on both halves
(`training/behaviour.py`): IMDb test alone hides how brittle a model is off its own distribution.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from contract import artifact
from contract.predictor import Predictor
from training import behaviour, cad, data, short_texts
from training.calibrate import brier, expected_calibration_error
from training.holdout import Holdout


def metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float | list[list[int]]]:
    """probs: P(positive) FloatTensor[N]; labels: FloatTensor[N] of 0/1."""
    predicted = (probs >= 0.5).long()
    y = labels.long()
    return {
        "accuracy": float((predicted == y).float().mean()),
        "f1": float(f1_score(y, predicted)),
        "roc_auc": float(roc_auc_score(y, probs)) if len(set(y.tolist())) == 2 else None,  # undefined on one class
        "ece_15": expected_calibration_error(probs, labels),
        "brier": brier(probs, labels),
        "confusion": confusion_matrix(y, predicted).tolist(),  # rows true neg/pos, cols predicted neg/pos
        "n": len(y),
    }


def predict_texts(loaded: artifact.Artifact, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """P(positive) FloatTensor[N] for raw texts, via the artifact's encoder and length-sorted batches: the serving path."""
    predictor = Predictor.from_artifact(loaded, max_batch_size=batch_size, max_batch_tokens=batch_size * loaded.manifest.max_length)
    return torch.tensor(predictor.predict(texts))


def robustness(
    predict: Callable[[Sequence[str]], torch.Tensor], cad_dev: Sequence[cad.Pair], short: Sequence[short_texts.ShortText]
) -> dict[str, dict]:
    """CAD dev and short-text figures; `predict` maps texts to P(positive) FloatTensor[N] (calibrated)."""
    y_original = torch.tensor([float(p.original_label) for p in cad_dev])  # [P]
    p_original, p_revised = predict([p.original for p in cad_dev]), predict([p.revised for p in cad_dev])  # [P], [P]
    right_original = (p_original >= 0.5).float() == y_original
    right_revised = (p_revised >= 0.5).float() == 1 - y_original
    return {
        "cad_dev_original": metrics(p_original, y_original),
        "cad_dev_revised": metrics(p_revised, 1 - y_original),
        "cad_dev_pairs": {"both_right": float((right_original & right_revised).float().mean()), "n": len(cad_dev)},
        # a tiny smoke-run split may yield no short text at all
        "short_text": metrics(predict([s.text for s in short]), torch.tensor([float(s.label) for s in short])) if short else {"n": 0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="aclImdb tarball or folder (default: the usual places)")
    parser.add_argument("--cad-dir", type=Path, default=None, help="folder with CAD's dev_paired.tsv (default: the usual places)")
    parser.add_argument("--limit", type=int, default=None, help="reviews per class (quick checks)")
    parser.add_argument("--no-test", action="store_true", help="skip the 25k IMDb test reviews (robustness sets only)")
    parser.add_argument("--behaviour-only", action="store_true", help="only the behavioural suite (seconds; needs no data)")
    args = parser.parse_args(argv)
    try:
        loaded = artifact.load(args.model)
        if args.behaviour_only:
            rates = behaviour.pass_rates(lambda texts: predict_texts(loaded, texts))
            print(json.dumps({"model": f"{loaded.manifest.name} {loaded.manifest.version}", "behaviour": rates}, indent=2))
            return 0
        config = loaded.manifest.training.get("config", {})  # the split the model was trained with
        dataset = data.load(
            data.find(args.data),
            float(config.get("validation_fraction", 0.1)),
            data.split_seed(config),
            args.limit,
            Holdout.read().paths,
        )
        cad_dev = cad.read(cad.find(args.cad_dir) / "dev_paired.tsv")
    except (artifact.ArtifactError, data.DataError, cad.CadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result: dict[str, object] = {"model": f"{loaded.manifest.name} {loaded.manifest.version}", "holdout": loaded.manifest.holdout}
    if not args.no_test:
        result["imdb_test"] = metrics(
            predict_texts(loaded, [r.text for r in dataset.test]), torch.tensor([float(r.label) for r in dataset.test])
        )
    short = short_texts.build((r.text, r.label) for r in dataset.validation)
    result.update(robustness(lambda texts: predict_texts(loaded, texts), cad_dev, short))
    result["behaviour"] = behaviour.pass_rates(lambda texts: predict_texts(loaded, texts))
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
