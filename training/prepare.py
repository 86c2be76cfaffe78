"""Step one of a run: read the data once into `Splits` (tokens, ids, labels, CAD pairs, vocabulary, encoder, hashes).

Why one step: every later step (fit, calibrate, evaluate, manifest) reads the same splits, and the seeds are set
here, before the first draw, so a run's randomness starts in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from contract.text import tokenize
from contract.vocab import TextEncoder, Vocab
from training import cad, data
from training.config import TrainConfig
from training.holdout import Holdout
from training.loop import Examples, PairIds

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """The data of a run, tokenised and encoded once. Token lists and id lists are per review."""

    dataset: data.Dataset  # the reviews of each split, the data's sha256 and how many holdout reviews were dropped
    holdout: Holdout
    vocab: Vocab
    encoder: TextEncoder
    train_tokens: list[list[str]]
    unsup_tokens: list[list[str]]
    train_ids: list[list[int]]
    val_ids: list[list[int]]
    cad_train: list[cad.Pair]  # CAD train pairs whose original is not a validation review
    pairs: list[PairIds]  # the same pairs as ids
    cad_dev: list[cad.Pair]  # for the robustness figures only

    @property
    def hashes(self) -> tuple[str, str]:
        """(data sha256, holdout sha256): what cache keys and the manifest name the inputs by."""
        return self.dataset.sha256, self.holdout.sha256

    @property
    def corpus(self) -> list[list[str]]:
        """Train + unlabelled tokens: what word2vec and the LM pre-train on (never validation or test)."""
        return self.train_tokens + self.unsup_tokens

    @property
    def train_labels(self) -> list[int]:
        return [r.label for r in self.dataset.train]

    @property
    def val_labels(self) -> list[int]:
        return [r.label for r in self.dataset.validation]

    @property
    def y_val(self) -> torch.Tensor:
        """Validation labels, FloatTensor[N]."""
        return torch.tensor(self.val_labels, dtype=torch.float32)

    def train_set(self) -> Examples:
        """Stage one's material: the train reviews with hard labels and the CAD pairs."""
        return Examples(self.train_ids, self.train_labels, self.pairs)

    def val_set(self) -> Examples:
        return Examples(self.val_ids, self.val_labels)

    def ids_of(self, tokens: list[list[str]]) -> list[list[int]]:
        """Ids of already tokenised texts, truncated as the encoder truncates."""
        return [self.vocab.encode(t, self.encoder.max_length, self.encoder.head_length).ids for t in tokens]


def cad_pairs(folder: Path, config: TrainConfig, dataset: data.Dataset) -> list[cad.Pair]:
    """CAD train pairs, minus those whose original is a validation review.

    Every CAD original is an IMDb train review (1,547 of the 1,707 land in our train split, 160 in
    validation); training on the 160 would leak validation into early stopping and calibration.
    """
    validation = {" ".join(tokenize(r.text)) for r in dataset.validation}
    kept = [p for p in cad.read(folder / "train_paired.tsv") if " ".join(tokenize(p.original)) not in validation]
    kept = kept[: config.limit] if config.limit else kept
    log.info("CAD: %d train pairs (originals in validation left out)", len(kept))
    return kept


def tokens_of(reviews: list[data.Review], what: str) -> list[list[str]]:
    return [tokenize(r.text) for r in tqdm(reviews, desc=f"tokenize {what}", unit="review", leave=False)]


def prepare(config: TrainConfig) -> Splits:
    """Seed, find and split the data (holdout dropped), tokenise, build the vocabulary and encode: the run's `Splits`."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    path = data.find(config.data, config.download)
    log.info("data %s", path)
    cad_folder = cad.find(config.cad_dir, required=config.cad)  # without CAD only its robustness figures are skipped
    cad_dev = cad.read(cad_folder / "dev_paired.tsv") if cad_folder else []  # read first: a bad file fails in a second
    holdout = Holdout.read() if config.holdout else Holdout.none()
    dataset = data.load(path, config.validation_fraction, data.split_seed(dataclasses.asdict(config)), config.limit, holdout.paths)
    log.info(
        "train %d, validation %d, test %d, unlabelled %d; %d robustness-holdout reviews left out",
        *(len(s) for s in (dataset.train, dataset.validation, dataset.test, dataset.unsup)),
        dataset.excluded,
    )
    train_tokens, unsup_tokens = tokens_of(dataset.train, "train"), tokens_of(dataset.unsup, "unlabelled")
    vocab = Vocab.build(train_tokens + unsup_tokens, config.vocab_size, config.min_freq)
    encoder = TextEncoder(vocab, config.max_length, config.head_length)
    cad_train = cad_pairs(cad_folder, config, dataset) if config.cad and cad_folder else []
    splits = Splits(dataset, holdout, vocab, encoder, train_tokens, unsup_tokens, [], [], cad_train, [], cad_dev)
    splits.train_ids = splits.ids_of(train_tokens)
    splits.val_ids = [encoder.encode(r.text).ids for r in dataset.validation]
    splits.pairs = [PairIds(encoder.encode(p.original).ids, encoder.encode(p.revised).ids, p.original_label) for p in cad_train]
    return splits
