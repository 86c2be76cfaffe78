"""The IMDb Large Movie Review dataset (Maas et al. 2011): read, split by movie, checksum.

Reads the tarball directly (no extraction needed) or an extracted `aclImdb/`
folder. The validation split is carved out of *train* by movie (via
urls_*.txt), so no film's reviews sit on both sides and validation accuracy
is an honest estimate of the movie-disjoint test set.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.artifact import file_sha256

OFFICIAL_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
OFFICIAL_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
# The copy shipped on our machines (no .feat files): same reviews, other bytes.
LOCAL_COPY_SHA256 = "a343918647f9c6c5b4b09ae2de13bafa91ad6016d65c206ba7ae67d1792049b0"
KNOWN_SHA256 = frozenset({OFFICIAL_SHA256, LOCAL_COPY_SHA256})

_REVIEW = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
_URLS = re.compile(r"(?:^|/)aclImdb/(train|test)/urls_(pos|neg|unsup)\.txt$")
_MOVIE = re.compile(r"title/(tt\d+)")


class DataError(Exception):
    """The dataset is missing or unusable; the message says what to pass instead."""


@dataclass(frozen=True, slots=True)
class Review:
    text: str
    label: int  # 1 positive, 0 negative, -1 unlabelled
    movie: str  # IMDb title id, groups reviews of one film
    rating: int


@dataclass(frozen=True)
class Dataset:
    train: list[Review]
    validation: list[Review]
    test: list[Review]
    unsup: list[Review]
    sha256: str  # of the tarball, or "" for a folder
    excluded: int = 0  # reviews dropped because they were listed in `exclude` (the robustness holdout)


def download(dest: Path) -> Path:
    """Fetch the official tarball to `dest` unless a verified copy is already there."""
    if dest.is_file() and file_sha256(dest) == OFFICIAL_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        urllib.request.urlretrieve(OFFICIAL_URL, tmp)
    except OSError as exc:
        raise DataError(f"could not download {OFFICIAL_URL} ({exc}); pass --data PATH to a local aclImdb tarball or folder") from None
    if (got := file_sha256(tmp)) != OFFICIAL_SHA256:
        tmp.unlink(missing_ok=True)
        raise DataError(f"downloaded file has sha256 {got}, expected {OFFICIAL_SHA256}; try again or pass --data")
    tmp.replace(dest)
    return dest


def _entries(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every review and urls file, from a tarball or a folder."""
    if path.is_dir():
        for file in sorted(path.rglob("*.txt")):
            yield file.as_posix(), file.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield member.name, f.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # tarfile's messages span lines; errors here are one line
        raise DataError(
            f"{path} is not a readable aclImdb tarball ({reason[:200]}); pass --data PATH to a good copy or --download"
        ) from None


def _validation_movie(movie: str, fraction: float, seed: int) -> bool:
    """A stable per-movie coin flip: the same films are held out on every machine."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{movie}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def split_seed(config: Mapping[str, Any]) -> int:
    """The movie split's seed from a run's config (a manifest's, or TrainConfig as a dict): split_seed, else seed."""
    chosen = config.get("split_seed")
    return int(config.get("seed", 0) if chosen is None else chosen)


def load(
    path: Path,
    validation_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Dataset:
    """Read the dataset at `path` (tarball or folder). `limit` keeps that many reviews per split and class (tests).

    `exclude` holds paths relative to aclImdb/ ("train/neg/1015_2.txt"): those reviews are dropped before
    anything else sees them (split, vocabulary, pre-training), so no training step can learn from them.
    """
    existing(path)
    raw: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    urls: dict[tuple[str, str], list[str]] = {}
    for name, data in _entries(path):
        if m := _REVIEW.search(name):
            split, kind, idx, rating = m.groups()
            raw.setdefault((split, kind), []).append((int(idx), int(rating), data.decode("utf-8", errors="replace")))
        elif m := _URLS.search(name):
            urls[(m.group(1), m.group(2))] = data.decode().split()
    expected = [("train", "pos"), ("train", "neg"), ("test", "pos"), ("test", "neg")]
    if missing := [f"{s}/{k}" for s, k in expected if not raw.get((s, k))]:
        raise DataError(f"{path} has no reviews under {', '.join(missing)}; is it the aclImdb dataset?")

    excluded = 0

    def reviews(split: str, kind: str) -> list[Review]:
        nonlocal excluded
        rows = sorted(raw.get((split, kind), []))
        kept = [row for row in rows if f"{split}/{kind}/{row[0]}_{row[1]}.txt" not in exclude]
        excluded += len(rows) - len(kept)
        rows = kept[:limit]
        movie_urls = urls.get((split, kind), [])
        label = {"pos": 1, "neg": 0, "unsup": -1}[kind]
        out = []
        for idx, rating, text in rows:
            url = movie_urls[idx] if idx < len(movie_urls) else ""
            m = _MOVIE.search(url)
            out.append(Review(text, label, m.group(1) if m else f"{split}/{kind}/{idx}", rating))
        return out

    labelled = reviews("train", "pos") + reviews("train", "neg")
    held = [_validation_movie(r.movie, validation_fraction, seed) for r in labelled]
    return Dataset(
        train=[r for r, h in zip(labelled, held, strict=True) if not h],
        validation=[r for r, h in zip(labelled, held, strict=True) if h],
        test=reviews("test", "pos") + reviews("test", "neg"),
        unsup=reviews("train", "unsup"),
        sha256=file_sha256(path) if path.is_file() else "",
        excluded=excluded,
    )


# Where a user has the dataset (what --download writes first). Contributors on the dev machines pass
# --data ../shared/data/aclImdb.tar.gz (docs/contributing.md): a checkout-relative path is no user default.
SEARCH = (Path("data/aclImdb_v1.tar.gz"), Path("data/aclImdb.tar.gz"), Path("data/aclImdb"), Path("aclImdb"))


def existing(path: Path) -> Path:
    """`path`, or a DataError saying what to pass instead: checked before anything slow runs."""
    if not path.exists():
        raise DataError(f"dataset not found at {path}; pass --data PATH (aclImdb tarball or folder) or --download")
    return path


def find(given: Path | None, allow_download: bool = False) -> Path:
    """The dataset to use: `given` (which must exist), else the first of SEARCH that exists, else a download if allowed."""
    if given is not None:
        return existing(given)
    for candidate in SEARCH:
        if candidate.exists():
            return candidate
    if allow_download:
        return download(Path("data/aclImdb_v1.tar.gz"))
    raise DataError(f"no dataset found in {', '.join(map(str, SEARCH))}; pass --data PATH or --download")
