"""Training on a tiny slice of the real data: the whole pipeline, export checks included, in well under a minute."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import tarfile
from pathlib import Path

import pytest
import torch

from contract import artifact
from contract.predictor import pad_batch
from training import data
from training.__main__ import main, parse
from training.calibrate import brier, expected_calibration_error, fit_temperature
from training.loop import PairIds, bucketed, crop_to_shortest, imdb_loss, pair_batches, pair_loss
from training.model import SentimentLSTM

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb.tar.gz"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"IMDb tarball not at {DATA}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DATA.exists():
        pytest.skip(f"IMDb tarball not at {DATA}")
    out = tmp_path_factory.mktemp("train") / "model.pt"
    argv = [
        "--data",
        str(DATA),
        "--cad-dir",
        str(DATA.parent / "cad"),
        "--cad",
        "--pair-weight",
        "0.5",
        "--out",
        str(out),
        "--limit",
        "150",
        "--epochs",
        "1",
        "--w2v-epochs",
        "1",
        "--embed-dim",
        "16",
        "--hidden",
        "8",
        "--vocab-size",
        "3000",
        "--batch-size",
        "32",
        "--lm",
        "--lm-tokens",
        "4000",
        "--lm-bptt",
        "20",
        "--lm-batch",
        "8",
        "--lm-cache",
        str(out.parent / "lm.pt"),
        "--lr-decay",
        "2.6",
        "--distill",
        "--distill-epochs",
        "1",
        "--teacher-cad",
    ]
    assert main(argv) == 0
    return out


@needs_data
def test_smoke_training_exports_a_loadable_model_with_its_card(trained: Path) -> None:
    loaded = artifact.load(trained)
    m = loaded.manifest
    assert m.labels == ("negative", "positive")
    assert m.vocab_size == len(loaded.vocab) <= 3000
    assert m.max_length == 400 and m.head_length == 100
    assert len(m.data_sha256) == 64
    assert set(m.metrics["test"]) >= {"accuracy", "f1", "roc_auc", "ece_15", "brier"}
    assert m.metrics["test"]["n"] == 300  # 150 per class
    assert m.training["cad_train_pairs"] == 150  # --limit caps the CAD pairs too
    assert m.training["lm_pretraining"]["steps"] == 25 and not m.training["lm_pretraining"]["from_cache"]  # 4000 / (8 x 20)
    teacher = m.training["distillation"]
    assert teacher["unlabelled"] == 300 and teacher["windows"] == 150  # 150 reviews + one random window of each (default)
    assert teacher["ngram_features"] > 0 and 0 <= teacher["val_accuracy_teacher"] <= 1
    assert len(json.loads((trained.parent / "metrics.json").read_text())["history"]["val_loss"]) == 2  # stage one + stage two
    assert m.holdout["reviews_dropped"] == 753 and m.holdout["listed"] == 753 and len(m.holdout["sha256"]) == 64
    robust = m.metrics["robustness"]
    assert robust["cad_dev_original"]["n"] == robust["cad_dev_revised"]["n"] == robust["cad_dev_pairs"]["n"] == 245
    assert 0 <= robust["cad_dev_pairs"]["both_right"] <= min(robust["cad_dev_original"]["accuracy"], robust["cad_dev_revised"]["accuracy"])
    ids, lengths = pad_batch([loaded.encoder.encode(t).ids for t in ["A fine film.", "Terrible.<br />Awful!"]])
    with torch.inference_mode():
        p = loaded.module(ids, lengths)
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())
    card = (trained.parent / "MODEL_CARD.md").read_text()
    assert "python -m training" in card and "accuracy" in card
    command = next(line.strip() for line in card.splitlines() if line.strip().startswith("python -m training --"))
    rebuilt = parse([*command.split()[3:], "--out", str(trained)])  # the card's command is a valid one, for the same run
    assert dataclasses.asdict(rebuilt) == {
        k: (Path(v) if k in ("out", "data", "cad_dir", "lm_cache", "stage_one_cache") and v else v) for k, v in m.training["config"].items()
    }
    assert "| LM pre-training (forward + backward) | 0.0 M tokens per direction" in card
    assert "| knowledge distillation | stage two on 150 unlabelled reviews" in card
    assert "CAD dev revisions" in card and "left out of every training step: 753" in card
    summary = json.loads((trained.parent / "metrics.json").read_text())
    assert summary["export_checks"]["parity_max_abs_diff"] <= 1e-5
    assert summary["export_checks"]["padding_max_abs_diff"] <= 1e-5
    assert summary["export_checks"]["bf16_padding_max_abs_diff"] <= 1e-3 and summary["export_checks"]["bf16_routes_max_abs_diff"] <= 1e-3
    assert "- bf16 route (tolerance 1e-3 within the route)" in card
    for plot in ("learning_curves.png", "reliability.png", "confusion_matrix.png"):
        assert (trained.parent / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_data
def test_validation_split_is_movie_disjoint() -> None:
    ds = data.load(DATA, limit=2000)
    train_movies = {r.movie for r in ds.train}
    val_movies = {r.movie for r in ds.validation}
    assert train_movies.isdisjoint(val_movies)
    assert 0.05 < len(ds.validation) / (len(ds.train) + len(ds.validation)) < 0.2
    assert all(r.movie.startswith("tt") for r in ds.train[:100])


def test_missing_dataset_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "nowhere.tar.gz"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset not found") and "--data" in err and "\n" not in err


def test_corrupt_dataset_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "aclImdb.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    assert main(["--data", str(bad), "--no-cad", "--out", str(tmp_path / "m.pt")]) == 2  # CAD's files are checked first
    err = capsys.readouterr().err.strip()
    assert "not a readable aclImdb tarball" in err and "\n" not in err


@needs_data
def test_missing_cad_is_one_line_error_naming_the_way_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", str(DATA), "--cad-dir", str(tmp_path / "no-cad"), "--limit", "20", "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CAD file not found") and "--no-cad" in err and "acmi-lab" in err and "\n" not in err


def test_tarball_without_reviews_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.tar.gz"
    readme = tmp_path / "README"
    readme.write_text("not imdb")
    with tarfile.open(other, "w:gz") as tar:
        tar.add(readme, arcname="aclImdb/README")
    assert main(["--data", str(other), "--no-cad", "--out", str(tmp_path / "m.pt")]) == 2
    assert "has no reviews under train/pos" in capsys.readouterr().err


def test_bucketed_batches_cover_every_index_once_with_similar_lengths() -> None:
    import random

    lengths = [random.Random(1).randint(1, 500) for _ in range(1000)]
    batches = bucketed(lengths, 16, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 100  # vs ~470 for random batches


def test_temperature_scaling_fixes_overconfidence() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, generator=g) * 2
    labels = torch.bernoulli(torch.sigmoid(true_logits), generator=g)
    overconfident = true_logits * 3
    t = fit_temperature(overconfident, labels)
    assert 2.5 < t < 3.5
    before = expected_calibration_error(torch.sigmoid(overconfident), labels)
    after = expected_calibration_error(torch.sigmoid(overconfident / t), labels)
    assert after < before / 2
    assert brier(torch.sigmoid(overconfident / t), labels) < brier(torch.sigmoid(overconfident), labels)


def test_ece_of_a_perfectly_calibrated_constant_is_zero() -> None:
    probs = torch.full((1000,), 0.7)
    labels = torch.tensor([1.0] * 700 + [0.0] * 300)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)


def test_crop_to_shortest_equalises_lengths_keeping_head_and_tail() -> None:
    batch = [list(range(10)), list(range(100, 108)), list(range(200, 212))]
    cropped = crop_to_shortest(batch)
    assert [len(ids) for ids in cropped] == [8, 8, 8]
    assert cropped[1] == batch[1]  # the shortest is untouched
    assert cropped[0] == [0, 1, 4, 5, 6, 7, 8, 9]  # 2 from the head, 6 from the tail
    assert cropped[2][:2] == [200, 201] and cropped[2][-1] == 211


def test_pair_batches_cover_each_pair_as_often_as_asked() -> None:
    import random
    from collections import Counter

    pairs = [PairIds([1] * n, [2] * n, n % 2) for n in range(1, 11)]
    batches = pair_batches(pairs, 2.5, 4, random.Random(0))
    counts = Counter(i for b in batches for i in b)
    assert sum(counts.values()) == 25 and set(counts.values()) <= {2, 3} and set(counts) == set(range(10))


def test_pair_term_penalises_an_edit_that_moves_the_logit_the_wrong_way() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self, z: list[float]) -> None:
            super().__init__()
            self.z = torch.tensor(z)

        def logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.z

    pair = [PairIds([3, 4, 5], [3, 6, 5], 1)]  # a positive original, its negative revision
    right, wrong = Fixed([1.0, 0.5]), Fixed([0.5, 1.0])  # z_original, z_revised
    assert pair_loss(right, pair, 1.0, torch.device("cpu")) - pair_loss(right, pair, 0.0, torch.device("cpu")) < 0.48
    assert pair_loss(wrong, pair, 1.0, torch.device("cpu")) - pair_loss(wrong, pair, 0.0, torch.device("cpu")) > 0.97


@needs_data
def test_reexport_keeps_weights_vocab_and_hand_notes_and_bumps_the_version(trained: Path, tmp_path: Path) -> None:
    from training.export import reexport

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("model.pt", "MODEL_CARD.md", "metrics.json"):
        (folder / name).write_bytes((trained.parent / name).read_bytes())
    card = folder / "MODEL_CARD.md"
    card.write_text(card.read_text().replace("## Export checks", "## Notes\n\nA hand-written note.\n\n## Export checks"))
    old = artifact.load(folder / "model.pt")
    texts = ["A wonderful film.", "Dull and boring, a waste of time.", "It was fine, I guess, the plot was thin but the actors good."]

    final, checks = reexport(folder / "model.pt", folder / "model.pt", "9.9.9", texts * 8)

    new = artifact.load(folder / "model.pt")
    assert new.manifest.version == final.version == "9.9.9"
    assert new.manifest.weights_sha256 == old.manifest.weights_sha256 and new.vocab == old.vocab
    assert new.manifest.metrics == old.manifest.metrics
    assert new.manifest.training["reexported"]["from_version"] == old.manifest.version
    assert checks["previous_file_max_abs_diff"] <= 1e-5 and checks["routes_max_abs_diff"] <= 1e-5
    assert checks["bf16_vs_fp32_max_abs_diff"] <= 0.05 and artifact.load(folder / "model.pt", precision="bf16").precision == "bf16"
    x, lengths = pad_batch([old.encoder.encode(t).ids for t in texts])
    with torch.inference_mode():
        assert float((new.module(x, lengths) - old.module(x, lengths)).abs().max()) <= 1e-5
    text = card.read_text()
    assert text.startswith(f"# Model card: {old.manifest.name} 9.9.9\n")
    assert "A hand-written note." in text and f"Re-exported as 9.9.9 from {old.manifest.version}" in text
    assert json.loads((folder / "metrics.json").read_text())["version"] == "9.9.9"


def test_adversarial_term_is_the_loss_at_a_worse_point_than_a_random_one_of_the_same_radius() -> None:
    torch.manual_seed(0)
    model = SentimentLSTM(50, 8, 8, 0.0).eval()  # no dropout noise between the two forwards
    ids, lengths = pad_batch([[random.Random(i).randrange(2, 50) for _ in range(10)] for i in range(8)])  # [8, 10]
    y = torch.tensor([float(i % 2) for i in range(8)])
    clean = float(imdb_loss(model, ids, lengths, y, 0.0))
    adversarial = float(imdb_loss(model, ids, lengths, y, 0.1)) - clean
    x = model.embedding(ids).detach()
    noise = torch.randn_like(x)
    noise = noise * (0.1 * x.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1))[:, None, None]
    randomised = float(torch.nn.functional.binary_cross_entropy_with_logits(model.logits_from_embeddings(x + noise, lengths), y))
    assert adversarial > randomised > 0 and adversarial > clean


@needs_data
def test_the_same_run_twice_gives_the_same_weights_and_a_cached_stage_one_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reproducible retraining: word2vec on one worker with a process-independent hash, seeded torch, the same teacher.

    Run b caches stage one, run c reads it back: the cache must give the weights a straight run gives, or stage-two
    variants compared from it would differ for a reason other than their settings. Run d adds a second round.
    """
    tiny = ["--data", str(DATA), "--cad-dir", str(DATA.parent / "cad"), "--limit", "150", "--epochs", "1", "--distill-epochs", "1"]
    tiny += ["--w2v-epochs", "1", "--embed-dim", "16", "--hidden", "8", "--vocab-size", "2000", "--batch-size", "32", "--threads", "1"]
    cached = ["--stage-one-cache", str(tmp_path / "stage-one.pt")]
    weights = []
    for run, extra in (("a", []), ("b", cached), ("c", cached), ("d", [*cached, "--distill-rounds", "2"])):
        with caplog.at_level(logging.INFO, logger="training.cache"):
            caplog.clear()
            assert main([*tiny, *extra, "--out", str(tmp_path / run / "m.pt")]) == 0
        loaded = artifact.load(tmp_path / run / "m.pt")
        weights.append(loaded.module.state_dict())
        assert loaded.manifest.training["stage_one_from_cache"] == (run in "cd")
        assert ("stage one (word2vec, LM, fit) from cache" in caplog.text) == (run in "cd")
        assert ("(stage one from the cache" in (tmp_path / run / "MODEL_CARD.md").read_text()) == (run in "cd")
    assert weights[0].keys() == weights[1].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) and torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[3][k]) for k in weights[0])  # the second round trained on
    assert "round_2_val_accuracy_teacher" in artifact.load(tmp_path / "d" / "m.pt").manifest.training["distillation"]
    assert "; round 2: teacher " in (tmp_path / "d" / "MODEL_CARD.md").read_text()

    # Run e: a teacher of two BiLSTMs. The extra member trains in a forked RNG, so the student's stage one is run a's.
    assert main([*tiny, "--teacher-lstms", "2", "--out", str(tmp_path / "e" / "m.pt")]) == 0
    history_a, history_e = (json.loads((tmp_path / run / "metrics.json").read_text())["history"] for run in "ae")
    stage_one_epoch = ("train_loss", "val_loss", "val_accuracy")
    assert [history_a[k][0] for k in stage_one_epoch] == [history_e[k][0] for k in stage_one_epoch]
    loaded = artifact.load(tmp_path / "e" / "m.pt")
    assert not all(torch.equal(weights[0][k], v) for k, v in loaded.module.state_dict().items())  # another teacher
    figures = loaded.manifest.training["distillation"]
    assert 0 <= figures["val_accuracy_lstm_member_2"] <= 1 and "val_accuracy_lstm_member_3" not in figures
    assert "as the mean of 2 BiLSTMs (the others alone: " in (tmp_path / "e" / "MODEL_CARD.md").read_text()

    # Run f: without the random windows (on by default); stage one is run a's, the teacher labels half as many texts.
    assert main([*tiny, "--distill-windows", "0", "--out", str(tmp_path / "f" / "m.pt")]) == 0
    history_f = json.loads((tmp_path / "f" / "metrics.json").read_text())["history"]
    assert [history_a[k][0] for k in stage_one_epoch] == [history_f[k][0] for k in stage_one_epoch]
    loaded = artifact.load(tmp_path / "f" / "m.pt")
    assert not all(torch.equal(weights[0][k], v) for k, v in loaded.module.state_dict().items())  # fewer transfer texts
    with_windows, without = (artifact.load(tmp_path / run / "m.pt").manifest.training["distillation"] for run in "af")
    assert with_windows["unlabelled"] == 2 * without["unlabelled"] and with_windows["windows"] == without["unlabelled"]
    assert without["windows"] == 0
    card_a, card_f = ((tmp_path / run / "MODEL_CARD.md").read_text() for run in "af")
    assert f"and {with_windows['windows']:,} random windows of them" in card_a and "random windows" not in card_f


