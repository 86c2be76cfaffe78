"""Counterfactually-augmented IMDb (Kaushik et al. 2020): reviews minimally edited to flip their label.

Rows come in pairs sharing a batch_id: the original, then its revision. Only the train
split trains; dev measures robustness; the test split is never read by this project.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from training.data import DataError

SEARCH = (Path("data/cad"),)  # contributors on the project's machines pass --cad-dir ../shared/data/cad (docs/contributing.md)
_LABELS = {"Positive": 1, "Negative": 0}


SOURCE = "https://github.com/acmi-lab/counterfactually-augmented-data (sentiment/combined/paired/)"


class CadError(DataError):
    """The CAD file is missing or malformed; the message says which and where (a DataError: one line, exit 2)."""


@dataclass(frozen=True, slots=True)
class Pair:
    original: str
    original_label: int  # 1 positive, 0 negative
    revised: str  # the same review, edited so that its label is 1 - original_label
    batch_id: str


def read(path: Path) -> list[Pair]:
    """Pairs of a `*_paired.tsv` file, in file order."""
    if not path.is_file():
        raise CadError(
            f"CAD file not found at {path}; pass --cad-dir to the folder with train_paired.tsv and dev_paired.tsv "
            f"(from {SOURCE}), or --no-cad to train without them"
        )
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or not {"Sentiment", "Text", "batch_id"} <= set(rows[0]):
        raise CadError(f"{path} is not a CAD paired file (header Sentiment, Text, batch_id)")
    if len(rows) % 2:
        raise CadError(f"{path} has {len(rows)} rows; pairs need an even number")
    pairs = []
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        labels = (_LABELS.get(first["Sentiment"]), _LABELS.get(second["Sentiment"]))
        if first["batch_id"] != second["batch_id"] or None in labels or labels[0] == labels[1]:
            raise CadError(f"{path}: rows of batch_id {first['batch_id']} are not an (original, flipped revision) pair")
        pairs.append(Pair(first["Text"], labels[0], second["Text"], first["batch_id"]))
    return pairs


def find(given: Path | None, required: bool = True) -> Path | None:
    """The CAD folder: `given`, else the first of SEARCH that holds dev_paired.tsv; None if absent and not `required`."""
    if given is not None:
        return given
    for candidate in SEARCH:
        if (candidate / "dev_paired.tsv").is_file():
            return candidate
    if not required:
        return None
    raise CadError(
        f"no CAD folder found in {', '.join(map(str, SEARCH))}; pass --cad-dir PATH to the folder with train_paired.tsv and "
        f"dev_paired.tsv (from {SOURCE}), or --no-cad to train without them"
    )
