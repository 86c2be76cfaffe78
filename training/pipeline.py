"""The whole run: data -> tokens -> vocab -> word2vec -> fit -> calibrate -> test -> export -> report."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from contract.encoder import TextEncoder
from contract.manifest import Manifest
from contract.text import NORMALIZER_VERSION, tokenize
from contract.vocab import Vocab
from training import behaviour, cache, cad, counterfactuals, data, lm, negation, report, short_texts, teacher, windows
from training.calibrate import brier, expected_calibration_error, fit_temperature
from training.config import TrainConfig
from training.embeddings import word2vec_matrix
from training.evaluate import metrics, robustness
from training.export import export
from training.holdout import Holdout
from training.loop import History, Local, PairIds, accuracy, fit, predict_logits
from training.model import SentimentLSTM

log = logging.getLogger(__name__)
LABELS = ("negative", "positive")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise data.DataError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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


def distill(
    model: SentimentLSTM,
    stage_one: History,
    train: tuple[list[list[str]], list[list[int]], list[int]],
    unsup: tuple[list[list[str]], list[list[int]]],
    val: tuple[list[list[str]], list[list[int]], torch.Tensor],
    cad_train: list[cad.Pair],
    pairs: list[PairIds],
    config: TrainConfig,
    device: torch.device,
    members: list[tuple[torch.Tensor, torch.Tensor]],
    local: Local | None = None,
) -> tuple[History, dict[str, float]]:
    """Stage two: from stage one's weights, train on train (hard labels) + unlabelled (the teacher's soft labels) + CAD.

    train = (tokens, ids, 0/1 labels), unsup = (tokens, ids), val = (tokens, ids, labels FloatTensor[N]); `cad_train`
    are the texts of `pairs`; `members` are the other BiLSTM members' (validation [N], unlabelled [M]) logits, averaged
    with the student's. With `distill_rounds` > 1 each round's student becomes the next round's BiLSTM member
    (the n-gram member is fitted once). `local` (sentences, counterfactual pairs) joins every round's epochs.
    Returns every stage's history in one and the teachers' figures.
    """
    (train_tokens, train_ids, train_labels), (unsup_tokens, unsup_ids), (val_tokens, val_ids, y_val) = train, unsup, val
    teacher_tokens, teacher_labels = list(train_tokens), list(train_labels)
    if config.teacher_cad:  # the n-gram member learns the edits too ("not good", "waste"), as the BiLSTM did in stage one
        for p in cad_train:
            teacher_tokens += [tokenize(p.original), tokenize(p.revised)]
            teacher_labels += [p.original_label, 1 - p.original_label]
    ngram = teacher.NgramLogits.fit(teacher_tokens, teacher_labels, val_tokens, unsup_tokens, config.teacher_c)
    # CAD keeps its stage-one share of each epoch (~22 % of texts; 2 passes among 3.3x as many reviews would be 8 %): the
    # unlabelled reviews otherwise drown the minimal edits. Measured from one stage one (docs/robustness.md, runs D and F):
    # CAD dev revisions 86.5 -> 89.0 %, pairs 79.2 -> 82.4 %, validation accuracy equal, validation loss 0.206 -> 0.211.
    grown = (len(train_ids) + len(unsup_ids)) / len(train_ids) if config.distill_keep_cad_share else 1.0
    stage_two = dataclasses.replace(config, epochs=config.distill_epochs, lr=config.distill_lr, cad_passes=config.cad_passes * grown)
    history, figures = stage_one, {"val_accuracy_stage_one": stage_one.val_accuracy[stage_one.best_epoch - 1]}
    for i, (member_val, _) in enumerate(members, start=2):
        figures[f"val_accuracy_lstm_member_{i}"] = accuracy(member_val, y_val)
        log.info("teacher BiLSTM member %d: validation accuracy %.4f", i, figures[f"val_accuracy_lstm_member_{i}"])

    def lstm_logits(ids: list[list[int]], part: int) -> torch.Tensor:
        """The teacher's BiLSTM logits: the student's, averaged with the members' (part 0: validation, 1: unlabelled)."""
        return torch.stack([predict_logits(model, ids, config.eval_batch_size, device), *(m[part] for m in members)]).mean(0)

    for round_ in range(1, config.distill_rounds + 1):
        lstm_val, lstm_unsup = lstm_logits(val_ids, 0), lstm_logits(unsup_ids, 1)  # [N], [M]
        targets, teacher_figures = teacher.soft_labels(ngram, lstm_val, lstm_unsup, y_val)
        prefix = "" if round_ == 1 else f"round_{round_}_"  # round one keeps the names earlier manifests used
        figures |= {prefix + k: v for k, v in teacher_figures.items()}
        labels: list[float] = [*map(float, train_labels), *targets]
        history = history.then(
            fit(model, train_ids + unsup_ids, labels, val_ids, y_val.tolist(), stage_two, device, pairs, config.distill_ema, local)
        )
    return history, figures


