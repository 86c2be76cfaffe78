"""Step two, first half: word2vec (and optionally LM) pre-training, then the supervised fit on train + CAD pairs.

Cached (`--stage-one-cache`) because stage-two variants all start from the same stage one: the key holds every
setting that acts before stage two, the data and holdout hashes and the vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import torch

from training import cache, lm
from training.config import TrainConfig
from training.embeddings import word2vec_matrix
from training.loop import History, fit
from training.model import SentimentLSTM
from training.prepare import Splits

log = logging.getLogger(__name__)

STAGE_ONE = "stage one (word2vec, LM, fit)"  # what the cache's log lines call it

# Settings that only act after stage one: a stage-one cache stays valid when only these differ.
AFTER_STAGE_ONE = frozenset(
    {
        "data",  # its sha256 is in the key instead
        "download",
        "out",
        "name",
        "version",
        "stage_one_cache",
        "lm_cache",
        "distill",
        "distill_rounds",
        "distill_epochs",
        "distill_lr",
        "distill_ema",
        "distill_windows",
        "distill_keep_cad_share",
        "counterfactuals",
        "counterfactual_pair_weight",
        "contrast_pairs",
        "stage_two_seed",
        "distill_sentences",
        "teacher_cad",
        "teacher_c",
        "teacher_lstms",  # its extra members are stage ones of their own, trained after the cached one
    }
)


def new_model(splits: Splits, config: TrainConfig) -> SentimentLSTM:
    """An untrained classifier of the configured shape (draws its initial weights from torch's RNG)."""
    return SentimentLSTM(len(splits.vocab), config.embed_dim, config.hidden, config.dropout, pooling=config.pooling)


def stage_one_key(config: TrainConfig, splits: Splits) -> str:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in AFTER_STAGE_ONE}
    data_sha256, holdout_sha256 = splits.hashes
    return cache.key({"data": data_sha256, "holdout": holdout_sha256, "vocab": cache.vocab_digest(splits.vocab), "config": settings})


def pretrain_and_fit(model: SentimentLSTM, splits: Splits, config: TrainConfig, device: torch.device) -> tuple[History, dict[str, float]]:
    """word2vec (and optionally LM) pre-training on the corpus (train + unlabelled tokens), then the supervised fit
    with CAD. Returns the fit's history and the LM's figures."""
    corpus = splits.corpus
    if config.word2vec:
        t0 = time.perf_counter()
        workers = config.w2v_workers or os.cpu_count() or 1
        matrix = word2vec_matrix(corpus, splits.vocab, config.embed_dim, config.w2v_epochs, config.w2v_skipgram, config.seed, workers)
        model.embedding.weight.data.copy_(matrix)
        log.info("word2vec pre-training took %.0fs", time.perf_counter() - t0)
    lm_figures: dict[str, float] = {}
    if config.lm:
        key = lm.cache_key(config, splits.vocab, *splits.hashes)
        embedding = model.embedding.weight.data if config.word2vec else None
        bilm, lm_figures = lm.pretrained(corpus, splits.vocab, embedding, config, key, device)
        lm.initialise(model, bilm)
        del bilm
    model.to(device)
    return fit(model, splits.train_set(), splits.val_set(), config, device), lm_figures


def run(model: SentimentLSTM, splits: Splits, config: TrainConfig, device: torch.device) -> tuple[History, dict[str, float], bool]:
    """Stage one into `model`, from the cache when its key matches -> (history, LM figures, whether it was cached)."""
    key = stage_one_key(config, splits)
    saved = cache.load(config.stage_one_cache, key, STAGE_ONE)
    if saved is not None:
        model.load_state_dict(saved["state"])
        model.to(device)
        torch.set_rng_state(saved["torch_rng"])  # stage two's dropout draws as it would have straight after stage one
        return History(**saved["history"]), saved["lm"], True
    history, lm_figures = pretrain_and_fit(model, splits, config, device)
    payload = {
        "state": {k: v.cpu() for k, v in model.state_dict().items()},
        "history": dataclasses.asdict(history),
        "lm": lm_figures,
        "torch_rng": torch.get_rng_state(),
    }
    cache.save(config.stage_one_cache, key, payload, STAGE_ONE)
    return history, lm_figures, False
