"""Text -> model ids with the artifact's own vocabulary and truncation: the one path both sides take."""

from __future__ import annotations

from dataclasses import dataclass

from contract.text import Token, tokenize, tokenize_with_spans
from contract.vocab import Encoded, Vocab


@dataclass(frozen=True, slots=True)
class TextEncoder:
    """Binds a vocabulary to the truncation the model was trained with."""

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