def local_supervision(
    dataset: data.Dataset, encode: Callable[[list[str]], list[int]], config: TrainConfig
) -> tuple[Local | None, dict[str, float]]:
    """Stage two's sentence-level supervision (`--counterfactuals N`, `--distill-sentences N`), or None when both are off.

    The negation-scope teacher is fitted on train reviews only; counterfactuals come from sentences of train and
    unlabelled reviews, distilled sentences from unlabelled ones. Validation, test and the holdout are never read.
    """
    if not (config.counterfactuals or config.distill_sentences):
        return None, {}
    start = time.perf_counter()
    lexicon = negation.ScopeLexicon.fit([r.text for r in dataset.train], [r.label for r in dataset.train], seed=config.seed)
    pairs = (
        counterfactuals.generate([r.text for r in dataset.train + dataset.unsup], lexicon, config.counterfactuals, config.seed)
        if config.counterfactuals
        else []
    )
    taught = negation.labelled_sentences([r.text for r in dataset.unsup], lexicon, config.distill_sentences, config.seed)
    figures: dict[str, float] = {
        "counterfactuals": len(pairs),
        **{f"counterfactuals_{k}": sum(p.kind == k for p in pairs) for k in counterfactuals.KINDS},
        "sentences": len(taught),
        "sentences_mean_target": sum(p for _, p in taught) / len(taught) if taught else float("nan"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("local supervision: %s", figures)
    local = Local(
        [encode(t) for t, _ in taught],
        [p for _, p in taught],
        [PairIds(encode(p.original), encode(p.edited), p.label) for p in pairs],
        config.counterfactual_pair_weight,
    )
    return local, figures


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
        "distill_sentences",
        "teacher_cad",
        "teacher_c",
        "teacher_lstms",  # its extra members are stage ones of their own, trained after the cached one
    }
)


def stage_one_key(config: TrainConfig, vocab: Vocab, data_sha256: str, holdout_sha256: str) -> str:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in AFTER_STAGE_ONE}
    return cache.key({"data": data_sha256, "holdout": holdout_sha256, "vocab": cache.vocab_digest(vocab), "config": settings})


def stage_one(
    model: SentimentLSTM,
    corpus: list[list[str]],
    train: tuple[list[list[int]], list[int]],
    val: tuple[list[list[int]], list[int]],
    pairs: list[PairIds],
    vocab: Vocab,
    config: TrainConfig,
    device: torch.device,
    hashes: tuple[str, str],
) -> tuple[History, dict[str, float]]:
    """word2vec (and optionally LM) pre-training on `corpus` (train + unlabelled tokens), then the supervised fit with CAD.

    hashes = (data sha256, holdout sha256), for the LM cache key. Returns the fit's history and the LM's figures.
    """
    if config.word2vec:
        t0 = time.perf_counter()
        workers = config.w2v_workers or os.cpu_count() or 1
        matrix = word2vec_matrix(corpus, vocab, config.embed_dim, config.w2v_epochs, config.w2v_skipgram, config.seed, workers)
        model.embedding.weight.data.copy_(matrix)
        log.info("word2vec pre-training took %.0fs", time.perf_counter() - t0)
    lm_figures: dict[str, float] = {}
    if config.lm:
        key = lm.cache_key(config, vocab, *hashes)
        embedding = model.embedding.weight.data if config.word2vec else None
        bilm, lm_figures = lm.pretrained(corpus, vocab, embedding, config, key, device)
        lm.initialise(model, bilm)
        del bilm
    model.to(device)
    return fit(model, *train, *val, config, device, pairs), lm_figures


