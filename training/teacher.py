"""Soft labels for the 50k unlabelled reviews, from a teacher the served LSTM then learns from (knowledge distillation).

Why: the BiLSTM alone plateaus near 91 % on IMDb validation however it is trained here (LM pre-training, adversarial
perturbation and a larger vocabulary measured no gain: docs/robustness.md), but a bag-of-n-grams model errs on
other reviews. Measured on validation (seed 0, holdout out): NB-weighted logistic regression on 1-3-grams 91.86 %,
the stage-one BiLSTM 91.22 %, the mean of their calibrated logits 93.09 %. The ensemble is two models at serve
time; distilling it into the one BiLSTM through the unlabelled reviews keeps the artifact, its cost per token and
its interface. The teacher never sees validation labels except through the two temperatures, as the shipped model's
own calibration does.

The n-gram model is Wang & Manning's NBSVM (2012) with logistic loss: tf-idf features scaled by their naive-Bayes
log-count ratio r, so the linear model starts from the features NB finds polar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.calibrate import fit_temperature
from training.loop import accuracy

log = logging.getLogger(__name__)


def _identity(tokens: list[str]) -> list[str]:
    return tokens


@dataclass
class NgramTeacher:
    """NB-weighted logistic regression on tf-idf n-grams of the contract's tokens."""

    c: float  # inverse L2 strength (TrainConfig.teacher_c)
    max_n: int = 3  # 1-3-grams: negations and short phrases ("not bad", "waste of time") are what n-grams add

    def fit(self, tokens: Sequence[list[str]], labels: Sequence[int]) -> NgramTeacher:
        from scipy.sparse import diags  # scikit-learn's own dependency: both come with the [train] extra
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = TfidfVectorizer(
            tokenizer=_identity,
            preprocessor=_identity,
            lowercase=False,
            token_pattern=None,
            ngram_range=(1, self.max_n),
            min_df=2,
            max_df=0.9,
            sublinear_tf=True,
        )
        x = self.vectorizer.fit_transform(tokens)  # [N, F] sparse
        y = np.asarray(labels)
        pos, neg = 1 + x[y == 1].sum(0), 1 + x[y == 0].sum(0)  # [1, F] smoothed feature mass per class
        self.ratio = diags(np.asarray(np.log((pos / pos.sum()) / (neg / neg.sum()))).ravel())  # NB log-count ratio
        self.model = LogisticRegression(C=self.c, max_iter=1000).fit(x @ self.ratio, y)
        return self

    def logits(self, tokens: Sequence[list[str]]) -> torch.Tensor:
        """-> FloatTensor[N] of log-odds of positive."""
        return torch.from_numpy(self.model.decision_function(self.vectorizer.transform(tokens) @ self.ratio)).float()


@dataclass(frozen=True)
class Ensemble:
    """Mean of the two members' temperature-calibrated logits: members with different confidence count alike."""

    t_ngram: float
    t_lstm: float

    @classmethod
    def calibrated_on(cls, ngram: torch.Tensor, lstm: torch.Tensor, labels: torch.Tensor) -> Ensemble:
        return cls(fit_temperature(ngram, labels), fit_temperature(lstm, labels))

    def logits(self, ngram: torch.Tensor, lstm: torch.Tensor) -> torch.Tensor:
        return (ngram / self.t_ngram + lstm / self.t_lstm) / 2


@dataclass(frozen=True)
class NgramLogits:
    """The n-gram member's logits, fitted once however many distillation rounds reuse them."""

    val: torch.Tensor  # [N] validation
    unsup: torch.Tensor  # [M] unlabelled
    features: int
    seconds: float

    @classmethod
    def fit(
        cls,
        train_tokens: Sequence[list[str]],
        train_labels: Sequence[int],
        val_tokens: Sequence[list[str]],
        unsup_tokens: Sequence[list[str]],
        c: float,
    ) -> NgramLogits:
        start = time.perf_counter()
        ngram = NgramTeacher(c).fit(train_tokens, train_labels)
        val, unsup = ngram.logits(val_tokens), ngram.logits(unsup_tokens)
        return cls(val, unsup, len(ngram.vectorizer.vocabulary_), round(time.perf_counter() - start, 1))


def soft_labels(
    ngram: NgramLogits, lstm_val: torch.Tensor, lstm_unsup: torch.Tensor, y_val: torch.Tensor
) -> tuple[list[float], dict[str, float]]:
    """Teacher P(positive) for the unlabelled reviews, and the teacher's validation figures.

    lstm_val: the BiLSTM member's validation logits [N]; lstm_unsup: its unlabelled logits [M]; y_val: labels [N].
    """
    ensemble = Ensemble.calibrated_on(ngram.val, lstm_val, y_val)
    targets = torch.sigmoid(ensemble.logits(ngram.unsup, lstm_unsup))  # [M]
    figures = {
        "val_accuracy_ngram": accuracy(ngram.val, y_val),
        "val_accuracy_lstm": accuracy(lstm_val, y_val),
        "val_accuracy_teacher": accuracy(ensemble.logits(ngram.val, lstm_val), y_val),
        "ngram_features": ngram.features,
        "unlabelled": len(targets),
        "seconds": ngram.seconds,
    }
    log.info("teacher: %s", figures)
    return targets.tolist(), figures
