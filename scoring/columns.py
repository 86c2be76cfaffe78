"""The columns scoring adds to each row (contract.scored's record + error), and which values get an error instead.

Shared by the local and the Ray engine so both give the same values; a text
gets an error where the service would answer 422 (contract.scored's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contract import scored
from contract.vocab import Encoded, TextEncoder


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # the row has no such column (JSONL rows may each have their own keys)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The reader could not make a row of this line (e.g. invalid JSON); `reason` becomes the row's error."""

    reason: str


@dataclass(frozen=True)
class TextColumn:
    """Where a row's text is, and the longest text scored (longer: the row's error, as the service's 422)."""

    name: str = "text"
    max_chars: int = scored.DEFAULT_MAX_TEXT_CHARS


def value_error(value: object, max_chars: int) -> str | None:
    """Why `value` cannot be scored, or None."""
    if isinstance(value, Unreadable):
        return value.reason
    if value is MISSING:
        return "missing column"
    if value is None:
        return "missing text"
    if not isinstance(value, str):
        return f"text is not a string ({type(value).__name__})"
    return scored.text_error(value, max_chars)


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


def prepare(encoder: TextEncoder, values: Sequence[object], max_chars: int) -> Prepared:
    errors = [value_error(v, max_chars) for v in values]
    return Prepared(errors, [encoder.encode(v) for v, e in zip(values, errors, strict=True) if e is None])  # type: ignore[arg-type]


def columns(prepared: Prepared, probs: Sequence[float], labels: tuple[str, str]) -> dict[str, list[Any]]:
    """scored.COLUMNS for a chunk: `probs` are P(positive) of its valid rows, in row order; bad rows get None and their error."""
    out: dict[str, list[Any]] = {name: [] for name in scored.COLUMNS}
    valid = iter(zip(prepared.encoded, probs, strict=True))
    for error in prepared.errors:
        if error is None:
            encoded, p = next(valid)
            row = scored.scored_row(scored.Scored.of(p, labels, encoded.n_tokens, encoded.truncated))
        else:
            row = scored.error_row(error)
        for name, value in row.items():
            out[name].append(value)
    return out
