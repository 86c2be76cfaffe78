"""sentiment-score --resume: a run killed, stopped or out of disk continues from its last chunk to the output a straight run gives.

The killed runs are real `sentiment-score` processes over 3,000 rows in chunks
of 20, with one text per forward pass so that a run lasts a couple of seconds:
the test watches the record beside the partial output and kills at ~60 %.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scoring.__main__ import main
from scoring.io import Sink
from tests import tiny_model
from tests.test_scoring import ROOT, read, rows, write

N = 3000
CHUNK = 20
SETTINGS = ["--chunk-rows", str(CHUNK), "--batch-size", "1", "--workers", "1", "--threads", "1", "--quiet"]


def argv(source: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [str(source), "--out", str(out), "--model", str(model), *SETTINGS, *extra]


def record_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial.json")


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def rows_done(out: Path) -> int:
    try:
        return json.loads(record_of(out).read_text())["rows_done"]
    except (OSError, ValueError):
        return -1  # not written yet


def start(source: Path, out: Path, model: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scoring", *argv(source, out, model)], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def wait_for_rows(process: subprocess.Popen[str], out: Path, rows: int) -> int:
    """Poll the record until it holds `rows` rows done; the run must still be going then."""
    deadline = time.monotonic() + 120
    while (done := rows_done(out)) < rows:
        assert process.poll() is None, f"the run ended before {rows} rows: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    return done


def same_output(got: Path, expected: Path) -> None:
    if got.suffix == ".parquet":
        import pyarrow.parquet

        assert pyarrow.parquet.read_schema(got) == pyarrow.parquet.read_schema(expected)
        assert read(got) == read(expected)
    else:
        assert got.read_bytes() == expected.read_bytes()


@pytest.fixture
def straight(tmp_path: Path, tiny_model_path: Path) -> Any:
    """The output of an uninterrupted run with the same settings."""

    def run(source: Path) -> Path:
        out = tmp_path / f"straight{source.suffix}"
        assert main(argv(source, out, tiny_model_path)) == 0
        return out

    return run


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_killed_at_60_percent_then_resumed_equals_a_straight_run(tmp_path: Path, tiny_model_path: Path, straight: Any, ext: str) -> None:
    source = write(tmp_path / f"in{ext}", rows(N, seed=5))
    out = tmp_path / f"out{ext}"
    process = start(source, out, tiny_model_path)
    wait_for_rows(process, out, N * 6 // 10)
    process.kill()  # SIGKILL: no handler runs
    assert process.wait(30) == -signal.SIGKILL
    killed_at = rows_done(out)
    assert N * 6 // 10 <= killed_at < N and killed_at % CHUNK == 0 and not out.exists()
    if ext == ".parquet":  # what a kill mid-chunk leaves: a part not yet recorded, one half written
        (partial_of(out) / f"part-{killed_at // CHUNK:06d}.parquet").write_bytes(b"PAR1 recorded by nobody")
        (partial_of(out) / "part-999999.parquet.tmp").write_bytes(b"PAR1 torn")
    else:
        with partial_of(out).open("ab") as f:
            f.write(b'{"torn": "half a chun')
    assert main(argv(source, out, tiny_model_path, "--resume")) == 0
    same_output(out, straight(source))
    assert not partial_of(out).exists() and not record_of(out).exists()
    print(
        f"{ext}: {N} rows in chunks of {CHUNK}, killed with {killed_at} rows recorded (chunk {killed_at // CHUNK + 1} of {N // CHUNK}); resumed = straight"
    )


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_at_a_chunk_boundary_and_resume(
    tmp_path: Path, tiny_model_path: Path, straight: Any, signum: int, code: int
) -> None:
    source = write(tmp_path / "in.jsonl", rows(N // 3, seed=6))
    out = tmp_path / "out.jsonl"
    process = start(source, out, tiny_model_path)
    wait_for_rows(process, out, CHUNK * 10)
    process.send_signal(signum)
    assert process.wait(60) == code
    assert process.stderr is not None
    err = process.stderr.read().strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    record = json.loads(record_of(out).read_text())
    assert err[-1] == (
        f"sentiment-score: stopped by {signal.Signals(signum).name}; the first {record['rows_done']} rows are kept: "
        "run the same command with --resume to continue"
    )
    assert CHUNK * 10 <= record["rows_done"] < N // 3 and record["rows_done"] % CHUNK == 0
    assert partial_of(out).stat().st_size == record["output_bytes"]  # stopped between chunks: nothing torn
    assert main(argv(source, out, tiny_model_path, "--resume")) == 0
    same_output(out, straight(source))


def fill_disk_at_chunk(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Sink writes fail with ENOSPC at chunk `chunk`, after half of its rows went out."""
    calls = {"n": 0}
    for name in ("_write_text", "_write_part"):
        original = getattr(Sink, name)

        def full(self: Sink, rows: list[dict[str, Any]], original: Any = original) -> None:
            calls["n"] += 1
            if calls["n"] == chunk:
                original(self, rows[: len(rows) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            original(self, rows)

        monkeypatch.setattr(Sink, name, full)


def last_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_disk_full_keeps_the_rows_done_and_resume_finishes(
    tmp_path: Path, tiny_model_path: Path, straight: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    source = write(tmp_path / f"in{ext}", rows(200, seed=8))
    out = tmp_path / f"out{ext}"
    with monkeypatch.context() as patch:
        fill_disk_at_chunk(patch, 4)
        assert main(argv(source, out, tiny_model_path)) == 2
    assert last_error_line(capsys) == (
        f"sentiment-score: error: cannot write {partial_of(out)}: the disk is full; the first 60 rows are kept: "
        "run the same command with --resume to continue"
    )
    assert rows_done(out) == 3 * CHUNK and not out.exists()
    assert main(argv(source, out, tiny_model_path, "--resume")) == 0
    same_output(out, straight(source))


def test_resume_refuses_another_input_model_or_settings(
    tmp_path: Path, tiny_model_path: Path, straight: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write(tmp_path / "in.jsonl", rows(200, seed=9))
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as patch:
        fill_disk_at_chunk(patch, 4)
        assert main(argv(source, out, tiny_model_path)) == 2
    capsys.readouterr()
    state = (record_of(out).read_bytes(), partial_of(out).read_bytes())

    def refused(*extra: str, model: Path = tiny_model_path) -> str:
        assert main(argv(source, out, model, *extra, "--resume")) == 2
        assert (record_of(out).read_bytes(), partial_of(out).read_bytes()) == state  # a refusal keeps the state
        return last_error_line(capsys)

    prefix = f"sentiment-score: error: cannot resume {out}: "
    assert refused("--chunk-rows", "10") == (
        prefix + "settings that change the output differ from that run's (chunk_rows 20 -> 10); run without --resume to start over"
    )
    assert "(batch_size 1 -> 2)" in refused("--batch-size", "2")
    assert "(skip_bad False -> True)" in refused("--skip-bad")
    assert "(max_text_chars 100000 -> 50)" in refused("--max-text-chars", "50")
    other = tiny_model.build(tmp_path / "other.pt", seed=1)
    assert refused(model=other).startswith(prefix + "the model changed since that run (sha256 ")

    stat, original = source.stat(), source.read_bytes()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert refused() == prefix + "the input changed since that run (mtime_ns); run without --resume to start over"
    source.write_bytes(original.replace(b'"id": 0', b'"id": 9'))  # same size and time, other content
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "the input changed since that run (head_sha256)" in refused()

    source.write_bytes(original)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(argv(source, out, tiny_model_path, "--resume")) == 0
    same_output(out, straight(source))


def test_without_resume_a_partial_is_discarded_and_resume_without_one_starts_fresh(
    tmp_path: Path,
    tiny_model_path: Path,
    straight: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sentiment-score")
    source = write(tmp_path / "in.csv", rows(100, seed=10))
    out = tmp_path / "out.csv"
    with monkeypatch.context() as patch:
        fill_disk_at_chunk(patch, 2)
        assert main(argv(source, out, tiny_model_path)) == 2
    assert main(argv(source, out, tiny_model_path)) == 0
    assert f"starting over: {partial_of(out)} of an earlier run is discarded (--resume would continue it)" in caplog.messages
    same_output(out, straight(source))
    fresh = tmp_path / "fresh.csv"
    assert main(argv(source, fresh, tiny_model_path, "--resume")) == 0
    assert any(m.startswith(f"nothing to resume for {fresh}") for m in caplog.messages)
    same_output(fresh, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.csv", "in.csv", "out.csv", "straight.csv"]


def test_resume_needs_files_and_the_local_engine(tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "in.csv", rows(5))
    assert main(argv(source, tmp_path / "out.csv", tiny_model_path, "--engine", "ray", "--resume")) == 2
    assert last_error_line(capsys).startswith("sentiment-score: error: --resume works with --engine local only: Ray Data retries")
    assert main(argv(source, Path("-"), tiny_model_path, "--resume")) == 2
    assert last_error_line(capsys) == "sentiment-score: error: --resume needs an input file and an output file, not '-'"
