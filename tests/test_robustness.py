"""Clean robustness evaluation: the holdout never reaches training, CAD pairs and short texts are read right."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from training import cad, data, short_texts
from training.evaluate import flips, robustness
from training.holdout import Holdout

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _review(root: Path, rel: str, text: str) -> None:
    path = root / "aclImdb" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_excluded_reviews_reach_no_split(tmp_path: Path) -> None:
    for kind, rating in (("pos", 9), ("neg", 2)):
        for split in ("train", "test"):
            for i in range(4):
                _review(tmp_path, f"{split}/{kind}/{i}_{rating}.txt", f"{split} {kind} review {i}")
    _review(tmp_path, "train/unsup/0_0.txt", "unlabelled zero")
    _review(tmp_path, "train/unsup/1_0.txt", "unlabelled one")
    exclude = frozenset({"train/pos/2_9.txt", "train/neg/0_2.txt", "train/unsup/1_0.txt"})
    ds = data.load(tmp_path / "aclImdb", validation_fraction=0.5, exclude=exclude)
    seen = {r.text for r in ds.train + ds.validation + ds.unsup}
    assert ds.excluded == 3
    assert {"train pos review 2", "train neg review 0", "unlabelled one"}.isdisjoint(seen)
    assert len(ds.train) + len(ds.validation) == 6 and len(ds.unsup) == 1 and len(ds.test) == 8


def test_the_packaged_holdout_is_the_shared_list() -> None:
    holdout = Holdout.read()
    assert len(holdout.paths) == 753 and all(p.startswith("train/") for p in holdout.paths)
    shared = SHARED / "robustness-holdout.txt"
    if shared.exists():
        assert holdout.sha256 == hashlib.sha256(shared.read_bytes()).hexdigest()
    assert holdout.manifest_entry(750) == {"sha256": holdout.sha256, "listed": 753, "reviews_dropped": 750}


@pytest.mark.skipif(not (SHARED / "aclImdb.tar.gz").exists(), reason="IMDb tarball not in ../shared/data")
def test_every_holdout_review_is_found_and_dropped_from_the_real_data() -> None:
    ds = data.load(SHARED / "aclImdb.tar.gz", exclude=Holdout.read().paths)
    assert ds.excluded == 753  # the list names files that exist, so none slips through by a path mismatch
    assert len(ds.train) + len(ds.validation) == 25_000 - 740 and len(ds.unsup) == 50_000 - 13


def test_cad_pairs_are_read_and_malformed_files_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.tsv"
    good.write_text('Sentiment\tText\tbatch_id\nNegative\tA "bad" film.\t7\nPositive\tA "good" film.\t7\n')
    assert cad.read(good) == [cad.Pair('A "bad" film.', 0, 'A "good" film.', "7")]
    same = tmp_path / "same.tsv"
    same.write_text("Sentiment\tText\tbatch_id\nNegative\tbad\t7\nNegative\tworse\t7\n")
    with pytest.raises(cad.CadError, match="batch_id 7"):
        cad.read(same)
    with pytest.raises(cad.CadError, match="not found"):
        cad.read(tmp_path / "missing.tsv")
    if (SHARED / "cad").is_dir():
        assert len(cad.read(SHARED / "cad" / "dev_paired.tsv")) == 245
        assert len(cad.read(SHARED / "cad" / "train_paired.tsv")) == 1707


def test_short_texts_take_polar_first_and_last_sentences_balanced() -> None:
    reviews = [
        ("I loved this film so much. The plot is about a dog.<br /><br />A wonderful ending for everyone!", 1),
        ("The plot is about a cat. It was boring and far too long.", 0),
        ("Terrible acting from start to end. Nothing else.", 0),
        ("Okay.", 1),
    ]
    built = short_texts.build(reviews, limit=None)
    texts = {s.text for s in built}
    assert sorted(s.label for s in built) == [0, 0, 1, 1]  # balanced; "Nothing else." and "Okay." carry no polar word
    assert texts == {
        "I loved this film so much.",
        "A wonderful ending for everyone!",
        "It was boring and far too long.",
        "Terrible acting from start to end.",
    }
    assert short_texts.build(reviews, limit=None) == built  # seeded


def test_robustness_counts_pairs_right_only_when_both_members_are() -> None:
    pairs = [cad.Pair("good one", 1, "bad one", "1"), cad.Pair("bad two", 0, "good two", "2"), cad.Pair("bad three", 0, "bad three!", "3")]
    short = [short_texts.ShortText("good", 1, "first"), short_texts.ShortText("bad", 0, "last")]

    def predict(texts: list[str]) -> torch.Tensor:
        return torch.tensor([0.9 if "good" in t else 0.1 for t in texts])

    result = robustness(predict, pairs, short)
    assert result["cad_dev_original"]["accuracy"] == pytest.approx(1.0)
    assert result["cad_dev_revised"]["accuracy"] == pytest.approx(2 / 3)
    assert result["cad_dev_pairs"] == {"both_right": pytest.approx(2 / 3), "n": 3}
    assert result["short_text"]["accuracy"] == pytest.approx(1.0)


def test_flips_name_what_each_model_gets_right_alone_and_count_negations() -> None:
    texts = {"short_text": ["Don't waste your time.", "A great film.", "Not bad at all.", "Dull."]}
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    ours = {"short_text": (torch.tensor([0.9, 0.8, 0.7, 0.6]), y)}  # wrong on 0 and 3
    theirs = {"short_text": (torch.tensor([0.1, 0.2, 0.3, 0.4]), y)}  # wrong on 1 and 2
    result = flips(ours, theirs, texts)["short_text"]
    assert (result["lost"], result["lost_with_negation"], result["won"], result["won_with_negation"]) == (2, 1, 2, 1)
    assert [row["text"] for row in result["lost_texts"]] == ["Don't waste your time.", "Dull."]
    assert result["lost_texts"][0] == {"text": "Don't waste your time.", "label": 0, "p": 0.9, "p_other": 0.1}
