"""Automatically generated counterfactual pairs (Wang & Culotta, AAAI 2021): minimal edits that flip a sentence's label.

Why: CAD's 1,707 human-edited pairs taught the model minimal edits of whole reviews, but nothing teaches it the
one-liner forms users type ("Not bad.", "I didn't like it."). From single sentences of train and unlabelled reviews
(never validation or test, and the robustness holdout is already gone from the data), take a polar word (by the
scope teacher's polarities, `training/negation.py`) and make one of three edits:

- negate: put a negation in the word's scope ("the plot was clever" -> "the plot wasn't clever",
  "i loved it" -> "i didn't love it", "a great film" -> "not a great film");
- un-negate: take the negation out ("it is not funny" -> "it is funny", "it never works" -> "it works");
- antonym: swap the word for its opposite from a short hand-written table ("good" -> "bad").

A pair is kept only when the teacher reads the original clearly and reads the edit on the other side, so its
labels are the teacher's, not the review's. Half the time the sentence is cut to the clause that was edited, since
users type clauses. Pairs train as CAD's do (`loop.counterfactual_loss`: both members plus the pairwise term).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from training.negation import CONCESSIVE, CONTRAST, ScopeLexicon, clauses, is_cue, scope
from training.short_texts import sentences

POLAR_THRESHOLD = 0.7  # |log ratio| of a word the edit may target: ~2x as common in one class's reviews
CLEAR = 0.65  # the teacher's P must be beyond this (or below 1 - it) for the original; the edit's must cross 0.5
MAX_TOKENS = 25  # users' one-liners; longer sentences dilute the edit
LOOK_BACK = 4  # tokens between a copula / auxiliary and the word it negates ("was not a very good")
CONTRAST_CLAUSE = (3, 10)  # tokens per clause of a generated "A but B": each half reads as a one-liner of its own
CONTRAST_CLEAR = 0.8  # the teacher's P for each clause: beyond this, since a pair is only right if both halves are
CONNECTIVES = frozenset(
    ["and", "or", "so", "which", "who", "that", "because", "as", "while", "if", "when", "then", "also"]
)  # a clause opening with one leans on the previous

COPULAS = frozenset(
    [
        "is",
        "was",
        "are",
        "were",
        "be",
        "been",
        "am",
        "seems",
        "seemed",
        "looks",
        "looked",
        "feels",
        "felt",
        "sounds",
        "sounded",
        "remains",
        "remained",
        "becomes",
        "became",
        "it's",
        "that's",
        "he's",
        "she's",
        "they're",
        "you're",
        "i'm",
        "there's",
    ]
)
AUXILIARIES = frozenset(["will", "would", "could", "can", "should", "might", "must", "do", "does", "did", "has", "have", "had"])
CONTRACTED = {"is": "isn't", "was": "wasn't", "are": "aren't", "were": "weren't", "do": "don't", "does": "doesn't"}
CONTRACTED |= {"did": "didn't", "would": "wouldn't", "could": "couldn't", "can": "can't", "should": "shouldn't"}
CONTRACTED |= {"will": "won't", "has": "hasn't", "have": "haven't", "had": "hadn't"}
UNCONTRACTED = {v: k for k, v in CONTRACTED.items()} | {"cannot": "can", "ain't": "is"}
BASE_FORM = {"loved": "love", "liked": "like", "enjoyed": "enjoy", "hated": "hate", "disliked": "dislike"}
BASE_FORM |= {"recommended": "recommend", "admired": "admire", "appreciated": "appreciate", "deserved": "deserve"}
PRONOUNS = frozenset(["i", "we", "you", "they"])
_ANTONYM_PAIRS = (
    "good bad, great terrible, best worst, excellent awful, wonderful horrible, better worse, love hate, loved hated, "
    "like dislike, liked disliked, enjoyable tedious, interesting boring, beautiful ugly, brilliant dreadful, "
    "strong weak, fun dull, masterpiece disaster, superb awful, amazing awful, pleasant unpleasant, entertaining boring, "
    "clever stupid, smart dumb, impressive unimpressive, memorable forgettable, perfect flawed, well badly, "
    "funny unfunny, exciting dull, fascinating boring, recommended avoided, enjoyed hated, gripping tedious, "
    "believable unbelievable, convincing unconvincing, original derivative, fresh stale, worth worthless"
)
ANTONYMS: dict[str, str] = {}  # both ways; a word in several pairs keeps its first opposite
for _pair in _ANTONYM_PAIRS.split(", "):
    _a, _b = _pair.split()
    ANTONYMS.setdefault(_a, _b)
    ANTONYMS.setdefault(_b, _a)
KINDS = ("negate", "unnegate", "antonym")


@dataclass(frozen=True, slots=True)
class Counterfactual:
    original: list[str]  # tokens
    edited: list[str]
    label: int  # of the original; the edit's is 1 - label
    kind: str  # one of KINDS


def negate(clause: list[str], lexicon: ScopeLexicon, rng: random.Random) -> list[str] | None:
    """`clause` with a negation put in front of its first polar word outside any scope, or None if no form fits."""
    inside = scope(clause)
    for i, token in enumerate(clause):
        if inside[i] or is_cue(token) or not (lexicon.polar(token, POLAR_THRESHOLD) or token in BASE_FORM):
            continue
        if any(is_cue(t) for t in clause[:i]):
            return None  # a cue already governs the clause
        for j in range(i - 1, max(-1, i - 1 - LOOK_BACK), -1):
            if clause[j] in COPULAS or clause[j] in AUXILIARIES:
                if clause[j] in CONTRACTED and rng.random() < 0.5:
                    return [*clause[:j], CONTRACTED[clause[j]], *clause[j + 1 :]]
                return [*clause[: j + 1], rng.choice(("not", "not", "never")), *clause[j + 1 :]]
        if token in BASE_FORM and i > 0 and clause[i - 1] in PRONOUNS:  # "i loved it" -> "i didn't love it"
            return [*clause[:i], *rng.choice((["didn't"], ["did", "not"])), BASE_FORM[token], *clause[i + 1 :]]
        if i <= 1 and len(clause) <= 5:  # a fragment: "great fun" -> "not great fun", "a great film" -> "not a great film"
            return ["not", *clause]
        return None
    return None


def unnegate(clause: list[str], lexicon: ScopeLexicon) -> list[str] | None:
    """`clause` without the negation whose scope holds a polar word within 3 tokens, or None."""
    for k, token in enumerate(clause):
        if not is_cue(token) or not any(lexicon.polar(t, POLAR_THRESHOLD) for t in clause[k + 1 : k + 4]):
            continue
        if token in ("not", "never"):
            return [*clause[:k], *clause[k + 1 :]]
        if token in ("don't", "doesn't") and k > 0 and clause[k - 1] in PRONOUNS | {"it", "he", "she", "this", "that"}:
            return [*clause[:k], *clause[k + 1 :]] if token == "don't" else None
        if token in UNCONTRACTED:
            return [*clause[:k], UNCONTRACTED[token], *clause[k + 1 :]]
        return None
    return None


def antonym(clause: list[str], lexicon: ScopeLexicon) -> list[str] | None:
    """`clause` with its first polar word that has an opposite in ANTONYMS swapped for it, or None."""
    for i, token in enumerate(clause):
        if token in ANTONYMS and lexicon.polar(token, POLAR_THRESHOLD / 2):
            return [*clause[:i], ANTONYMS[token], *clause[i + 1 :]]
    return None


def generate(texts: Sequence[str], lexicon: ScopeLexicon, count: int, seed: int) -> list[Counterfactual]:
    """Up to `count` pairs, a third of each kind where the texts allow, from sentences of `texts` in a seeded order."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    quota = {kind: math.ceil(count / len(KINDS)) for kind in KINDS}
    out: list[Counterfactual] = []
    for index in order:
        if len(out) >= count:
            break
        for sentence in sentences(texts[index]):
            parts = clauses(sentence)
            if not parts or sum(map(len, parts)) > MAX_TOKENS:
                continue
            c = rng.randrange(len(parts))
            edits = {
                "negate": negate(parts[c], lexicon, rng) if quota["negate"] > 0 else None,
                "unnegate": unnegate(parts[c], lexicon) if quota["unnegate"] > 0 else None,
                "antonym": antonym(parts[c], lexicon) if quota["antonym"] > 0 else None,
            }
            open_kinds = [k for k in KINDS if edits[k] is not None]
            if not open_kinds:
                continue
            kind = max(open_kinds, key=lambda k: (quota[k], rng.random()))  # the kind furthest from its quota
            edit = edits[kind]
            assert edit is not None
            before, after = list(parts), [*parts[:c], edit, *parts[c + 1 :]]
            if rng.random() < 0.5:  # the edited clause alone: the length users type
                before, after = [parts[c]], [edit]
            z, z_edit = lexicon.logit(before), lexicon.logit(after)
            if abs(z) < math.log(CLEAR / (1 - CLEAR)) or z * z_edit >= 0:  # unclear, or the edit did not cross (0 included)
                continue
            flat = [t for part in before for t in part]
            out.append(Counterfactual(flat, [t for part in after for t in part], int(z > 0), kind))
            quota[kind] -= 1
            break  # one pair per review: variety over volume
    return out[:count]


