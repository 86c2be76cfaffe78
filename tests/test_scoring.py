"""sentiment-score on one machine: formats, order, columns, bad rows, exit codes, and the service's probabilities."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow  # the [parquet] extra, part of [test]
import pyarrow.parquet
import pytest

from contract.artifact import Artifact
from contract.predictor import Predictor
from contract.scored import BLANK, DEFAULT_MAX_TEXT_CHARS
from scoring.__main__ import main
from tests.conftest import ServeFactory
from tests.test_predictor import mixed_texts

ROOT = Path(__file__).resolve().parents[1]
BAD = {3: "", 10: "   \n\t", 17: None}  # row index -> text value that cannot be scored


def rows(n: int = 60, seed: int = 7) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"id": i, "text": t, "note": f"n{i}"} for i, t in enumerate(mixed_texts(n, seed))]
    for index, value in BAD.items():
        if index < n:
            out[index]["text"] = value
    return out


def write(path: Path, data: list[dict[str, Any]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    else:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(data), path)
    return path


def read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return pyarrow.parquet.read_table(path).to_pylist()


def as_float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def score(tmp_path: Path, model: Path, source: Path, out: Path, *extra: str) -> int:
    return main([str(source), "--out", str(out), "--model", str(model), "--quiet", *extra])


@pytest.mark.parametrize("out_ext", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("in_ext", [".csv", ".jsonl", ".parquet"])
def test_every_row_comes_back_in_order_with_its_columns(
    tmp_path: Path, tiny_model_path: Path, tiny_artifact: Artifact, in_ext: str, out_ext: str
) -> None:
    data = rows()
    if in_ext == ".csv":
        data[17]["text"] = ""  # CSV has no null: an empty cell
    out = tmp_path / f"out{out_ext}"
    assert score(tmp_path, tiny_model_path, write(tmp_path / f"in{in_ext}", data), out, "--chunk-rows", "16") == 0
    got = read(out)
    assert [str(r["id"]) for r in got] == [str(r["id"]) for r in data]  # every row, in input order
    assert list(got[0])[:3] == ["id", "text", "note"] and list(got[0])[3:] == [
        "label",
        "score",
        "p_positive",
        "n_tokens",
        "truncated",
        "error",
    ]
    assert [r["note"] for r in got] == [r["note"] for r in data]
    good = [i for i in range(len(data)) if i not in BAD]
    expected = Predictor.from_artifact(tiny_artifact).predict([data[i]["text"] for i in good])
    assert [as_float(got[i]["p_positive"]) for i in good] == pytest.approx(expected, abs=1e-6)
    for i, p in zip(good, expected, strict=True):
        assert got[i]["label"] == ("positive" if p >= 0.5 else "negative")
        assert as_float(got[i]["score"]) == pytest.approx(max(p, 1 - p), abs=1e-6)
        assert got[i]["error"] in (None, "")
    for i in BAD:
        assert got[i]["error"] in (BLANK, "missing text") and got[i]["p_positive"] in (None, "") and got[i]["label"] in (None, "")


def test_bad_rows_get_an_error_value_and_skip_bad_leaves_them_out(tmp_path: Path, tiny_model_path: Path) -> None:
    lines = [
        json.dumps({"id": 0, "text": "great film"}),
        json.dumps({"id": 1, "text": ""}),
        json.dumps({"id": 2, "text": "  "}),
        json.dumps({"id": 3, "text": 42}),
        json.dumps({"id": 4}),
        json.dumps({"id": 5, "text": None}),
        "{not json",
        "[1, 2]",
        "",  # a blank line is no row
        json.dumps({"id": 8, "text": "awful waste"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    assert score(tmp_path, tiny_model_path, source, tmp_path / "all.jsonl") == 0
    errors = [r["error"] for r in read(tmp_path / "all.jsonl")]
    assert errors[0] is None and errors[-1] is None
    assert errors[1:7] == [BLANK, BLANK, "text is not a string (int)", "missing column", "missing text", errors[6]]
    assert errors[6].startswith("invalid JSON on line 7") and errors[7] == "line 8 is not a JSON object"
    assert score(tmp_path, tiny_model_path, source, tmp_path / "good.jsonl", "--skip-bad") == 0
    assert [r["id"] for r in read(tmp_path / "good.jsonl")] == [0, 8]


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_texts_the_service_refuses_get_its_reason_as_the_row_error(tmp_path: Path, tiny_model_path: Path, ext: str) -> None:
    data = [{"text": t} for t in ("good film", " \t", "x" * 10, "y" * 11)]
    source = write(tmp_path / f"in{ext}", data)
    assert score(tmp_path, tiny_model_path, source, tmp_path / f"ten{ext}", "--max-text-chars", "10") == 0
    got = read(tmp_path / f"ten{ext}")
    assert [r["error"] for r in got] == [None, BLANK, None, "11 characters, at most 10 per text"]  # the service's 422 words
    assert got[3]["label"] is None and got[3]["p_positive"] is None and got[2]["label"] in ("positive", "negative")
    # By default the service's limit: a text one character over it is an error, a text at it is scored.
    data = [{"text": "a" * DEFAULT_MAX_TEXT_CHARS}, {"text": "a" * (DEFAULT_MAX_TEXT_CHARS + 1)}]
    assert score(tmp_path, tiny_model_path, write(tmp_path / f"long{ext}", data), tmp_path / f"default{ext}") == 0
    errors = [r["error"] for r in read(tmp_path / f"default{ext}")]
    assert errors == [None, f"{DEFAULT_MAX_TEXT_CHARS + 1} characters, at most {DEFAULT_MAX_TEXT_CHARS} per text"]


def test_max_text_chars_must_be_positive(tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        score(tmp_path, tiny_model_path, tmp_path / "in.jsonl", tmp_path / "out.jsonl", "--max-text-chars", "0")
    assert exit_.value.code == 2 and "--max-text-chars: must be at least 1, got 0" in capsys.readouterr().err


def test_summary_counts_rows_and_errors(tmp_path: Path, tiny_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="sentiment-score")
    assert score(tmp_path, tiny_model_path, write(tmp_path / "in.csv", rows()), tmp_path / "out.csv", "--skip-bad") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("model tiny-test-model 0.0.1") for m in messages)
    assert any(m.startswith(f"scored 60 rows ({len(BAD)} errors, {len(BAD)} left out) in ") and m.endswith(" rows/s") for m in messages)
    assert len(read(tmp_path / "out.csv")) == 60 - len(BAD)


def run_failing(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_unusable_inputs_give_one_line_and_exit_code_2(tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(tiny_model_path)]
    csv_in = write(tmp_path / "in.csv", rows(5))
    out = str(tmp_path / "out.csv")
    assert "input file not found" in run_failing([str(tmp_path / "nope.csv"), "--out", out, *model], capsys)
    assert "column 'review' not in" in run_failing([str(csv_in), "--out", out, "--text-column", "review", *model], capsys)
    jsonl_in = tmp_path / "in.jsonl"
    jsonl_in.write_text('{"review": "x"}\n')
    assert "column 'text' in no row" in run_failing([str(jsonl_in), "--out", out, *model], capsys)
    assert "cannot tell the format" in run_failing([str(csv_in), "--out", str(tmp_path / "out.txt"), *model], capsys)
    assert "not a readable TorchScript model" in run_failing([str(csv_in), "--out", out, "--model", str(csv_in)], capsys)
    assert "model file not found" in run_failing([str(csv_in), "--out", out, "--model", str(tmp_path / "no.pt")], capsys)
    assert "output folder does not exist" in run_failing([str(csv_in), "--out", str(tmp_path / "no" / "out.csv"), *model], capsys)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in run_failing([str(tmp_path / "bad.parquet"), "--out", out, *model], capsys)
    assert not (tmp_path / "out.csv").exists()


def test_a_failed_run_leaves_no_output_file(tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"  # "id" changes type after the first chunk: Parquet cannot hold it
    source.write_text("".join(json.dumps({"id": i if i < 4 else f"x{i}", "text": "good"}) + "\n" for i in range(8)))
    out = tmp_path / "out.parquet"
    message = run_failing([str(source), "--out", str(out), "--model", str(tiny_model_path), "--chunk-rows", "4"], capsys)
    assert "Parquet schema" in message
    assert list(tmp_path.iterdir()) == [source]  # neither out.parquet nor out.parquet.partial


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_in = write(tmp_path / "in.csv", rows(5))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    message = run_failing([str(csv_in), "--out", str(tmp_path / "out.parquet"), "--model", str(tiny_model_path)], capsys)
    assert message == "sentiment-score: error: Parquet needs pyarrow: pip install 'sentiment-service[parquet]'"


def test_stdin_to_stdout_as_jsonl(tiny_model_path: Path, tiny_artifact: Artifact) -> None:
    texts = ["great film", "awful, boring waste", "", "the plot was good " * 10]
    lines = "".join(json.dumps({"text": t, "k": i}) + "\n" for i, t in enumerate(texts))
    result = subprocess.run(
        [sys.executable, "-m", "scoring", "-", "--out", "-", "--model", str(tiny_model_path)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["k"] for r in got] == [0, 1, 2, 3] and got[2]["error"] == BLANK
    expected = Predictor.from_artifact(tiny_artifact).predict([texts[0], texts[1], texts[3]])
    assert [got[i]["p_positive"] for i in (0, 1, 3)] == pytest.approx(expected, abs=1e-6)
    assert "scored 4 rows (1 errors) in " in result.stderr and "model tiny-test-model 0.0.1" in result.stderr


@pytest.mark.anyio
async def test_probabilities_equal_the_services_predict(tmp_path: Path, tiny_model_path: Path, serve: ServeFactory) -> None:
    data = [r for i, r in enumerate(rows(200, seed=11)) if i not in BAD]
    assert score(tmp_path, tiny_model_path, write(tmp_path / "in.csv", data), tmp_path / "out.csv", "--chunk-rows", "50") == 0
    scored = read(tmp_path / "out.csv")
    async with serve() as (client, _):
        served = []
        for start in range(0, len(data), 50):
            response = await client.post("/predict", json={"texts": [r["text"] for r in data[start : start + 50]]})
            served += response.json()["predictions"]
    assert [float(r["p_positive"]) for r in scored] == pytest.approx([p["p_positive"] for p in served], abs=1e-5)
    assert [r["label"] for r in scored] == [p["label"] for p in served]
    assert [int(r["n_tokens"]) for r in scored] == [p["n_tokens"] for p in served]
    assert [r["truncated"] == "True" for r in scored] == [p["truncated"] for p in served]
