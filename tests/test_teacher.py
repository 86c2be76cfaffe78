"""The distillation teacher: an n-gram model that reads negations, and an ensemble that weighs its members alike."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn", reason="the teacher needs the [train] extra")
from training.loop import accuracy
from training.teacher import Ensemble, NgramLogits, NgramTeacher, soft_labels

CORPUS = [
    ("a good film , truly good", 1),
    ("good acting and a good story", 1),
    ("the plot was good", 1),
    ("not good at all", 0),
    ("the acting was not good", 0),
    ("sadly not good , not good", 0),
    ("a dull film", 0),
    ("dull and long", 0),
    ("a fine story", 1),
    ("fine acting", 1),
] * 3


def tokens(text: str) -> list[str]:
    return text.split()


def test_ngram_teacher_reads_the_bigram_not_just_the_word() -> None:
    teacher = NgramTeacher(c=16.0).fit([tokens(t) for t, _ in CORPUS], [y for _, y in CORPUS])
    good, not_good = teacher.logits([tokens("the story was good"), tokens("the story was not good")]).tolist()
    assert good > 0 > not_good  # "good" alone is positive; the bigram "not good" outweighs it


def test_ensemble_calibrates_members_so_an_overconfident_one_does_not_dominate() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(2000, generator=generator) < 0.5).float()  # [N]
    signal = (2 * labels - 1) * 1.5  # [N] both members know the label to the same degree...
    a = signal + torch.randn(2000, generator=generator)
    b = signal + torch.randn(2000, generator=generator)
    fair = Ensemble.calibrated_on(a, b, labels).logits(a, b)
    loud = Ensemble.calibrated_on(a * 20, b, labels).logits(a * 20, b)  # ...but one shouts 20x louder
    assert torch.allclose(fair, loud, rtol=1e-2, atol=1e-2)  # the temperature fit is LBFGS: ~1e-3 relative
    naive = (a * 20 + b) / 2
    assert accuracy(fair, labels) > accuracy(a, labels) and accuracy(fair, labels) > accuracy(naive, labels)


def test_soft_labels_are_probabilities_for_every_unlabelled_text() -> None:
    train = [tokens(t) for t, _ in CORPUS]
    val = [tokens("good story"), tokens("not good"), tokens("dull")]
    ngram = NgramLogits.fit(train, [y for _, y in CORPUS], val, [tokens("fine and good"), tokens("dull , not good")], c=16.0)
    y_val = torch.tensor([1.0, 0.0, 0.0])
    targets, figures = soft_labels(ngram, torch.tensor([1.0, -1.0, -2.0]), torch.tensor([0.5, -0.5]), y_val)
    assert len(targets) == 2 and targets[0] > 0.5 > targets[1] and all(0 < p < 1 for p in targets)
    assert figures["unlabelled"] == 2 and figures["val_accuracy_teacher"] == 1.0
