"""Stage two's random windows: contiguous pieces of their reviews, as many as asked, reproducible, short and long alike."""

from __future__ import annotations

import random

from training.windows import SHORTEST, windows


def reviews(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[f"r{i}t{j}" for j in range(rng.randrange(1, 400))] for i in range(n)]


def test_each_window_is_a_contiguous_piece_of_a_review_no_shorter_than_a_sentence() -> None:
    tokens = reviews(300)
    by_first = {review[0]: review for review in tokens}  # every token names its review and position
    for window in windows(tokens, 2, seed=0):
        review = by_first[window[0].split("t")[0] + "t0"]
        start = review.index(window[0])
        assert review[start : start + len(window)] == window
        assert min(SHORTEST, len(review)) <= len(window) <= len(review)


def test_count_follows_the_rate_and_the_seed_fixes_the_draw() -> None:
    tokens = reviews(200)
    assert windows(tokens, 0, seed=0) == []
    assert len(windows(tokens, 1, seed=0)) == 200 and len(windows(tokens, 1.5, seed=0)) == 300
    assert windows(tokens, 1, seed=3) == windows(tokens, 1, seed=3) != windows(tokens, 1, seed=4)
    assert sorted(w[0].split("t")[0] for w in windows(tokens, 1, seed=0)) == sorted(r[0].split("t")[0] for r in tokens)


def test_lengths_are_log_uniform_so_sentence_sized_windows_are_as_common_as_paragraphs() -> None:
    long_reviews = [[f"r{i}t{j}" for j in range(512)] for i in range(2000)]
    lengths = [len(w) for w in windows(long_reviews, 1, seed=0)]
    # log-uniform on [8, 512]: a third of the mass in each of [8, 32), [32, 128), [128, 512]
    short, middle = sum(n < 32 for n in lengths) / len(lengths), sum(32 <= n < 128 for n in lengths) / len(lengths)
    assert 0.28 < short < 0.39 and 0.28 < middle < 0.39
    assert max(lengths) > 480 and min(lengths) == SHORTEST
