"""A short-text evaluation set built from validation reviews: what users send that IMDb test lacks.

Users send one-liners and product comments; IMDb reviews average ~230 words. From each
validation review (never train, never test) take its first and its last sentence, keep
those of 4-30 words that carry a clear polar word (either sign: "not great" is kept, it
is the hard case), and give each the review's label. The labels are noisy — a first
sentence may set up what the review then refutes. Measured by hand on a seeded sample of
60 (seed 1, default split): 49 read as their label, 5 carry no sentiment on their own
(a polar word in a neutral phrase: "love interest", "best known"), 3 are mixed and 3 read
as the opposite. So a reader who sees only the sentence scores ~82-89 % (the neutral and mixed
ones at chance): the set ranks models on short inputs rather than grading them absolutely.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from contract.text import tokenize

# Words whose polarity rarely depends on context in film reviews (hand-picked, not learned from any split).
POLAR = frozenset(
    [
        "great",
        "excellent",
        "wonderful",
        "superb",
        "brilliant",
        "amazing",
        "outstanding",
        "masterpiece",
        "loved",
        "love",
        "enjoyed",
        "enjoyable",
        "beautiful",
        "fantastic",
        "terrific",
        "perfect",
        "best",
        "favorite",
        "favourite",
        "recommend",
        "recommended",
        "delightful",
        "moving",
        "touching",
        "fun",
        "funny",
        "awful",
        "terrible",
        "horrible",
        "worst",
        "boring",
        "bad",
        "poor",
        "waste",
        "wasted",
        "dull",
        "stupid",
        "lame",
        "pathetic",
        "disappointing",
        "disappointed",
        "disappointment",
        "mediocre",
        "unwatchable",
        "annoying",
        "garbage",
        "crap",
        "pointless",
        "dreadful",
    ]
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|<br\s*/?>\s*(?:<br\s*/?>\s*)*", re.IGNORECASE)
MIN_WORDS, MAX_WORDS = 4, 30


@dataclass(frozen=True, slots=True)
class ShortText:
    text: str
    label: int  # the review's label, 1 positive
    where: str  # "first" or "last" sentence of its review


def sentences(review: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(review) if s and s.strip()]


def build(reviews: Iterable[tuple[str, int]], limit: int | None = 2000, seed: int = 0) -> list[ShortText]:
    """(text, label) reviews -> up to `limit` short texts, a seeded sample balanced by label."""
    by_label: dict[int, list[ShortText]] = {0: [], 1: []}
    for text, label in reviews:
        parts = sentences(text)
        for where, sentence in (("first", parts[0]), ("last", parts[-1])) if parts else ():
            if where == "last" and len(parts) == 1:
                break
            words = tokenize(sentence)
            if MIN_WORDS <= len(words) <= MAX_WORDS and POLAR.intersection(words):
                by_label[label].append(ShortText(sentence, label, where))
    rng = random.Random(seed)
    per_label = min(len(by_label[0]), len(by_label[1]), (limit or 10**9) // 2)
    chosen = rng.sample(by_label[0], per_label) + rng.sample(by_label[1], per_label)
    rng.shuffle(chosen)
    return chosen
