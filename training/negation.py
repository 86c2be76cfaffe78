"""Negation scope, and a sentence teacher that reads it: the local supervision document labels cannot give.

Why: in IMDb train "not bad" is in more negative reviews than positive ones (a review that says "not bad" is often
lukewarm), so a model fitted to document labels learns "not bad" as a negative phrase, and any teacher fitted the
same way inherits it. Scope marking (Das & Chen 2001, Pang et al. 2002) puts the structure in by hand instead: after
a negation cue, up to the end of the clause, a word counts with its sign flipped.

`ScopeLexicon` is that teacher. Each word's polarity is its log ratio of document frequencies in positive vs negative
train reviews, counted only where the word is *outside* any negation scope (so "bad" in "not bad" does not dilute
"bad"). A sentence's score is the sum of its words' polarities, flipped inside a scope (except a few idioms, KEEPS_SIGN:
"don't waste your time"), with clauses before a "but"
(and clauses opened by "although") at half weight; one logistic scale, fitted on train sentences with their
review's label (modelling that label's noise), turns the score into a logit. It is a weak reader of reviews but a consistent reader of
negation, which is what it is used for: labelling single sentences (`distill_sentences`) and checking generated
counterfactuals (`training/counterfactuals.py`).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.text import tokenize

CUES = frozenset({"not", "no", "never", "nothing", "none", "nobody", "nowhere", "neither", "nor", "cannot", "without", "hardly", "barely"})
CONTRAST = frozenset({"but", "however", "yet"})  # what follows outweighs what came before
CONCESSIVE = frozenset({"although", "though", "whereas", "despite"})  # the clause they open is outweighed
# An embedded wh-clause is out of a negation's reach: "I can't believe how bad it was" is bad, not "not bad".
SCOPE_ENDS = frozenset({"how", "what", "why", "who", "whom", "whose", "when", "where", "which", "whether"})
ADDITIVE = frozenset({"only", "just", "merely", "simply"})  # "not only good but ..." adds, it does not negate
# Words a negation does not flip: idioms whose negated form reviews use on the word's own side ("don't waste your
# time", "nothing could save it", "there is no excuse", "it couldn't be worse", "I want those minutes back"). Each is
# on its own side inside a scope in train reviews too (in-scope log ratios -1.5 to -2.6). A rule from those counts
# alone would also keep "worst", "perfect" or "terrible", whose negations reviews use on the word's side ("not the
# worst of the series, but ...") while a sentence alone reads them flipped, so the list is written by hand.
KEEPS_SIGN = frozenset({"waste", "wasted", "wasting", "save", "excuse", "worse", "money", "minutes", "hours"})
POLAR_MIN_SHARE = 0.009  # of the reviews a word an edit or selection hinges on is in (200 of IMDb's 22k): a word of judgement, not a name
SENTENCE_LABEL_NOISE = 0.18  # share of review sentences that do not read as their review's label (short_texts.py's hand check)
CONFIDENT = 0.7  # a distilled sentence's teacher P is beyond this or below 1 - it: teach where the teacher is sure
TARGET_CAP = 0.9  # and its target is clipped to [1 - cap, cap]: sums over a long sentence overstate a teacher ~75 % right
SCOPE_MAX = 5  # tokens a negation reaches at most: reviews run clauses together without the commas that would end it
BEFORE_CONTRAST = 0.5  # weight of a clause outweighed by a later or surrounding one
# Clause ends: punctuation the tokenizer drops, so scopes are cut on the raw text, before tokenizing.
_CLAUSE = re.compile(r"[.,;:!?()\[\]\"]+|<br\s*/?>|\s[-\u2013\u2014]+\s")


def is_cue(token: str) -> bool:
    return token in CUES or token.endswith("n't")


def clauses(text: str) -> list[list[str]]:
    """Tokens of `text` per clause: cut at punctuation and before a contrast or concessive word."""
    out: list[list[str]] = []
    for piece in _CLAUSE.split(text):
        tokens = tokenize(piece)
        starts = [0, *(i for i, t in enumerate(tokens) if i and (t in CONTRAST or t in CONCESSIVE))]
        out += [tokens[a:b] for a, b in zip(starts, [*starts[1:], len(tokens)], strict=True) if b > a]
    return out


def scope(clause: Sequence[str]) -> list[bool]:
    """Per token: inside a negation's scope (the SCOPE_MAX tokens after a cue, within the clause, up to a wh-word). A
    second cue extends it; a cue before "only" / "just" opens none."""
    left, out = 0, []
    for i, token in enumerate(clause):
        cue = is_cue(token) and not (i + 1 < len(clause) and clause[i + 1] in ADDITIVE)
        left = 0 if token in SCOPE_ENDS else left
        out.append(left > 0 and not is_cue(token))
        left = SCOPE_MAX if cue else left - 1
    return out


def mark(text: str) -> list[str]:
    """`text`'s tokens with those in a negation's scope written NOT_x (Pang et al. 2002)."""
    return [f"NOT_{t}" if s else t for clause in clauses(text) for t, s in zip(clause, scope(clause), strict=True)]


def weights(parts: Sequence[Sequence[str]]) -> list[float]:
    """Per clause: 1, or BEFORE_CONTRAST for a clause that a later "but" or its own "although" outweighs."""
    out = [1.0] * len(parts)
    for i, clause in enumerate(parts):
        if clause and clause[0] in CONTRAST:
            out[:i] = [BEFORE_CONTRAST] * i
        if clause and clause[0] in CONCESSIVE:
            out[i] = BEFORE_CONTRAST
    return out


@dataclass
class ScopeLexicon:
    """Word polarities counted outside negation scopes; a sentence's logit flips the words inside one."""

    polarity: dict[str, float]  # log ratio of document frequencies, positive vs negative reviews
    docs: dict[str, int]  # reviews holding the word outside a scope
    reviews: int  # reviews the counts come from
    scale: float = 1.0  # score -> logit

    @staticmethod
    def sign(token: str, inside: bool) -> int:
        """-1 where a negation's scope flips `token`, else 1 (outside a scope, or a word in KEEPS_SIGN)."""
        return -1 if inside and token not in KEEPS_SIGN else 1

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], min_docs: int = 20, seed: int = 0) -> ScopeLexicon:
        """From labelled reviews (train split only): polarities, then the logit's scale on up to 100k of their sentences."""
        from scipy.optimize import minimize  # scikit-learn's own dependency, in the [train] extra

        from training.short_texts import sentences

        counts: dict[int, Counter[str]] = {0: Counter(), 1: Counter()}
        for text, label in zip(texts, labels, strict=True):
            seen = {t for c in clauses(text) for t, s in zip(c, scope(c), strict=True) if not s and not is_cue(t)}
            counts[label].update(seen)
        n = {k: sum(1 for y in labels if y == k) for k in (0, 1)}
        polarity, docs = {}, {}
        for word in counts[0].keys() | counts[1].keys():
            pos, neg = counts[1][word], counts[0][word]
            if pos + neg >= min_docs:
                polarity[word] = max(-3.0, min(3.0, math.log((pos + 1) / (n[1] + 1)) - math.log((neg + 1) / (n[0] + 1))))
                docs[word] = pos + neg
        lexicon = cls(polarity, docs, len(texts))
        # The scale is fitted on sentences holding a strongly polar word, each with its review's label. Those labels are
        # noisy (training/short_texts.py: ~18 % of polar first/last sentences do not read as their review), and noise
        # flattens a plain logistic fit to half the slope, so the fit models it: P(label) = rho + (1 - 2 rho) sigmoid(a x).
        # No bias: a sentence has no prior side (the fitted one only said that strong negative words are commoner).
        rng = random.Random(seed)
        pairs = [(s, y) for text, y in zip(texts, labels, strict=True) for s in sentences(text)]
        pairs = rng.sample(pairs, min(len(pairs), 30_000))
        parts = [(clauses(s), y) for s, y in pairs]
        parts = [(c, y) for c, y in parts if any(abs(polarity.get(t, 0.0)) >= 1.0 for clause in c for t in clause)]
        x, y = np.array([lexicon.score(c) for c, _ in parts]), np.array([y for _, y in parts])  # [S], [S]

        def nll(a: np.ndarray) -> float:
            p = SENTENCE_LABEL_NOISE + (1 - 2 * SENTENCE_LABEL_NOISE) / (1 + np.exp(-a[0] * x))
            return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

        lexicon.scale = float(minimize(nll, np.array([0.5])).x[0]) if len(parts) else 1.0
        return lexicon

    def score(self, parts: Sequence[Sequence[str]]) -> float:
        """Sum of polarities over clauses (as `clauses` gives them): flipped in a scope, weighted per clause."""
        total = 0.0
        for clause, weight in zip(parts, weights(parts), strict=True):
            for token, inside in zip(clause, scope(clause), strict=True):
                total += weight * self.sign(token, inside) * self.polarity.get(token, 0.0)
        return total

    def logit(self, parts: Sequence[Sequence[str]]) -> float:
        return self.scale * self.score(parts)

    def polar(self, token: str, threshold: float) -> bool:
        """A word of judgement: |polarity| >= threshold, in POLAR_MIN_SHARE of the reviews or more, letters only (no "10")."""
        common = self.docs.get(token, 0) >= POLAR_MIN_SHARE * self.reviews
        return abs(self.polarity.get(token, 0.0)) >= threshold and common and token.isalpha()


