"""Test-set and robustness figures, and `python -m training.evaluate MODEL --data PATH` to recompute them from a file.

Evaluation goes through `contract.artifact.load` and the artifact's own
encoder, exactly as the service does, so the figures are those of the file.
Besides IMDb test it reports CAD dev (originals, revisions, both members of a
pair right), the short-text set built from validation reviews, each with
ECE, and the behavioural suite's pass rates per capability on both halves
(`training/behaviour.py`): IMDb test alone hides how brittle a model is off its own distribution.

`--against OTHER` also lists, per CAD dev and short-text set, what each of the two models gets right alone and how
many of those texts hold a negation (where a lever's cost on a set comes from).

`--precision bf16` (or `auto` where it resolves to bf16) also runs every set
through the file's bf16 route and prints its accuracy contract against fp32
(`bf16` in the output; exit code 1 when a bound is missed): label agreement on
IMDb test >= 99.8 %, accuracy within 0.1 pt on every set, max |Δp|, and
padding / batch-mate invariance within each route (bf16 <= 1e-3, fp32 <= 1e-5).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from contract import artifact
from contract.device import resolve_precision
from contract.predictor import Predictor
from contract.text import tokenize
from training import behaviour, cad, data, negation, short_texts
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


Scored = dict[str, tuple[torch.Tensor, torch.Tensor]]  # set name -> (P(positive) FloatTensor[N], labels FloatTensor[N])

# The bf16 route's accuracy contract (issue 29): bounds against the exact fp32 route of the same file.
MIN_LABEL_AGREEMENT = 0.998
MAX_ACCURACY_CHANGE = 0.001
MAX_INVARIANCE = {"fp32": 1e-5, "bf16": 1e-3}


def robustness_texts(cad_dev: Sequence[cad.Pair], short: Sequence[short_texts.ShortText]) -> dict[str, list[str]]:
    """CAD dev originals and revisions, and short texts (if any: a tiny smoke-run split may yield none), per set."""
    texts = {"cad_dev_original": [p.original for p in cad_dev], "cad_dev_revised": [p.revised for p in cad_dev]}
    return texts | ({"short_text": [s.text for s in short]} if short else {})


def robustness_probs(
    predict: Callable[[Sequence[str]], torch.Tensor], cad_dev: Sequence[cad.Pair], short: Sequence[short_texts.ShortText]
) -> Scored:
    """The sets of `robustness_texts` -> (probabilities, labels) per set."""
    y_original = torch.tensor([float(p.original_label) for p in cad_dev])  # [P]
    labels = {"cad_dev_original": y_original, "cad_dev_revised": 1 - y_original}
    if short:
        labels["short_text"] = torch.tensor([float(s.label) for s in short])
    return {name: (predict(texts), labels[name]) for name, texts in robustness_texts(cad_dev, short).items()}


def flips(ours: Scored, theirs: Scored, texts: dict[str, list[str]], listed: int = 60) -> dict[str, dict[str, object]]:
    """Per set, what this model gets wrong and `theirs` (another model) right ("lost"), and the reverse ("won"), with
    how many of each hold a negation cue and the lost texts: where a lever's cost on a set comes from."""
    out: dict[str, dict[str, object]] = {}
    for name, (p, y) in ours.items():
        q = theirs[name][0]
        right, other_right = ((p >= 0.5).float() == y).tolist(), ((q >= 0.5).float() == y).tolist()
        lost = [i for i, (a, b) in enumerate(zip(right, other_right, strict=True)) if b and not a]
        won = [i for i, (a, b) in enumerate(zip(right, other_right, strict=True)) if a and not b]

        def negated(rows: list[int], name: str = name) -> int:
            return sum(any(negation.is_cue(t) for t in tokenize(texts[name][i])) for i in rows)

        out[name] = {
            "lost": len(lost),
            "lost_with_negation": negated(lost),
            "won": len(won),
            "won_with_negation": negated(won),
            "lost_texts": [
                {"text": texts[name][i], "label": int(y[i]), "p": round(float(p[i]), 3), "p_other": round(float(q[i]), 3)}
                for i in lost[:listed]
            ],
        }
    return out


def both_right(scored: Scored) -> torch.Tensor:
    """BoolTensor[P]: both members of each CAD pair classified right."""
    right = [((p >= 0.5).float() == y) for p, y in (scored["cad_dev_original"], scored["cad_dev_revised"])]
    return right[0] & right[1]


def robustness(
    predict: Callable[[Sequence[str]], torch.Tensor], cad_dev: Sequence[cad.Pair], short: Sequence[short_texts.ShortText]
) -> dict[str, dict]:
    """CAD dev and short-text figures; `predict` maps texts to P(positive) FloatTensor[N] (calibrated)."""
    scored = robustness_probs(predict, cad_dev, short)
    return {
        "cad_dev_original": metrics(*scored["cad_dev_original"]),
        "cad_dev_revised": metrics(*scored["cad_dev_revised"]),
        "cad_dev_pairs": {"both_right": float(both_right(scored).float().mean()), "n": len(cad_dev)},
        "short_text": metrics(*scored["short_text"]) if "short_text" in scored else {"n": 0},
    }


