"""The scored record: what every consumer answers for one text, its fields with their types, and which texts get one.

Declared once here; the HTTP schema (app/schemas.py's PredictionOut), the
service's predictions and the bulk-scoring columns (CSV / JSONL / Parquet,
local and Ray) derive from it, so a field added or retyped here shows up
everywhere or fails a test. pyarrow stays optional: the service loads this
module without it, so the Arrow schema is built on demand (`arrow_fields`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Self

DEFAULT_MAX_TEXT_CHARS = 100_000  # the service's SENTIMENT_MAX_TEXT_CHARS and sentiment-score's --max-text-chars
BLANK = "text must not be empty or whitespace only"
# The JSON Schema words for `blank_error`: a character outside Python's whitespace (str.isspace, what strip()
# removes). Spelled out because regex engines' `\s` differ (ECMA's includes U+FEFF, Python's not U+001C).
NOT_BLANK_PATTERN = "[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _field(arrow: str, description: str) -> Any:
    """A record field with its Arrow type (a pyarrow factory's name, so pyarrow is not imported here) and its docs."""
    return dataclasses.field(metadata={"arrow": arrow, "description": description})


def label_and_score(p_positive: float, labels: tuple[str, str]) -> tuple[str, float]:
    """(label, probability of that label) for P(positive); labels = (label of p < 0.5, label of p >= 0.5)."""
    return (labels[1], p_positive) if p_positive >= 0.5 else (labels[0], 1.0 - p_positive)


@dataclass(frozen=True, slots=True)
class Scored:
    """One text's prediction. The service adds an explanation; a bulk row adds `ERROR` (None when scored)."""

    label: str = _field("string", "`positive` or `negative`.")
    score: float = _field("float64", "Calibrated probability of `label`.")
    p_positive: float = _field("float64", "Calibrated probability of `positive`.")
    n_tokens: int = _field("int64", "Tokens in the text before truncation.")
    truncated: bool = _field("bool_", "True when the text was longer than the model reads (head + tail kept).")

    @classmethod
    def of(cls, p_positive: float, labels: tuple[str, str], n_tokens: int, truncated: bool, **extra: Any) -> Self:
        """The record for P(positive); `extra` fills a subclass's own fields (the service's explanation)."""
        label, score = label_and_score(p_positive, labels)
        return cls(label, score, p_positive, n_tokens, truncated, **extra)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in FIELDS order (JSON bodies, bulk rows)."""
        return {name: getattr(self, name) for name in NAMES}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    python_type: type
    arrow_type: str  # the pyarrow factory: getattr(pyarrow, arrow_type)()
    description: str


def _specs() -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(Scored)
    return tuple(FieldSpec(f.name, hints[f.name], f.metadata["arrow"], f.metadata["description"]) for f in dataclasses.fields(Scored))


FIELDS = _specs()  # the record's fields, in order
NAMES = tuple(f.name for f in FIELDS)
ERROR = FieldSpec("error", str, "string", "Why the row has no prediction (its other fields are null); null when scored.")
ROW_FIELDS = (*FIELDS, ERROR)  # what bulk scoring adds to each row; every one may be null
COLUMNS = tuple(f.name for f in ROW_FIELDS)


def error_row(error: str) -> dict[str, Any]:
    """The bulk columns of a row that cannot be scored: no prediction, and why."""
    return {**dict.fromkeys(NAMES), ERROR.name: error}


def scored_row(scored: Scored) -> dict[str, Any]:
    return {**scored.as_dict(), ERROR.name: None}


def arrow_fields() -> list[Any]:
    """ROW_FIELDS as pyarrow fields (nullable). Imports pyarrow, so only bulk scoring calls this."""
    import pyarrow

    return [pyarrow.field(f.name, getattr(pyarrow, f.arrow_type)()) for f in ROW_FIELDS]


# ---------------------------------------------------------------- which texts get a record


def blank_error(text: str) -> str | None:
    """The one blank-text rule: nothing but whitespace (the service: 422; bulk: the row's error)."""
    return BLANK if not text.strip() else None


def length_error(text: str, max_chars: int) -> str | None:
    """The length rule: at most `max_chars` characters (the service's setting, sentiment-score's flag; same default)."""
    return f"{len(text)} characters, at most {max_chars} per text" if len(text) > max_chars else None


def text_error(text: str, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> str | None:
    """Why `text` gets no record, or None: blank, then too long."""
    return blank_error(text) or length_error(text, max_chars)
