"""The model card: metrics.json, MODEL_CARD.md and PNG plots written beside the artifact."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contract import artifact
from contract.manifest import Manifest
from training.config import TrainConfig
from training.loop import History

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")  # the card's text; `_card` fills in the figures


@torch.inference_mode()
def throughput(path: Path, texts_ids: list[list[int]], batch_sizes: tuple[int, ...] = (1, 64), seconds: float = 3.0) -> dict[str, float]:
    """Reviews/s of the saved artifact at each batch size, on real review lengths."""
    from contract.predictor import pad_batch

    module = artifact.load(path).module
    out = {}
    for bs in batch_sizes:
        batches = [pad_batch(texts_ids[i : i + bs]) for i in range(0, min(len(texts_ids), bs * 50), bs)]
        module(*batches[0])  # warm-up: the first TorchScript call optimises the graph
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            x, lengths = batches[i % len(batches)]
            module(x, lengths)
            done, i = done + len(lengths), i + 1
        out[f"batch_{bs}_reviews_per_s"] = round(done / (time.perf_counter() - start), 1)
    return out


@dataclass(frozen=True)
class Scores:
    """The probabilities the plots are drawn from: calibrated test [N], and validation before / after the temperature [M]."""

    test: torch.Tensor
    y_test: torch.Tensor
    val_before: torch.Tensor
    val_after: torch.Tensor
    y_val: torch.Tensor


def _figure(path: Path, draw: Callable[[Any], None], size: tuple[float, float], columns: int = 1) -> None:
    """One PNG: `draw` fills the axes (a tuple of them when `columns` > 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=size)
    draw(axes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _learning_curves(axes: Any, history: History) -> None:
    a, b = axes
    epochs = range(1, len(history.train_loss) + 1)
    a.plot(epochs, history.train_loss, "o-", label="train")
    a.plot(epochs, history.val_loss, "o-", label="validation")
    a.axvline(history.best_epoch, ls="--", c="grey", label="kept epoch")
    a.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    a.legend()
    b.plot(epochs, history.val_accuracy, "o-", c="C1")
    b.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")


def _reliability(ax: Any, scores: Scores) -> None:
    edges = torch.linspace(0, 1, 16)
    for probs, labels, name in (
        (scores.val_before, scores.y_val, "validation, T=1"),
        (scores.val_after, scores.y_val, "validation, calibrated"),
        (scores.test, scores.y_test, "test, calibrated"),
    ):
        index = torch.bucketize(probs, edges[1:-1])
        xs, ys = [], []
        for k in range(15):
            m = index == k
            if m.sum() >= 10:
                xs.append(float(probs[m].mean()))
                ys.append(float(labels[m].mean()))
        ax.plot(xs, ys, "o-", label=name)
    ax.plot([0, 1], [0, 1], "--", c="grey")
    ax.set(xlabel="predicted P(positive)", ylabel="observed fraction positive", title="Reliability (15 bins)")
    ax.legend()


def _confusion(ax: Any, confusion: list[list[int]]) -> None:
    ax.imshow(confusion, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{confusion[i][j]:,}", ha="center", va="center", fontsize=12)
    names = ["negative", "positive"]
    ax.set(
        xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="true", title="Test confusion matrix"
    )


def _plots(folder: Path, history: History, scores: Scores, confusion: list[list[int]]) -> None:
    _figure(folder / "learning_curves.png", lambda axes: _learning_curves(axes, history), (10, 4), columns=2)
    _figure(folder / "reliability.png", lambda ax: _reliability(ax, scores), (5, 5))
    _figure(folder / "confusion_matrix.png", lambda ax: _confusion(ax, confusion), (4, 4))


def robustness_section(manifest: Manifest) -> str:
    """Off-distribution figures: CAD dev (minimal edits that flip the label) and short texts from validation."""
    robust = manifest.metrics.get("robustness")
    if not robust:
        return "## Robustness\n\nNot measured for this file (`python -m training.evaluate` computes it).\n"
    rows = [
        ("CAD dev originals", robust["cad_dev_original"]),
        ("CAD dev revisions (label flipped by a minimal edit)", robust["cad_dev_revised"]),
        ("short texts from validation reviews", robust["short_text"]),
    ]
    table = "\n".join(
        f"| {name} | {m['n']:,} | {m['accuracy']:.2%} | {m['ece_15']:.2%} |" if m["n"] else f"| {name} | 0 | n/a | n/a |"
        for name, m in rows
    )
    pairs = robust["cad_dev_pairs"]
    holdout = manifest.holdout
    left_out = (
        f"The {holdout['listed']} robustness-holdout reviews (list sha256 `{holdout['sha256'][:12]}…`) were left out of every "
        f"training step: {holdout['reviews_dropped']} of them were in this data."
        if holdout
        else "This model was trained **with** the robustness-holdout reviews, so its CAD originals are training data."
    )
    return f"""## Robustness (off the test set)

| set | n | accuracy | ECE (15 bins) |
|---|---:|---:|---:|
{table}
| CAD dev pairs with both members right | {pairs["n"]:,} | {pairs["both_right"]:.2%} | |

{left_out} The short-text set is the first and last sentence (4–30 words, carrying a
clear polar word) of validation reviews, labelled with the review's label: its labels are
noisy (hand-checked sample: 49 of 60 read as their label, so a reader of the sentence alone
scores ~82–89 %), see `training/short_texts.py`.
"""


def behaviour_section(manifest: Manifest) -> str:
    """The behavioural suite's pass rates per capability (training/behaviour.py): validation half chose, test half reports."""
    rates = manifest.metrics.get("behaviour")
    if not rates:
        return "## Behavioural suite\n\nNot measured for this file (`python -m training.evaluate --behaviour-only` computes it).\n"
    rows = "\n".join(
        f"| {name.replace('_', ' ')} | {rates['validation'][name]:.1%} | {rates['test'][name]:.1%} |" for name in rates["test"]
    )
    return f"""## Behavioural suite (one-liners; `training/behaviour.py`)

Pass rates per capability: templates filled from word lists and hand-written sentences, split by template and by
sentence into a validation half (used to choose) and a test half (reported only).

| capability | validation half | test half |
|---|---:|---:|
{rows}
"""


def write(path: Path, manifest: Manifest, history: History, checks: dict[str, float], scores: Scores, speed_ids: list[list[int]]) -> None:
    """metrics.json, MODEL_CARD.md and the plots after a training run."""
    _plots(path.parent, history, scores, manifest.metrics["test"]["confusion"])
    _card(path, manifest, dict(vars(history)), checks, throughput(path, speed_ids))


def refresh_card(path: Path, manifest: Manifest, checks: dict[str, float], speed_ids: list[list[int]]) -> None:
    """metrics.json and MODEL_CARD.md after a re-export: training history, plots and hand-written notes are kept.

    The card is edited in place (title, throughput row, provenance, export
    checks) so notes added by hand to the last run's card survive; a card
    without those anchors is written afresh.
    """
    folder = path.parent
    previous = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    card_file = folder / "MODEL_CARD.md"
    old_card = card_file.read_text() if card_file.is_file() else ""
    speed = throughput(path, speed_ids)
    _card(path, manifest, previous.get("history", {}), checks, speed)
    fresh = card_file.read_text()
    anchors = (
        "# Model card: ",
        "| CPU throughput, batch 1 / batch 64 |",
        "\nRe-check the test figures",
        "## Export checks",
        "\n## Intended use",
    )
    if not all(a in old_card for a in anchors):
        return

    def section(card: str, start: str, end: str) -> str:
        return card[card.index(start) : card.index(end)]

    card = fresh.splitlines()[0] + old_card[old_card.index("\n") :]
    old_row = next(line for line in card.splitlines() if line.startswith(anchors[1]))
    new_row = next(line for line in fresh.splitlines() if line.startswith(anchors[1]))
    card = card.replace(old_row, new_row)
    provenance_start = "\nRe-exported as " if "\nRe-exported as " in card else anchors[2]
    card = card[: card.index(provenance_start)] + section(fresh, "\nRe-exported as ", anchors[2]) + card[card.index(anchors[2]) :]
    card = card.replace(section(card, anchors[3], anchors[4]), section(fresh, anchors[3], anchors[4]))
    card_file.write_text(card)


def git_commit() -> str:
    """Short commit of the working tree, for provenance ("" outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except OSError:
        return ""


def lm_row(figures: dict[str, float]) -> str:
    """The card's LM pre-training cell: none, or its budget, perplexity and time (or that the cache served it)."""
    if not figures:
        return "none (embedding from word2vec)"
    cached = ", weights from the LM cache" if figures.get("from_cache") else ""
    return (
        f"{figures['tokens_per_direction'] / 1e6:.1f} M tokens per direction ({figures['passes']:.2f} passes over the stream), "
        f"train perplexity {figures['train_perplexity']:.0f}, {figures['seconds'] / 60:.1f} min{cached}"
    )


def members_note(figures: dict[str, float]) -> str:
    """With --teacher-lstms K > 1 the stage-one figure is the K BiLSTMs' mean; name the extra members' own."""
    extra = [
        figures[f"val_accuracy_lstm_member_{i}"]
        for i in itertools.takewhile(lambda i: f"val_accuracy_lstm_member_{i}" in figures, itertools.count(2))
    ]
    return f" as the mean of {len(extra) + 1} BiLSTMs (the others alone: {', '.join(f'{a:.2%}' for a in extra)})" if extra else ""


def local_note(figures: dict[str, float]) -> str:
    """The sentence-level supervision of stage two (--counterfactuals, --contrast-pairs, --distill-sentences), if any."""
    pairs, sentences = int(figures.get("local_counterfactuals", 0)), int(figures.get("local_sentences", 0))
    contrasts = int(figures.get("local_contrasts", 0))
    parts = [f"{pairs:,} generated counterfactual pairs of one-liners"] if pairs else []
    parts += [f'{contrasts:,} generated "A but B" / "B but A" pairs'] if contrasts else []
    parts += [f"{sentences:,} single sentences labelled by a negation-scope teacher"] if sentences else []
    return f"; plus {' and '.join(parts)}" if parts else ""


def distill_row(figures: dict[str, float]) -> str:
    """The card's distillation cell: none, or the teacher's validation accuracy against its members'."""
    if not figures:
        return "none (labelled reviews and CAD pairs only)"
    windows = int(figures.get("windows", 0))  # --distill-windows: they are counted among the unlabelled texts
    return (
        f"stage two on {int(figures['unlabelled']) - windows:,} unlabelled reviews"
        + (f" and {windows:,} random windows of them" if windows else "")
        + " with soft labels from an n-gram + stage-one BiLSTM teacher "
        f"(validation: teacher {figures['val_accuracy_teacher']:.2%}, n-gram {figures['val_accuracy_ngram']:.2%}, "
        f"stage one {figures['val_accuracy_lstm']:.2%}{members_note(figures)}; teacher fitted in {figures['seconds']:.0f} s)"
        + local_note(figures)
        + "".join(
            f"; round {r}: teacher {figures[f'round_{r}_val_accuracy_teacher']:.2%} with the round-{r - 1} student "
            f"({figures[f'round_{r}_val_accuracy_lstm']:.2%})"
            for r in itertools.takewhile(lambda r: f"round_{r}_val_accuracy_teacher" in figures, itertools.count(2))
        )
    )


def bf16_checks(checks: dict[str, float]) -> str:
    """The bf16 route's export-check lines (files exported before it have none)."""
    if "bf16_vs_fp32_max_abs_diff" not in checks:
        return ""
    return (
        f"- bf16 route (tolerance 1e-3 within the route): dense vs packed max |Δp| {checks['bf16_routes_max_abs_diff']:.1e}, "
        f"padding / batch-mate invariance max |Δp| {checks['bf16_padding_max_abs_diff']:.1e}; "
        f"bf16 vs fp32 on the 256 reviews, max |Δp| {checks['bf16_vs_fp32_max_abs_diff']:.1e}\n"
    )


def flag(name: str, value: object) -> str:
    """One config field as the command-line flag that reproduces it (booleans are --x / --no-x, as argparse takes them)."""
    option = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{option}" if value else f"--no-{option}"
    return f"--{option} {value}"


def _card(path: Path, manifest: Manifest, history: dict[str, Any], checks: dict[str, float], speed: dict[str, float]) -> None:
    folder = path.parent
    test: dict[str, Any] = manifest.metrics["test"]
    summary = {
        "model": manifest.name,
        "version": manifest.version,
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "file_sha256": artifact.file_sha256(path),
        "metrics": manifest.metrics,
        "training": manifest.training,
        "history": history,
        "export_checks": checks,
        "throughput_cpu": speed,
    }
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    cfg = manifest.training["config"]
    val = manifest.metrics["validation"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    flags = " ".join(flag(k, v) for k, v in cfg.items() if k != "out" and str(v) != str(defaults[k]))
    reexported = manifest.training.get("reexported")
    provenance = (
        f"\nRe-exported as {manifest.version} from {reexported['from_version']} (file sha256 `{reexported['from_file_sha256'][:12]}…`) "
        f"on {reexported['at']} at commit `{reexported['git_commit'] or 'n/a'}` with\n`python -m training.export --reexport "
        f"{path.as_posix()} --version {manifest.version}`: same weights, vocabulary and calibration, new forward code.\n"
        if reexported
        else ""
    )
    values = {
        "m": manifest,
        "cfg": cfg,
        "val": val,
        "test": test,
        "t": manifest.training,
        "speed": speed,
        "checks": checks,
        "file_mb": path.stat().st_size / 1e6,
        "total_min": manifest.training["total_seconds"] / 60,
        "fit_min": manifest.training["fit_seconds"] / 60,
        "cache_note": " (stage one from the cache: its time not counted)" if manifest.training.get("stage_one_from_cache") else "",
        "lm_row": lm_row(manifest.training.get("lm_pretraining") or {}),
        "distill_row": distill_row(manifest.training.get("distillation") or {}),
        "robustness_section": robustness_section(manifest),
        "behaviour_section": behaviour_section(manifest),
        "flags": flags,
        "commit": manifest.git_commit or "n/a",
        "provenance": provenance,
        "path": path.as_posix(),
        "routes": checks.get("routes_max_abs_diff", float("nan")),
        "bf16_checks": bf16_checks(checks),
        "previous_file": f"- against the file it replaced, mixed and length-sorted batches, max |Δp|: {checks['previous_file_max_abs_diff']:.1e}\n"
        if "previous_file_max_abs_diff" in checks
        else "",
        "tail_length": manifest.max_length - manifest.head_length,
    }
    (folder / "MODEL_CARD.md").write_text(CARD_TEMPLATE.read_text().format_map(values))