def contrasts(texts: Sequence[str], lexicon: ScopeLexicon, count: int, seed: int) -> list[Counterfactual]:
    """Up to `count` pairs "A but B" / "B but A" from two clauses the teacher reads clearly and oppositely.

    Why: in "X, but Y" the later clause decides, which document labels never isolate; swapping the clauses is a
    minimal edit that flips the label, so the pair teaches the order, not the words. Clauses come from sentences of
    `texts` in a seeded order (a sentence's first clause), without a negation (its scope would make the teacher's reading
    the thing learnt), each paired with the next clear clause of the other side. The tokenizer drops the comma, so
    the joined text is `A but B` as tokens.
    """
    rng = random.Random(seed + 1)  # its own draws: turning it on does not change the other pairs
    order = list(range(len(texts)))
    rng.shuffle(order)
    waiting: dict[int, list[list[str]]] = {0: [], 1: []}
    out: list[Counterfactual] = []
    for index in order:
        if len(out) >= count:
            break
        for sentence in sentences(texts[index]):
            clause = next((c[1:] if c[0] in CONTRAST | CONCESSIVE else c for c in clauses(sentence) if c), [])
            if not CONTRAST_CLAUSE[0] <= len(clause) <= CONTRAST_CLAUSE[1] or clause[0] in CONNECTIVES or any(map(is_cue, clause)):
                continue
            z = lexicon.logit([clause])
            if abs(z) < math.log(CONTRAST_CLEAR / (1 - CONTRAST_CLEAR)) or not any(lexicon.polar(t, 2 * POLAR_THRESHOLD) for t in clause):
                continue
            side = int(z > 0)
            if waiting[1 - side]:
                first = waiting[1 - side].pop()  # "first but clause" takes clause's side; swapped, first's
                a, b, label = (first, clause, side) if rng.random() < 0.5 else (clause, first, 1 - side)
                out.append(Counterfactual([*a, "but", *b], [*b, "but", *a], label, "contrast"))
            else:
                waiting[side].append(clause)
    return out[:count]
