"""Text normalization and tokenization, shared by training and serving.

Tokens are found in the *original* string (HTML tags and entities are skipped,
not deleted) so that every token keeps its character span; explanations point
at exactly the characters the user sent. Any change to what a text becomes
must bump NORMALIZER_VERSION: artifacts record it and loaders refuse versions
they do not know.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

NORMALIZER_VERSION = "1"
KNOWN_NORMALIZER_VERSIONS = frozenset({NORMALIZER_VERSION})

# One pass, three alternatives: an HTML tag (`<br />`), an HTML entity (`&amp;`),
# or a token. Tags and entities are matched so they are skipped, never tokens.
# A token is a run of letters/digits with inner apostrophes kept ("don't",
# "isn't": negations matter for sentiment), or a lone "!" / "?" (emphasis).
_PATTERN = re.compile(
    r"(?P<tag></?[a-zA-Z][^<>]{0,200}>)"
    r"|(?P<entity>&#?\w{1,10};)"
    r"|(?P<token>[^\W_]+(?:['\u2019\u02bc][^\W_]+)*|[!?])"
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})


@dataclass(frozen=True, slots=True)
class Token:
    """A normalized token and the [start, end) span it came from in the original text."""

    text: str
    start: int
    end: int


def normalize_token(raw: str) -> str:
    """Fold width/compatibility forms, case and apostrophe variants so 'Don’t' == "don't"."""
    if raw.isascii():  # the common case, ~10x faster; NFKC and casefold are identities beyond lower()
        return raw.lower()
    return unicodedata.normalize("NFKC", raw).translate(_APOSTROPHES).casefold()


def tokenize_with_spans(text: str) -> list[Token]:
    """Tokens of `text` with their character spans in `text` itself."""
    return [Token(normalize_token(m.group("token")), m.start(), m.end()) for m in _PATTERN.finditer(text) if m.lastgroup == "token"]


def tokenize(text: str) -> list[str]:
    """Normalized tokens of `text` (the hot path: no span objects).

    ASCII texts (91 % of IMDb reviews) are lowered once before matching: for
    ASCII, lower() keeps every character's class and position, so the tokens
    are those normalize_token gives one by one, at 0.25 instead of 0.40 ms
    per review (no call per token).
    """
    if text.isascii():
        return [token for _tag, _entity, token in _PATTERN.findall(text.lower()) if token]
    return [normalize_token(m.group("token")) for m in _PATTERN.finditer(text) if m.lastgroup == "token"]