@needs_data
@pytest.mark.slow  # three tiny runs: ~1.5 min
def test_sentence_level_levers_keep_stage_one_and_reach_stage_two_the_manifest_and_the_card(tmp_path: Path) -> None:
    """--counterfactuals / --contrast-pairs / --distill-sentences act after stage one only; off (the default) leaves no trace."""
    tiny = ["--data", str(DATA), "--cad-dir", str(DATA.parent / "cad"), "--limit", "150", "--epochs", "1", "--distill-epochs", "1"]
    tiny += ["--w2v-epochs", "1", "--embed-dim", "16", "--hidden", "8", "--vocab-size", "2000", "--batch-size", "32", "--threads", "1"]
    levers = ["--counterfactuals", "40", "--distill-sentences", "60", "--contrast-pairs", "20"]
    # "reseeded": the same levers drawn again from the same stage one (--stage-two-seed), for their run-to-run spread.
    for run, extra in (("off", []), ("on", levers), ("reseeded", [*levers, "--stage-two-seed", "2"])):
        assert main([*tiny, *extra, "--out", str(tmp_path / run / "m.pt")]) == 0
    off, on, reseeded = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("off", "on", "reseeded"))
    stage_one_epoch = ("train_loss", "val_loss", "val_accuracy")
    for other in (on, reseeded):
        assert [off["history"][k][0] for k in stage_one_epoch] == [other["history"][k][0] for k in stage_one_epoch]
    weights_off, weights_on, weights_reseeded = (
        artifact.load(tmp_path / run / "m.pt").module.state_dict() for run in ("off", "on", "reseeded")
    )
    assert not all(torch.equal(weights_off[k], weights_on[k]) for k in weights_off)
    assert not all(torch.equal(weights_on[k], weights_reseeded[k]) for k in weights_on)
    local = on["training"]["distillation"]
    assert 0 < local["local_counterfactuals"] <= 40 and 0 < local["local_sentences"] <= 60 and 0 < local["local_contrasts"] <= 20
    assert not any(k.startswith("local_") for k in off["training"]["distillation"])
    assert "generated counterfactual pairs of one-liners" in (tmp_path / "on" / "MODEL_CARD.md").read_text()
    assert '"A but B" / "B but A" pairs' in (tmp_path / "on" / "MODEL_CARD.md").read_text()
    assert "negated_negative" in on["metrics"]["behaviour"]["test"]
    assert "| negated negative |" in (tmp_path / "on" / "MODEL_CARD.md").read_text()


