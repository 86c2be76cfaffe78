"""A behavioural test suite (CheckList, Ribeiro et al. 2020): pass rates per capability, on a validation and a test half.

Why: IMDb accuracy says nothing about the one-liners users type ("Not bad.") and document labels cannot teach
negation scope, so a model can score 92 % on reviews and read every negated negative backwards. Each capability
(`training/behaviour_suite.py`) has templates, filled from word lists, and hand-written sentences.

The split is by *template* and by *sentence*, not by filled example: within each capability the templates (and,
separately, the sentences) are ordered by the sha256 of their text and dealt alternately to the halves. So a test
template's wording is never seen when choosing, the split does not depend on file order, and adding an item moves
no other. Choose on `validation`, report `test`.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from training.behaviour_suite import SUITE, WORDS

HALVES = ("validation", "test")
PER_TEMPLATE = 24  # filled examples drawn per template: enough for a stable rate, few enough that no template dominates
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Case:
    text: str
    label: int  # 1 positive
    capability: str
    half: str  # "validation" or "test"
    source: str  # the template it was filled from, or "sentence"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def halves(items: Sequence[str]) -> dict[str, str]:
    """item -> half: ordered by sha256, dealt alternately (validation first), so the halves differ in size by at most 1."""
    ordered = sorted(set(items), key=_digest)
    return {item: HALVES[i % 2] for i, item in enumerate(ordered)}


def fill(template: str, limit: int = PER_TEMPLATE) -> list[str]:
    """Up to `limit` texts from `template`'s slots, a sample seeded by the template (the same on every machine)."""
    slots = _SLOT.findall(template)
    combos = list(itertools.product(*(WORDS[s] for s in slots)))
    rng = random.Random(_digest(template))
    chosen = combos if len(combos) <= limit else rng.sample(combos, limit)
    texts = []
    for combo in chosen:
        text = _SLOT.sub("{}", template).format(*combo)  # slots are filled in order
        texts.append(text[0].upper() + text[1:])
    return texts


def cases() -> list[Case]:
    """Every case of the suite, each tagged with its capability and half.

    A text met twice (a sentence that a template also fills: "Not good.") is kept once, where it came first, so no
    text sits in both halves.
    """
    out, seen = [], set()
    for capability, (_, templates, sentences) in SUITE.items():
        template_half = halves([t for t, _ in templates])
        sentence_half = halves([s for s, _ in sentences])
        for template, label in templates:
            out += [Case(text, label, capability, template_half[template], template) for text in fill(template)]
        out += [Case(text, label, capability, sentence_half[text], "sentence") for text, label in sentences]
    return [c for c in out if not (c.text in seen or seen.add(c.text))]


def pass_rates(predict: Callable[[Sequence[str]], torch.Tensor], suite: Sequence[Case] | None = None) -> dict[str, dict[str, float]]:
    """half -> capability -> share of cases on the expected side of 0.5 (and "overall": the capabilities' mean).

    `predict` maps texts to P(positive) FloatTensor[N].
    """
    suite = cases() if suite is None else suite
    probs = predict([c.text for c in suite])  # [N]
    right = [(p >= 0.5) == bool(c.label) for p, c in zip(probs.tolist(), suite, strict=True)]
    out: dict[str, dict[str, float]] = {}
    for half in HALVES:
        rates = {}
        for capability in SUITE:
            hits = [r for r, c in zip(right, suite, strict=True) if c.half == half and c.capability == capability]
            rates[capability] = sum(hits) / len(hits)
        rates["overall"] = sum(rates.values()) / len(rates)
        out[half] = rates
    return out


def failures(predict: Callable[[Sequence[str]], torch.Tensor], half: str = "validation") -> list[tuple[Case, float]]:
    """The cases of `half` on the wrong side, with P(positive): what to read when a rate is low."""
    suite = [c for c in cases() if c.half == half]
    probs = predict([c.text for c in suite]).tolist()
    return [(c, p) for c, p in zip(suite, probs, strict=True) if (p >= 0.5) != bool(c.label)]
