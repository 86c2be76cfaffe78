"""Vocabulary: token <-> id, head+tail truncation, and the encoder that binds them to the text rules.

Id 0 is padding and id 1 is the unknown token in every vocabulary, so models
can rely on `padding_idx=0` and the serving side never has to ask.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from contract.text import Token, tokenize, tokenize_with_spans

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1


@dataclass(frozen=True, slots=True)
class Encoded:
    """One text as model input. `ids` is never empty: a text with no tokens becomes [UNK]."""

    ids: list[int]
    n_tokens: int  # tokens before truncation (0 for a text with no tokens)
    n_unknown: int  # ids that are UNK among the kept ones (out-of-vocabulary rate)
    kept: list[int]  # positions (in the full token list) of the kept tokens, for spans

    @property
    def truncated(self) -> bool:
        return self.n_tokens > len(self.ids)


def head_tail(n: int, max_length: int, head_length: int) -> list[int]:
    """Positions kept from a sequence of n tokens: the first `head_length` and the last rest.

    Reviews state their verdict at the start and, more often, at the end
    (Sun et al. 2019 found head+tail best for long-text classification).
    """
    if n <= max_length:
        return list(range(n))
    tail = max_length - head_length
    return list(range(head_length)) + list(range(n - tail, n))


class Vocab:
    """An immutable token list; `tokens[i]` has id i."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if len(tokens) < 2 or tokens[PAD_ID] != PAD or tokens[UNK_ID] != UNK:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self._index: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise ValueError("a vocabulary must not repeat tokens")

    @classmethod
    def build(cls, texts_tokens: Iterable[Iterable[str]], max_size: int, min_freq: int = 2) -> Vocab:
        """The `max_size` most frequent tokens seen at least `min_freq` times (ties by token, for determinism)."""
        counts: Counter[str] = Counter()
        for tokens in texts_tokens:
            counts.update(tokens)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *ranked[: max_size - 2]])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def encode(self, tokens: Sequence[str], max_length: int, head_length: int) -> Encoded:
        kept = head_tail(len(tokens), max_length, head_length)
        ids = [self._index.get(tokens[i], UNK_ID) for i in kept]
        if not ids:
            return Encoded([UNK_ID], 0, 1, [])
        return Encoded(ids, len(tokens), ids.count(UNK_ID), kept)

    def to_text(self) -> str:
        return "\n".join(self.tokens) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(text.rstrip("\n").split("\n"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_text().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TextEncoder:
    """Text -> model ids with the artifact's own vocabulary and truncation: the one path both sides take."""

    vocab: Vocab
    max_length: int
    head_length: int

    def encode(self, text: str) -> Encoded:
        return self.vocab.encode(tokenize(text), self.max_length, self.head_length)

    def encode_with_spans(self, text: str) -> tuple[Encoded, list[Token]]:
        """Like `encode`, plus the kept tokens (aligned with `ids`) with their spans in `text`."""
        tokens = tokenize_with_spans(text)
        encoded = self.vocab.encode([t.text for t in tokens], self.max_length, self.head_length)
        return encoded, [tokens[i] for i in encoded.kept]
