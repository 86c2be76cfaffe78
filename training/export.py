"""Script the trained model, check it, and save it through the contract.

Checks run on every export, so no file that disagrees with the eager model,
depends on padding, or needs `training/` to load can ever be written silently.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from contract import artifact
from contract.manifest import Manifest
from contract.predictor import Predictor
from contract.vocab import Vocab
from training.model import SentimentLSTM

log = logging.getLogger(__name__)
TOLERANCE = 1e-5


class ExportCheckError(Exception):
    """The scripted model failed a check; nothing was kept."""


@torch.inference_mode()
def check_parity(eager: SentimentLSTM, scripted: torch.jit.ScriptModule, ids: Sequence[list[int]]) -> float:
    """Max |eager - scripted| over `ids`, batched as the service would batch them."""
    worst = 0.0
    reference, candidate = Predictor(eager), Predictor(scripted)
    for start in range(0, len(ids), 64):
        batch = ids[start : start + 64]
        worst = max(worst, *(abs(a - b) for a, b in zip(reference.forward(batch), candidate.forward(batch), strict=True)))
    if worst > TOLERANCE:
        raise ExportCheckError(f"scripted and eager outputs differ by {worst:.2e} > {TOLERANCE}")
    return worst


@torch.inference_mode()
def check_padding_invariance(scripted: torch.jit.ScriptModule, ids: Sequence[list[int]]) -> float:
    """Max |p(text alone) - p(text in a mixed, padded batch)| over `ids`."""
    predictor = Predictor(scripted)
    mixed = predictor.forward(ids)  # one padded batch of mixed lengths
    alone = [predictor.forward([row])[0] for row in ids]
    worst = max(abs(a - b) for a, b in zip(mixed, alone, strict=True))
    if worst > TOLERANCE:
        raise ExportCheckError(f"output depends on padding/batch-mates by {worst:.2e} > {TOLERANCE}")
    return worst


def check_fresh_process(path: Path, text: str, expected: float) -> float:
    """Load `path` in a new interpreter that imports only `contract`, and compare one prediction."""
    code = (
        "import sys, json, torch\n"
        "from contract import artifact\n"
        "from contract.predictor import Predictor\n"
        f"p = Predictor.from_artifact(artifact.load({str(path)!r})).predict([{text!r}])[0]\n"
        "assert 'training' not in sys.modules, 'loading needed training/'\n"
        "print(json.dumps(p))\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        raise ExportCheckError(f"fresh-process load failed: {result.stderr.strip().splitlines()[-1:]}")
    diff = abs(json.loads(result.stdout) - expected)
    if diff > TOLERANCE:
        raise ExportCheckError(f"fresh-process prediction differs by {diff:.2e}")
    return diff


def export(
    model: SentimentLSTM, vocab: Vocab, manifest: Manifest, path: Path, check_ids: Sequence[list[int]], check_text: str
) -> tuple[Manifest, dict[str, float]]:
    """Script, check, save. -> (final manifest, the measured check deviations)."""
    model = model.cpu().eval()
    scripted = torch.jit.script(model)
    checks = {
        "parity_max_abs_diff": check_parity(model, scripted, check_ids),
        "padding_max_abs_diff": check_padding_invariance(scripted, check_ids[:48]),
    }
    final = artifact.save(scripted, vocab, manifest, path)
    expected = Predictor(scripted, artifact.load(path).encoder).predict([check_text])[0]
    checks["fresh_process_abs_diff"] = check_fresh_process(path, check_text, expected)
    log.info("export checks passed: %s", checks)
    return final, checks
