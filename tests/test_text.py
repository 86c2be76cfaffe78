"""Normalization and tokenization edge cases: what a text becomes decides every id the model sees."""

from __future__ import annotations

import pytest

from contract.text import tokenize, tokenize_with_spans


def test_html_line_breaks_and_tags_are_separators_not_tokens() -> None:
    assert tokenize("Great film.<br /><br />Loved it") == ["great", "film", "loved", "it"]
    assert tokenize("a<br>b<BR/>c <i>d</i>") == ["a", "b", "c", "d"]


def test_entities_are_skipped() -> None:
    assert tokenize("Tom &amp; Jerry &#39;rocks&#39;") == ["tom", "jerry", "rocks"]


def test_case_folded_and_negations_kept() -> None:
    assert tokenize("I DON'T like it. It isn't GOOD") == ["i", "don't", "like", "it", "it", "isn't", "good"]


def test_curly_apostrophe_equals_straight() -> None:
    assert tokenize("Don’t") == tokenize("don't") == ["don't"]


def test_exclamation_and_question_marks_are_tokens_other_punctuation_is_not() -> None:
    assert tokenize("Wow!!! Really?") == ["wow", "!", "!", "!", "really", "?"]
    assert tokenize("... , ; : -- ()") == []


def test_empty_and_whitespace() -> None:
    assert tokenize("") == []
    assert tokenize(" \n\t ") == []


def test_unicode_letters_and_compatibility_forms() -> None:
    assert tokenize("Café Ｆｉｌｍ naïve") == ["café", "film", "naïve"]
    assert tokenize("ﬁne") == ["fine"]  # ligature folded by NFKC
    assert tokenize("電影 好") == ["電影", "好"]


def test_underscores_split_words() -> None:
    assert tokenize("bad_movie") == ["bad", "movie"]


def test_spans_point_into_the_original_text() -> None:
    text = "It&amp;s <b>AWFUL</b>!<br />Don’t watch"
    tokens = tokenize_with_spans(text)
    assert [t.text for t in tokens] == tokenize(text)
    for t in tokens:
        assert tokenize(text[t.start : t.end]) == [t.text]
    assert text[tokens[2].start : tokens[2].end] == "AWFUL"


def test_very_long_text_is_tokenized_linearly() -> None:
    text = "good " * 200_000
    assert len(tokenize(text)) == 200_000


@pytest.mark.parametrize(
    "text",
    [
        "I LOVED it!!! <br /><br />Don't MISS &amp; tell: <I>Great</I> movie?",
        "The END_of TIME 2001: <a href='x'>Link</a> &#39;quoted&#39; isn't bad, is it?",
        "Caf\u00e9 DON\u2019T \uff2c\uff2f\uff36\uff25 it! <BR>",  # not ASCII: the per-token path
        "",
    ],
)
def test_fast_and_per_token_paths_give_the_same_tokens(text: str) -> None:
    assert tokenize(text) == [t.text for t in tokenize_with_spans(text)]