def invariance(loaded: artifact.Artifact, texts: Sequence[str], batch_size: int = 64, seed: int = 0) -> float:
    """Max |p(text alone) - p(text in a batch)| over `texts`, in length-sorted batches (the serving path) and in
    shuffled batches of `batch_size` (heavy padding: the other route), for the artifact's precision."""
    predictor = Predictor.from_artifact(loaded, max_batch_size=batch_size, max_batch_tokens=batch_size * loaded.manifest.max_length)
    ids = [e.ids for e in predictor.encode(texts)]
    alone = torch.tensor([predictor.predict_batch([row])[0] for row in ids])
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    shuffled = torch.zeros(len(ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        shuffled[rows] = torch.tensor(predictor.predict_batch([ids[i] for i in rows]))
    sorted_batches = torch.tensor(predictor.predict_ids(ids))
    return max(float((sorted_batches - alone).abs().max()), float((shuffled - alone).abs().max()))


def precision_contract(fp32: Scored, bf16: Scored, invariances: dict[str, float]) -> dict[str, object]:
    """bf16 against fp32 on every set: accuracies, label agreement, max |Δp|; invariances; and which bounds hold."""
    sets: dict[str, dict[str, float]] = {}
    for name, (p32, y) in fp32.items():
        p16 = bf16[name][0]
        acc32, acc16 = float(((p32 >= 0.5).float() == y).float().mean()), float(((p16 >= 0.5).float() == y).float().mean())
        sets[name] = {
            "accuracy_fp32": acc32,
            "accuracy_bf16": acc16,
            "accuracy_change_pt": round(100 * (acc16 - acc32), 3),
            "label_agreement": float(((p32 >= 0.5) == (p16 >= 0.5)).float().mean()),
            "max_abs_dp": float((p32 - p16).abs().max()),
            "n": len(y),
        }
    if "cad_dev_original" in fp32:
        pairs32, pairs16 = float(both_right(fp32).float().mean()), float(both_right(bf16).float().mean())
        sets["cad_dev_pairs"] = {"both_right_fp32": pairs32, "both_right_bf16": pairs16, "change_pt": round(100 * (pairs16 - pairs32), 3)}
    changes = [abs(v.get("accuracy_change_pt", v.get("change_pt", 0.0))) for v in sets.values()]
    holds = {
        "accuracy_within_0.1pt_on_every_set": max(changes) <= 100 * MAX_ACCURACY_CHANGE + 1e-9,
        **{f"{name}_invariance_within_{bound:.0e}": invariances[name] <= bound for name, bound in MAX_INVARIANCE.items()},
    }
    if "imdb_test" in sets:
        holds["imdb_test_label_agreement_at_least_99.8pct"] = sets["imdb_test"]["label_agreement"] >= MIN_LABEL_AGREEMENT
    return {"sets": sets, "max_abs_dp": max(v.get("max_abs_dp", 0.0) for v in sets.values()), "invariance": invariances, "holds": holds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="aclImdb tarball or folder (default: the usual places)")
    parser.add_argument("--cad-dir", type=Path, default=None, help="folder with CAD's dev_paired.tsv (default: the usual places)")
    parser.add_argument("--limit", type=int, default=None, help="reviews per class (quick checks)")
    parser.add_argument("--no-test", action="store_true", help="skip the 25k IMDb test reviews (robustness sets only)")
    routes = "fp32: the exact route only; bf16 (auto: where the CPU has it): also the bf16 route and its contract against fp32"
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32", help=routes)
    parser.add_argument("--invariance-texts", type=int, default=512, help="test reviews for the padding/batch-mate check (bf16)")
    parser.add_argument("--behaviour-only", action="store_true", help="only the behavioural suite (seconds; needs no data)")
    parser.add_argument(
        "--against", type=Path, default=None, help="another model file: which CAD dev and short texts each gets right alone"
    )
    args = parser.parse_args(argv)
    try:
        loaded = artifact.load(args.model)
        if args.behaviour_only:
            rates = behaviour.pass_rates(lambda texts: predict_texts(loaded, texts))
            print(json.dumps({"model": f"{loaded.manifest.name} {loaded.manifest.version}", "behaviour": rates}, indent=2))
            return 0
        compare = resolve_precision(args.precision, torch.device("cpu")) == "bf16"
        loaded_bf16 = artifact.place(loaded, "cpu", "bf16") if compare else None
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
    short = short_texts.build((r.text, r.label) for r in dataset.validation)
    scored: dict[str, Scored] = {}
    for route in (loaded, loaded_bf16) if loaded_bf16 is not None else (loaded,):
        sets: Scored = {}
        if not args.no_test:
            sets["imdb_test"] = (predict_texts(route, [r.text for r in dataset.test]), torch.tensor([float(r.label) for r in dataset.test]))
        sets.update(robustness_probs(lambda texts, route=route: predict_texts(route, texts), cad_dev, short))
        scored[route.precision] = sets
    fp32 = scored["fp32"]
    result.update({name: metrics(*fp32[name]) for name in fp32})
    result["cad_dev_pairs"] = {"both_right": float(both_right(fp32).float().mean()), "n": len(cad_dev)}
    result.setdefault("short_text", {"n": 0})
    result["behaviour"] = behaviour.pass_rates(lambda texts: predict_texts(loaded, texts))
    if args.against is not None:
        other = artifact.load(args.against)
        theirs = robustness_probs(lambda texts: predict_texts(other, texts), cad_dev, short)
        ours = {k: v for k, v in fp32.items() if k in theirs}
        result["against"] = {
            "model": f"{other.manifest.name} {other.manifest.version}",
            **flips(ours, theirs, robustness_texts(cad_dev, short)),
        }
    ok = True
    if loaded_bf16 is not None:
        sample = [r.text for r in (dataset.test or dataset.validation)[: args.invariance_texts]]
        invariances = {route.precision: invariance(route, sample) for route in (loaded, loaded_bf16)}
        contract = precision_contract(fp32, scored["bf16"], invariances)
        contract["metrics"] = {name: metrics(*scored["bf16"][name]) for name in scored["bf16"]}
        result["bf16"] = contract
        ok = all(contract["holds"].values())
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
