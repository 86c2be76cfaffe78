"""The manifest: what a model file says about itself, stored inside it as manifest.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    labels: tuple[str, str]  # (label of p < 0.5, label of p >= 0.5); forward() returns P(labels[1])
    vocab_size: int
    max_length: int  # tokens kept per text (head + tail)
    head_length: int  # of which from the start
    normalizer_version: str
    weights_sha256: str = ""  # over the state tensors; checked at load so a damaged model never serves
    vocab_sha256: str = ""
    data_sha256: str = ""  # of the training data file, for provenance
    created_at: str = ""
    git_commit: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # config, hardware, duration
    holdout: dict[str, Any] = field(default_factory=dict)  # robustness holdout left out of training: sha256, listed, reviews_dropped
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown manifest fields {sorted(unknown)}")
        raw["labels"] = tuple(raw["labels"])
        return cls(**raw)