def teacher_members(
    corpus: list[list[str]],
    train: tuple[list[list[int]], list[int]],
    val: tuple[list[list[int]], list[int]],
    unsup_ids: list[list[int]],
    pairs: list[PairIds],
    vocab: Vocab,
    config: TrainConfig,
    device: torch.device,
    hashes: tuple[str, str],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The teacher's extra BiLSTM members: stage one again with seeds seed+1 .. seed+K-1 -> (validation [N], unlabelled [M])
    logits each.

    Why: members that differ in initialisation, word2vec and batch order err on different reviews, so their mean is a
    better teacher than one; only the student is shipped, so serving cost does not change. Each member runs in a forked
    RNG, so the student's own draws (and so `--teacher-lstms 1`) are those of a run without members.
    """
    members = []
    for i in range(1, config.teacher_lstms):
        member_config = dataclasses.replace(config, seed=config.seed + i)
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if device.type == "cuda" else []):
            torch.manual_seed(member_config.seed)
            member = SentimentLSTM(len(vocab), config.embed_dim, config.hidden, config.dropout, pooling=config.pooling)
            stage_one(member, corpus, train, val, pairs, vocab, member_config, device, hashes)
        log.info("teacher BiLSTM member %d of %d (seed %d) trained", i + 1, config.teacher_lstms, member_config.seed)
        members.append(
            (
                predict_logits(member, val[0], config.eval_batch_size, device),
                predict_logits(member, unsup_ids, config.eval_batch_size, device),
            )
        )
    return members


def train(config: TrainConfig) -> Path:
    """Run the whole pipeline; returns the artifact path."""
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    path = data.find(config.data, config.download)
    log.info("data %s, device %s", path, device)
    cad_folder = cad.find(config.cad_dir, required=config.cad)  # without CAD only its robustness figures are skipped
    cad_dev = (
        cad.read(cad_folder / "dev_paired.tsv") if cad_folder else []
    )  # read first: a missing file fails in a second, not after the data
    holdout = Holdout.read() if config.holdout else Holdout.none()
    dataset = data.load(path, config.validation_fraction, data.split_seed(dataclasses.asdict(config)), config.limit, holdout.paths)
    log.info(
        "train %d, validation %d, test %d, unlabelled %d; %d robustness-holdout reviews left out",
        len(dataset.train),
        len(dataset.validation),
        len(dataset.test),
        len(dataset.unsup),
        dataset.excluded,
    )

    def tokens_of(reviews: list[data.Review], what: str) -> list[list[str]]:
        return [tokenize(r.text) for r in tqdm(reviews, desc=f"tokenize {what}", unit="review", leave=False)]

    train_tokens, unsup_tokens = tokens_of(dataset.train, "train"), tokens_of(dataset.unsup, "unlabelled")
    vocab = Vocab.build(train_tokens + unsup_tokens, config.vocab_size, config.min_freq)
    encoder = TextEncoder(vocab, config.max_length, config.head_length)

    def ids_of(tokens: list[list[str]]) -> list[list[int]]:
        return [vocab.encode(t, encoder.max_length, encoder.head_length).ids for t in tokens]

    train_ids = ids_of(train_tokens)
    val_ids = [encoder.encode(r.text).ids for r in dataset.validation]
    cad_train = cad_pairs(cad_folder, config, dataset) if config.cad and cad_folder else []
    pairs = [PairIds(encoder.encode(p.original).ids, encoder.encode(p.revised).ids, p.original_label) for p in cad_train]
    model = SentimentLSTM(len(vocab), config.embed_dim, config.hidden, config.dropout, pooling=config.pooling)
    train_labels, val_labels = [r.label for r in dataset.train], [r.label for r in dataset.validation]
    key = stage_one_key(config, vocab, dataset.sha256, holdout.sha256)
    saved = cache.load(config.stage_one_cache, key, STAGE_ONE)
    fit_start = time.perf_counter()
    if saved is not None:
        model.load_state_dict(saved["state"])
        model.to(device)
        history, lm_figures = History(**saved["history"]), saved["lm"]
        torch.set_rng_state(saved["torch_rng"])  # stage two's dropout draws as it would have straight after stage one
    else:
        corpus, hashes = train_tokens + unsup_tokens, (dataset.sha256, holdout.sha256)
        history, lm_figures = stage_one(
            model, corpus, (train_ids, train_labels), (val_ids, val_labels), pairs, vocab, config, device, hashes
        )
        cache.save(
            config.stage_one_cache,
            key,
            {
                "state": {k: v.cpu() for k, v in model.state_dict().items()},
                "history": dataclasses.asdict(history),
                "lm": lm_figures,
                "torch_rng": torch.get_rng_state(),
            },
            STAGE_ONE,
        )
    y_val = torch.tensor(val_labels, dtype=torch.float32)
    distillation: dict[str, float] = {}
    if config.distill:
        # the windows join the unlabelled reviews: the teacher labels them and the student learns them alike
        transfer = unsup_tokens + windows.windows(unsup_tokens, config.distill_windows, config.seed)
        if config.distill_windows:
            log.info("stage two: %d unlabelled reviews + %d random windows", len(unsup_tokens), len(transfer) - len(unsup_tokens))
        unsup = (transfer, ids_of(transfer))
        members = teacher_members(
            train_tokens + unsup_tokens,
            (train_ids, train_labels),
            (val_ids, val_labels),
            unsup[1],
            pairs,
            vocab,
            config,
            device,
            (dataset.sha256, holdout.sha256),
        )
        val = ([tokenize(r.text) for r in dataset.validation], val_ids, y_val)
        local, local_figures = local_supervision(dataset, lambda t: vocab.encode(t, encoder.max_length, encoder.head_length).ids, config)
        history, distillation = distill(
            model, history, (train_tokens, train_ids, train_labels), unsup, val, cad_train, pairs, config, device, members, local
        )
        distillation["windows"] = len(transfer) - len(unsup_tokens)
        distillation |= {f"local_{k}": v for k, v in local_figures.items()}
    del unsup_tokens
    fit_seconds = time.perf_counter() - fit_start

    val_logits = predict_logits(model, val_ids, config.eval_batch_size, device)
    temperature = fit_temperature(val_logits, y_val)
    model.temperature.fill_(temperature)
    calibration = {
        "temperature": temperature,
        "val_ece_15_before": expected_calibration_error(torch.sigmoid(val_logits), y_val),
        "val_ece_15_after": expected_calibration_error(torch.sigmoid(val_logits / temperature), y_val),
        "val_brier_before": brier(torch.sigmoid(val_logits), y_val),
        "val_brier_after": brier(torch.sigmoid(val_logits / temperature), y_val),
    }
    log.info("calibration: %s", calibration)

    # The test set is touched once, here, after every choice is made.
    y_test = torch.tensor([float(r.label) for r in dataset.test])
    test_logits = predict_logits(model, [encoder.encode(r.text).ids for r in dataset.test], config.eval_batch_size, device)
    test = metrics(torch.sigmoid(test_logits / temperature), y_test)
    test["ece_15_uncalibrated"] = expected_calibration_error(torch.sigmoid(test_logits), y_test)
    test["brier_uncalibrated"] = brier(torch.sigmoid(test_logits), y_test)
    log.info("test: accuracy %.4f, f1 %.4f, auc %.4f, ece %.4f", test["accuracy"], test["f1"], test["roc_auc"], test["ece_15"])

    def calibrated(texts: list[str]) -> torch.Tensor:
        ids = [encoder.encode(t).ids for t in texts]
        return torch.sigmoid(predict_logits(model, ids, config.eval_batch_size, device) / temperature)

    robust = robustness(calibrated, cad_dev, short_texts.build((r.text, r.label) for r in dataset.validation)) if cad_dev else {}
    if robust:
        log.info(
            "CAD dev: originals %.4f, revisions %.4f, both right %.4f; short texts %.4f",
            robust["cad_dev_original"]["accuracy"],
            robust["cad_dev_revised"]["accuracy"],
            robust["cad_dev_pairs"]["both_right"],
            robust["short_text"].get("accuracy", float("nan")),
        )

    behavioural = behaviour.pass_rates(calibrated)
    log.info("behavioural suite, validation half: %s", {k: round(v, 4) for k, v in behavioural["validation"].items()})

    manifest = Manifest(
        name=config.name,
        version=config.version,
        labels=LABELS,
        vocab_size=len(vocab),
        max_length=config.max_length,
        head_length=config.head_length,
        normalizer_version=NORMALIZER_VERSION,
        data_sha256=dataset.sha256,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        git_commit=report.git_commit(),
        metrics={
            "test": test,
            "validation": {"accuracy": history.val_accuracy[history.best_epoch - 1], **calibration},
            "robustness": robust,
            "behaviour": behavioural,
        },
        training={
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
            "hardware": hardware(device),
            "fit_seconds": round(fit_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "best_epoch": history.best_epoch,
            "parameters": sum(p.numel() for p in model.parameters()),
            "cad_train_pairs": len(pairs),
            "lm_pretraining": lm_figures,
            "stage_one_from_cache": saved is not None,
            "distillation": distillation,
        },
        holdout=holdout.manifest_entry(dataset.excluded) if config.holdout else {},
    )
    final, checks = export(model, vocab, manifest, config.out, val_ids[:256], dataset.validation[0].text)
    report.write(
        config.out,
        final,
        history,
        checks,
        torch.sigmoid(test_logits / temperature),
        y_test,
        torch.sigmoid(val_logits),
        torch.sigmoid(val_logits / temperature),
        y_val,
        val_ids,
    )
    return config.out
