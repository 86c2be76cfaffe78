"""The robustness holdout: IMDb train reviews that public contrast sets are built on.

CAD's dev/test originals and the AllenNLP IMDb contrast sets are edits of these 753
reviews. A model that saw the unedited text has seen the answer key, so every training
step (classifier, validation split, word2vec, language-model pre-training) drops them.
The list ships inside the package (paths relative to `aclImdb/`), so a user's official
tarball gets the same exclusion as ours; its sha256 goes into the manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DEFAULT = Path(__file__).with_name("robustness-holdout.txt")


@dataclass(frozen=True)
class Holdout:
    paths: frozenset[str]  # "train/neg/1015_2.txt", relative to aclImdb/
    sha256: str  # of the list file, recorded in the manifest

    @classmethod
    def read(cls, path: Path = DEFAULT) -> Holdout:
        raw = path.read_bytes()
        paths = frozenset(line.strip() for line in raw.decode().splitlines() if line.strip())
        return cls(paths, hashlib.sha256(raw).hexdigest())

    @classmethod
    def none(cls) -> Holdout:
        return cls(frozenset(), "")

    def manifest_entry(self, dropped: int) -> dict[str, str | int]:
        """What /model shows: which list was excluded and how many reviews it removed from this data."""
        return {"sha256": self.sha256, "listed": len(self.paths), "reviews_dropped": dropped}
