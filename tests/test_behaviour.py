"""The behavioural suite: its split is deterministic, disjoint and balanced, and its scoring counts what it says."""

from __future__ import annotations

from collections import Counter

import torch

from training import behaviour
from training.behaviour_suite import SUITE


def test_split_is_deterministic_disjoint_by_template_and_sentence_and_covers_every_capability() -> None:
    first, second = behaviour.cases(), behaviour.cases()
    assert first == second  # no state, no clock: the same suite on every call and machine
    halves_of_source: dict[tuple[str, str], set[str]] = {}
    for case in first:
        key = (case.capability, case.source if case.source != "sentence" else case.text)
        halves_of_source.setdefault(key, set()).add(case.half)
    assert all(len(h) == 1 for h in halves_of_source.values())  # a template's fillings never straddle the halves
    texts = Counter((c.text, c.half) for c in first)
    by_text: dict[str, set[str]] = {}
    for text, half in texts:
        by_text.setdefault(text, set()).add(half)
    assert all(len(h) == 1 for h in by_text.values())  # no text is in both halves
    for capability, (_, templates, sentences) in SUITE.items():
        for half in behaviour.HALVES:
            mine = [c for c in first if c.capability == capability and c.half == half]
            assert {c.label for c in mine} <= {0, 1} and len(mine) >= 40
        dealt = behaviour.halves([s for s, _ in sentences])
        assert abs(Counter(dealt.values())["validation"] - Counter(dealt.values())["test"]) <= 1
        assert len(behaviour.halves([t for t, _ in templates])) == len(templates)


def test_the_split_depends_on_the_items_not_their_order() -> None:
    items = [f"sentence {i}" for i in range(30)]
    dealt = behaviour.halves(items)
    assert dealt == behaviour.halves(list(reversed(items))) == behaviour.halves(items + items[:5])
    assert sorted(dealt.values()).count("validation") == 15


def test_fill_uses_every_slot_and_is_seeded_by_the_template() -> None:
    texts = behaviour.fill("The {thing} was not {pos_adj}.")
    assert texts == behaviour.fill("The {thing} was not {pos_adj}.")
    assert len(texts) == behaviour.PER_TEMPLATE and all("{" not in t and t[0].isupper() for t in texts)


def test_pass_rates_count_the_side_of_one_half() -> None:
    suite = behaviour.cases()
    always_positive = behaviour.pass_rates(lambda texts: torch.full((len(texts),), 0.9), suite)
    for half in behaviour.HALVES:
        for capability in SUITE:
            mine = [c for c in suite if c.half == half and c.capability == capability]
            assert always_positive[half][capability] == sum(c.label for c in mine) / len(mine)
    oracle = {c.text: float(c.label) for c in suite}
    perfect = behaviour.pass_rates(lambda texts: torch.tensor([oracle[t] for t in texts]), suite)
    assert all(rate == 1.0 for rates in perfect.values() for rate in rates.values())
