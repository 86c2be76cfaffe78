"""Random windows of the unlabelled reviews: more transfer texts for stage two, labelled by the teacher on the window.

Why: the student learns the teacher's function only where the transfer set has texts, and that set is whole reviews,
while users send one-liners and fragments. A window of a review is a new text the teacher can label afresh
("consistent teaching", Beyer et al. 2022; n-gram sampling, Tang et al. 2019), so, unlike a window carrying its
review's label, its label matches what the window says. Lengths are log-uniform between `SHORTEST` tokens and the
whole review: as many sentence-sized windows as paragraph-sized ones, at a quarter of the unlabelled set's tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

SHORTEST = 8  # tokens: about a short sentence, the length of the short-text set's shortest texts


def windows(tokens: Sequence[list[str]], per_review: float, seed: int) -> list[list[str]]:
    """round(per_review x len(tokens)) windows, each from a review drawn in turn (a fraction takes a random part).

    Its own RNG (from `seed`), so adding windows leaves every other draw of the run as it was.
    """
    rng = random.Random(seed)
    whole, part = int(per_review), per_review - int(per_review)
    sources = list(range(len(tokens))) * whole + rng.sample(range(len(tokens)), round(part * len(tokens)))
    out = []
    for i in sources:
        review = tokens[i]
        if len(review) <= SHORTEST:
            out.append(list(review))
            continue
        length = round(math.exp(rng.uniform(math.log(SHORTEST), math.log(len(review)))))
        start = rng.randint(0, len(review) - length)
        out.append(review[start : start + length])
    return out