def labelled_sentences(texts: Sequence[str], lexicon: ScopeLexicon, count: int, seed: int) -> list[tuple[list[str], float]]:
    """Up to `count` single sentences of `texts` (unlabelled reviews) with the teacher's P(positive).

    Half hold a negation with a polar word in its scope, half a polar word and no negation, so the student sees the
    teacher flip where a cue governs a word and not elsewhere; only sentences the teacher reads with P beyond
    CONFIDENT are kept (it is weak on mild words like "good", and a target near 0.5 would unteach them). A sentence of 2-25 tokens is kept whole, or cut to one
    clause at random (half the time): the lengths users type.
    """
    from training.short_texts import sentences

    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    wanted = {True: count // 2, False: count - count // 2}
    out: list[tuple[list[str], float]] = []
    for index in order:
        if len(out) >= count:
            break
        for sentence in sentences(texts[index]):
            parts = clauses(sentence)
            if rng.random() < 0.5 and parts:
                parts = [rng.choice(parts)]
            tokens = [t for part in parts for t in part]
            if not 2 <= len(tokens) <= 25:
                continue
            negated = any(
                lexicon.sign(t, s) < 0 and lexicon.polar(t, 0.7) for part in parts for t, s in zip(part, scope(part), strict=True)
            )
            if wanted[negated] <= 0 or not any(lexicon.polar(t, 0.7) for t in tokens):
                continue
            p = 1 / (1 + math.exp(-lexicon.logit(parts)))
            if 1 - CONFIDENT < p < CONFIDENT:
                continue
            wanted[negated] -= 1
            out.append((tokens, min(max(p, 1 - TARGET_CAP), TARGET_CAP)))
    return out
