"""Weights kept on disk under a key of everything they depend on, so a re-run skips the slow stage that made them.

Used for the LM pre-training (`--lm-cache`) and for stage one (`--stage-one-cache`, so stage-two variants start
from the same weights without re-training them). A file whose key differs is stale: it is said out loud, then
overwritten by the new run; it is never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from contract.vocab import Vocab

log = logging.getLogger(__name__)


def key(parts: dict[str, Any]) -> str:
    """sha256 of a JSON-able description of what the cached weights depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def vocab_digest(vocab: Vocab) -> str:
    return hashlib.sha256("\n".join(vocab.tokens).encode()).hexdigest()


def load(path: Path | None, wanted: str, what: str) -> dict[str, Any] | None:
    """The saved payload when `path` holds one under key `wanted`, else None (stale files are reported)."""
    if path is None or not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("key") == wanted:
        log.info("%s from cache %s (key %s…): skipped", what, path, wanted[:12])
        return saved["payload"]
    log.warning(
        "%s cache %s does not match this run (data, vocabulary or settings differ): redoing it and overwriting the file", what, path
    )
    return None


def save(path: Path | None, wanted: str, payload: dict[str, Any], what: str) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": wanted, "payload": payload}, path)
    log.info("%s cached in %s", what, path)
