"""Negation scope marking, the scope teacher, and the counterfactual edits built on them."""

from __future__ import annotations

import random

from training import counterfactuals, negation
from training.counterfactuals import antonym, negate, unnegate
from training.negation import ScopeLexicon, clauses, mark


def lexicon() -> ScopeLexicon:
    """Polarities as NB ratios would give them, every word common enough to be edited."""
    polarity = {"good": 1.0, "great": 1.5, "bad": -1.5, "boring": -2.0, "funny": 0.9, "loved": 1.6, "plot": 0.0}
    return ScopeLexicon(polarity, dict.fromkeys(polarity, 1000), reviews=1000, scale=1.0)


def test_scope_runs_from_the_cue_to_the_clause_end() -> None:
    assert mark("Not bad.") == ["not", "NOT_bad"]
    assert mark("The film wasn't good, but the cast was great!") == [
        "the", "film", "wasn't", "NOT_good", "but", "the", "cast", "was", "great",
    ]  # fmt: skip
    assert mark("I never laughed; it was funny to others") == ["i", "never", "NOT_laughed", "it", "was", "funny", "to", "others"]
    assert mark("no") == ["no"] and mark("Good. Not boring") == ["good", "not", "NOT_boring"]


def test_clauses_split_before_contrast_words_and_the_teacher_flips_in_scope() -> None:
    assert clauses("Slow start but worth it") == [["slow", "start"], ["but", "worth", "it"]]
    lex = lexicon()
    assert lex.logit(clauses("Not bad.")) > 0 > lex.logit(clauses("Bad."))
    assert lex.logit(clauses("The plot was not good.")) < 0 < lex.logit(clauses("The plot was good."))
    # after "but" the later clause decides: the earlier one counts half
    assert lex.logit(clauses("It was good, but boring")) < 0 < lex.logit(clauses("It was boring, but great"))


def test_negate_puts_the_polar_word_in_a_negation_scope() -> None:
    lex, rng = lexicon(), random.Random(0)
    edits = {" ".join(negate(["the", "plot", "was", "good"], lex, random.Random(seed)) or []) for seed in range(20)}
    assert edits <= {"the plot was not good", "the plot wasn't good", "the plot was never good"} and len(edits) >= 2
    assert negate(["i", "loved", "it"], lex, rng) in (["i", "didn't", "love", "it"], ["i", "did", "not", "love", "it"])
    assert negate(["a", "great", "film"], lex, rng) == ["not", "a", "great", "film"]
    assert negate(["it", "is", "not", "good"], lex, rng) is None  # already negated: that is unnegate's case
    assert negate(["the", "plot"], lex, rng) is None  # nothing polar
    for seed in range(10):
        edited = negate(["this", "was", "a", "very", "boring", "film"], lex, random.Random(seed))
        assert edited is not None and any(negation.scope(edited)[i] for i, t in enumerate(edited) if t == "boring")


def test_unnegate_and_antonym_flip_the_reading() -> None:
    lex = lexicon()
    assert unnegate(["it", "is", "not", "funny"], lex) == ["it", "is", "funny"]
    assert unnegate(["the", "plot", "wasn't", "bad"], lex) == ["the", "plot", "was", "bad"]
    assert unnegate(["i", "don't", "like", "it"], lex) is None  # "like" is not polar in this lexicon
    assert unnegate(["it", "is", "good"], lex) is None
    assert antonym(["a", "good", "film"], lex) == ["a", "bad", "film"]
    assert antonym(["a", "boring", "film"], lex) == ["a", "interesting", "film"]


def test_generated_pairs_cross_the_teacher_and_come_in_every_kind() -> None:
    texts = [
        "The plot was good. I loved it.",
        "It is not funny at all.",
        "A great cast. The plot was boring.",
        "The plot wasn't bad.",
        "What a good film!",
        "It was not boring.",
    ] * 5
    lex = lexicon()
    pairs = counterfactuals.generate(texts, lex, 12, seed=0)
    assert pairs and {p.kind for p in pairs} == set(counterfactuals.KINDS)
    for p in pairs:
        before = lex.logit(clauses(" ".join(p.original)))
        after = lex.logit(clauses(" ".join(p.edited)))
        assert (before > 0) == bool(p.label) and (after > 0) != bool(p.label) and p.original != p.edited
    assert pairs == counterfactuals.generate(texts, lex, 12, seed=0)  # seeded


def test_scope_stops_after_a_few_tokens_when_no_punctuation_ends_it() -> None:
    marked = mark("i did not expect the story to be this long with such a terrible script")
    assert marked[3:9] == ["NOT_expect", "NOT_the", "NOT_story", "NOT_to", "NOT_be", "this"] and "terrible" in marked
    assert mark("I don't think the film was good") == ["i", "don't", "NOT_think", "NOT_the", "NOT_film", "NOT_was", "NOT_good"]


def test_a_wh_clause_ends_the_scope_and_not_only_negates_nothing() -> None:
    assert mark("I can't believe how bad it was") == ["i", "can't", "NOT_believe", "how", "bad", "it", "was"]
    assert mark("not only good but great") == ["not", "only", "good", "but", "great"]
    lex = lexicon()
    assert lex.logit(clauses("Words can't describe how bad this film is.")) < 0
    assert lex.logit(clauses("It was not only funny, it was great.")) > 0


def test_an_idiom_keeps_its_sign_under_negation_and_other_words_flip() -> None:
    lex = ScopeLexicon({"waste": -2.4, "bad": -1.5, "time": 0.0}, {"waste": 1000, "bad": 1000}, reviews=1000, scale=1.0)
    assert lex.logit(clauses("Don't waste your time.")) < 0 < lex.logit(clauses("Not bad."))
    assert lex.logit(clauses("Don't waste your time.")) == lex.logit(clauses("Waste of time."))


def test_contrast_pairs_swap_two_clauses_read_oppositely_and_the_later_one_decides() -> None:
    texts = [
        "The cast was great and funny. And then it was good.",
        "The plot was boring and bad. It was not great at all.",
        "I loved the film so much. The plot was bad, boring.",
        "What a great good film!",
        "So the plot was bad and boring.",
    ] * 4
    lex = lexicon()
    pairs = counterfactuals.contrasts(texts, lex, 6, seed=0)
    assert len(pairs) == 6 and {p.kind for p in pairs} == {"contrast"}
    for p in pairs:
        cut = p.original.index("but")
        first, later = p.original[:cut], p.original[cut + 1 :]
        assert p.edited == [*later, "but", *first]  # the same two clauses, order swapped
        assert (lex.logit([later]) > 0) == bool(p.label) and (lex.logit([first]) > 0) != bool(p.label)
        assert not any(negation.is_cue(t) for t in p.original)  # a negation would make its scope the lesson
        assert first[0] not in counterfactuals.CONNECTIVES and later[0] not in counterfactuals.CONNECTIVES
    assert {p.label for p in pairs} == {0, 1}
    assert pairs == counterfactuals.contrasts(texts, lex, 6, seed=0)  # seeded
    assert counterfactuals.contrasts(["Only good things. Great, great fun."] * 5, lex, 4, seed=0) == []  # one side only