def test_moving_average_is_what_validation_judges_and_the_fit_keeps() -> None:
    """Stage two's --distill-ema: the kept weights are the average (here ~frozen at the first step), and the
    validation loss in the history is that of the weights returned, not of the raw ones the optimiser moved."""
    from training.config import TrainConfig
    from training.loop import Examples, fit, predict_logits

    rng = random.Random(0)
    ids = [[rng.randrange(2, 50) for _ in range(rng.randrange(5, 15))] for _ in range(96)]
    labels = [int(3 in x) for x in ids]
    config = TrainConfig(epochs=2, batch_size=8, patience=5, lr=1e-2, seed=0)
    torch.manual_seed(0)
    start = SentimentLSTM(50, 8, 8, 0.0)
    kept = {}
    for decay in (0.0, 0.999999):
        model = SentimentLSTM(50, 8, 8, 0.0)
        model.load_state_dict(start.state_dict())
        history = fit(model, Examples(ids, labels), Examples(ids[:32], labels[:32]), config, torch.device("cpu"), ema=decay)
        logits = predict_logits(model, ids[:32], 32, torch.device("cpu"))
        returned_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels[:32], dtype=torch.float32))
        assert float(returned_loss) == pytest.approx(history.val_loss[history.best_epoch - 1], abs=1e-6)
        kept[decay] = torch.cat([p.detach().flatten() for p in model.parameters()])
    origin = torch.cat([p.detach().flatten() for p in start.parameters()])
    assert (kept[0.999999] - origin).norm() < 0.05 * (kept[0.0] - origin).norm()


@needs_data
def test_split_seed_keeps_the_validation_set_while_the_seed_varies() -> None:
    """Runs of other initialisations must be judged on one validation set; with --split-seed none the seed draws the split."""

    def split(argv: list[str]) -> list[str]:
        config = dataclasses.asdict(parse(argv))
        return [r.text for r in data.load(DATA, 0.1, data.split_seed(config), 40).validation]

    assert split(["--seed", "3"]) == split(["--seed", "0", "--split-seed", "0"])  # the default split is seed 0's
    assert split(["--seed", "3", "--split-seed", "none"]) != split(["--seed", "0", "--split-seed", "none"])
    assert parse(["--split-seed", "none"]).split_seed is None and parse(["--limit", "7"]).limit == 7
    assert data.split_seed({"seed": 3}) == 3 and data.split_seed({"seed": 3, "split_seed": None}) == 3  # old manifests
