"""The columns scoring adds to each row, and which text values get an error instead of a prediction.

Shared by the local and the Ray engine so both give the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contract.encoder import TextEncoder
from contract.predictor import label_and_score
from contract.vocab import Encoded

OUTPUT_COLUMNS = ("label", "score", "p_positive", "n_tokens", "truncated", "error")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # the row has no such column (JSONL rows may each have their own keys)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The reader could not make a row of this line (e.g. invalid JSON); `reason` becomes the row's error."""

    reason: str


def text_error(value: object) -> str | None:
    """Why `value` cannot be scored, or None. The service answers 422 for the same texts."""
    if isinstance(value, Unreadable):
        return value.reason
    if value is MISSING:
        return "missing column"
    if value is None:
        return "missing text"
    if not isinstance(value, str):
        return f"text is not a string ({type(value).__name__})"
    if not value.strip():
        return "empty text"
    return None


@dataclass
class Prepared:
    """A chunk's text values, encoded where valid."""

    errors: list[str | None]  # one per row
    encoded: list[Encoded]  # one per valid row, in row order

    @property
    def ids(self) -> list[list[int]]:
        return [e.ids for e in self.encoded]

    @property
    def n_errors(self) -> int:
        return sum(e is not None for e in self.errors)


def prepare(encoder: TextEncoder, values: Sequence[object]) -> Prepared:
    errors = [text_error(v) for v in values]
    return Prepared(errors, [encoder.encode(v) for v, e in zip(values, errors, strict=True) if e is None])  # type: ignore[arg-type]


def columns(prepared: Prepared, probs: Sequence[float], labels: tuple[str, str]) -> dict[str, list[Any]]:
    """The OUTPUT_COLUMNS for a chunk: `probs` are P(positive) of its valid rows, in row order; bad rows get None and their error."""
    out: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS}
    valid = iter(zip(prepared.encoded, probs, strict=True))
    for error in prepared.errors:
        if error is not None:
            for name in OUTPUT_COLUMNS:
                out[name].append(error if name == "error" else None)
            continue
        encoded, p = next(valid)
        label, score = label_and_score(p, labels)
        out["label"].append(label)
        out["score"].append(score)
        out["p_positive"].append(p)
        out["n_tokens"].append(encoded.n_tokens)
        out["truncated"].append(encoded.truncated)
        out["error"].append(None)
    return out
