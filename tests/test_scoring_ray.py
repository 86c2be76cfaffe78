"""sentiment-score --engine ray on a local Ray (2 CPUs, small object store): same values as the local engine, in order.

Each run starts a real local Ray (~10-40 s on 2 cores), so there are two: a
directory of CSV parts into one JSONL file, and a Parquet file into a
directory of Parquet parts with --skip-bad.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_scoring import BAD, ROOT, read, rows, write

pytest.importorskip("ray.data", reason="--engine ray needs Ray Data: pip install -e '.[ray]' (.ci/run installs it)")
import pyarrow.parquet  # Ray Data brings pyarrow

pytestmark = pytest.mark.slow


def sentiment_score(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "scoring", *argv, "--quiet", "--precision", "fp32"],  # fp32: exact on every CPU, as compared here
        capture_output=True,
        text=True,
        timeout=420,
        cwd=ROOT,
        env=ray_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def ray_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a local Ray here
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def assert_same_scores(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same ids, labels and errors; probabilities within 1e-5 (batch-mates differ between engines, float rounding may too)."""

    def f(v: Any) -> float:
        return float("nan") if v in (None, "") else float(v)

    assert [(str(r["id"]), r["label"] or None, r["error"] or None) for r in got] == [
        (str(r["id"]), r["label"] or None, r["error"] or None) for r in expected
    ]
    for name in ("p_positive", "score"):
        assert [f(r[name]) for r in got] == pytest.approx([f(r[name]) for r in expected], abs=1e-5, nan_ok=True)


def test_directory_of_csv_parts_into_one_file_equals_the_local_engine(tmp_path: Path, tiny_model_path: Path) -> None:
    data = rows(300, seed=21)
    for index in BAD:
        data[index]["text"] = ""  # CSV has no null
    parts = tmp_path / "parts"
    parts.mkdir()
    write(parts / "part-0.csv", data[:170])
    write(parts / "part-1.csv", data[170:])
    write(tmp_path / "all.csv", data)
    model = ["--model", str(tiny_model_path)]
    sentiment_score(str(tmp_path / "all.csv"), "--out", str(tmp_path / "local.jsonl"), *model)
    result = sentiment_score(str(parts), "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--chunk-rows", "64", *model)
    local, distributed = read(tmp_path / "local.jsonl"), read(tmp_path / "ray.jsonl")
    assert [str(r["id"]) for r in distributed] == [str(r["id"]) for r in data]  # every row, in order, across parts
    assert_same_scores(distributed, local)
    assert f"scored 300 rows ({len(BAD)} errors) in " in result.stderr and "model tiny-test-model 0.0.1" in result.stderr


def test_parquet_into_a_directory_of_parts_with_skip_bad(tmp_path: Path, tiny_model_path: Path) -> None:
    data = rows(200, seed=22)
    write(tmp_path / "in.parquet", data)
    model = ["--model", str(tiny_model_path)]
    sentiment_score(str(tmp_path / "in.parquet"), "--out", str(tmp_path / "local.jsonl"), "--skip-bad", *model)
    out = tmp_path / "scored"
    sentiment_score(
        str(tmp_path / "in.parquet"), "--out", str(out), "--engine", "ray", "--workers", "2", "--chunk-rows", "32", "--skip-bad", *model
    )
    files = sorted(out.glob("*.parquet"))
    assert files, list(out.iterdir())
    distributed = [row for f in files for row in pyarrow.parquet.read_table(f).to_pylist()]
    distributed.sort(key=lambda r: r["id"])  # part names need not sort in row order; the values must match
    local = read(tmp_path / "local.jsonl")
    assert len(distributed) == len(local) == len(data) - len(BAD)
    assert_same_scores(distributed, local)
    assert json.dumps(distributed[0]["note"]) == json.dumps(data[0]["note"])
