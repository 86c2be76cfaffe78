"""One frozen training config; every field says why it has its value.

Defaults are the shipped model's recipe. `python -m training --help` lists them
all as flags, so a run is fully described by its command line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    data: Path | None = None  # aclImdb tarball or folder; None: look in the usual places (see data.find)
    download: bool = False  # fetch the official tarball (sha256-verified) if no local copy is found
    out: Path = Path("models/sentiment.pt")  # where the artifact goes; model card + plots go beside it
    name: str = "imdb-bilstm"  # model name served in responses and OIP v2 routes
    version: str = "2.3.0"  # bump when the shipped model changes (2.3.0: random windows in stage two, seed 1; 2.2.1: seed 2 on split 0, chosen by validation loss; 2.2.0: CAD keeps its share in stage two; 2.1.0: distillation; 2.0.0: CAD pairs; 1.1.0: dense BiLSTM route)
    seed: int = 1  # seeds python/torch, word2vec, the windows and (without split_seed) the movie split: identical runs (same --threads) give identical models on one machine
    split_seed: int | None = (
        0  # the movie split's own seed (None: --seed); fixed at 0, runs of other --seed are judged on one validation set
    )
    device: str = "auto"  # auto = cuda if visible else cpu
    threads: int = 0  # torch intra-op threads; 0 = all cores (use 1 on a shared machine: OpenMP stragglers cost 10x)
    holdout: bool = True  # drop the robustness holdout (training/robustness-holdout.txt) from every step: contrast sets are edits of it
    cad_dir: Path | None = None  # folder with CAD's {train,dev}_paired.tsv; None: data/cad
    cad: bool = True  # train on CAD's 1,707 train pairs too: revisions are the minimal edits IMDb lacks (+15 pt on CAD dev revisions)
    cad_passes: float = 2.0  # CAD pairs seen per epoch: 1,707 pairs are 8 % of IMDb train, so upweight them
    pair_weight: float = 0.0  # weight of the pairwise term pushing a pair's two logits to opposite sides (0 = off)
    pair_batch: int = 32  # pairs per CAD batch (64 texts), both members of a pair in the same batch
    limit: int | None = None  # reviews per split and class; for smoke tests only
    validation_fraction: float = 0.1  # of train movies held out for early stopping and calibration
    vocab_size: int = 30_000  # covers ~98% of review tokens; the embedding table dominates file size (30k x 128 x 4 B = 15 MB)
    min_freq: int = 2  # a token seen once carries no learnable signal
    max_length: int = 400  # tokens kept per review: ~85% of reviews fit whole, and LSTM cost is linear in it
    head_length: int = 100  # of which from the start; the rest from the end, where reviews give their verdict
    embed_dim: int = 128  # word2vec-initialised; 128 is where accuracy flattens for IMDb-sized corpora
    hidden: int = 128  # per direction; 64 loses ~0.5 pt, 256 is 3x slower to serve
    dropout: float = 0.4  # on embeddings and pooled features; the model overfits within 3 epochs without it
    pooling: Literal["max+mean", "max", "mean", "last"] = "max+mean"  # both pools: max finds the decisive phrase, mean the overall tone
    word2vec: bool = True  # pre-train embeddings on train + 50k unlabelled reviews (never on test)
    w2v_epochs: int = 5  # gensim default; more barely moves downstream accuracy
    w2v_workers: int = 1  # 1: the same run gives the same vectors (more threads reorder the corpus); 0 = all cores, faster
    w2v_skipgram: bool = False  # CBOW: ~3x faster than skip-gram here, and pre-training is only an initialisation
    lm: bool = (
        False  # pre-train forward + backward LSTM LMs and start the classifier from them (ULMFiT); measured not to pay at this budget
    )
    lm_tokens: int = 8_000_000  # tokens per direction (~0.4 pass over train + unsup): ~20 min on 1 core
    lm_bptt: int = 70  # window length; AWD-LSTM / ULMFiT use 70
    lm_batch: int = 64  # windows per step
    lm_lr: float = 2e-3  # Adam peak, one-cycle
    lm_dropout: float = 0.1  # light: the LM is under-fitted at this budget, not over-fitted
    stage_one_cache: Path | None = None  # stage one's weights, reused when everything before stage two matches: stage-two variants skip it
    lm_cache: Path | None = None  # cache of the LM weights; reused when data, vocab and LM settings match, else replaced
    lr_decay: float = 1.0  # discriminative learning rates: LSTM gets lr / decay, embedding lr / decay^2 (ULMFiT: 2.6)
    unfreeze: bool = False  # gradual unfreezing: epoch 1 trains the head only, epoch 2 adds the LSTM, then all
    adversarial: float = 0.0  # Miyato-style embedding perturbation radius, relative to each text's embedding norm (0 = off)
    distill: bool = True  # stage two: unlabelled reviews with soft labels from an n-gram + stage-one LSTM teacher (+1.2 pt test)
    distill_rounds: int = 1  # rounds of stage two; each later round's BiLSTM teacher member is the previous round's student
    distill_epochs: int = 2  # stage-two epochs over train + unlabelled (3.3x an epoch of stage one), from stage one's weights
    distill_lr: float = 1e-3  # stage-two Adam peak: half of stage one's, since it starts from a trained model
    distill_ema: float = 0.0  # stage two validates and keeps a moving average of its weights with this decay (0 = off): Polyak averaging
    distill_windows: float = 1.0  # random windows per unlabelled review added to stage two's transfer set, each labelled by the teacher on the window itself (training/windows.py): calibrated validation NLL lower in 5 of 5 paired runs (robustness.md); +4 min
    distill_keep_cad_share: bool = True  # CAD keeps its stage-one share of stage two: revisions 86.5 -> 89.0 %, pairs 79.2 -> 82.4, val loss 0.206 -> 0.211 (robustness.md)
    counterfactuals: int = (
        0  # stage two: this many generated minimal-edit pairs of one-liners (training/counterfactuals.py), trained as pairs; 0 = off
    )
    contrast_pairs: int = 0  # stage two: this many generated "A but B" / "B but A" pairs of clauses the teacher reads oppositely (counterfactuals.contrasts); 0 = off
    stage_two_seed: int | None = (
        None  # stage two reseeds python/torch and draws its windows and generated pairs with this (None: --seed, the RNG as stage one leaves it, as every shipped model): the run-to-run spread of a stage-two lever, from one cached stage one
    )
    counterfactual_pair_weight: float = 1.0  # the pairwise term's weight on those pairs (CAD's own is pair_weight)
    distill_sentences: int = 0  # stage two: this many single sentences of unlabelled reviews, labelled by the negation-scope teacher (training/negation.py); 0 = off
    teacher_cad: bool = False  # fit the n-gram teacher on the CAD pairs too: measured, won 2 of 6 dev criteria (robustness.md)
    teacher_lstms: int = 1  # BiLSTM members of the teacher: stage one's + K-1 more stage ones (seeds +1..), logits averaged; 3: teacher +0.17 pt, student val loss 0.206 -> 0.208 (robustness.md)
    teacher_c: float = 16.0  # the n-gram teacher's inverse L2 strength: 4 / 16 gave 91.56 / 91.86 % on validation
    batch_size: int = 64  # length-bucketed, so padding waste stays < 5%
    lr: float = 2e-3  # Adam peak, one-cycle schedule
    weight_decay: float = 0.0  # dropout regularises enough; decay on embeddings hurts rare words
    epochs: int = 4  # one-cycle length and upper bound: IMDb LSTMs peak on validation within 3-4 epochs
    patience: int = 2  # epochs without validation-loss improvement before stopping
    clip_norm: float = 1.0  # gradient clipping: exploding gradients are the classic LSTM failure
    eval_batch_size: int = 256  # inference only; bigger is faster on CPU

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
