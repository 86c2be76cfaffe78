"""Bulk scoring vs the raw model, in one run: `sentiment-score` as a user runs it (whole command, start-up included).

    python -m bench.score --prepare        # once: the IMDb test CSVs under bench/results/ (not timed)
    python -m bench.score                  # the measurements (run it alone: `cpu exclusive python -m bench.score`)

1. `python -m bench.raw_model` (its best reviews/s: single stream or parallel streams, tokenize + forward);
2. `sentiment-score` on all 25,000 IMDb test reviews (CSV -> CSV): wall time of the whole process;
3. the same on 10,000 reviews with bad rows mixed in: every row back in order, bad rows with an error, and
   every probability compared with the service's /predict (a real `sentiment-serve` process);
4. `--engine ray` (local Ray) on 2,000 reviews: the same values, in the same order, as the local engine;
   then on the 10,000 with 1 and 2 actors: rows/s of the whole command and of Ray's dataset execution.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

SCORE = [sys.executable, "-m", "scoring"]
BAD_ROWS = {1234: "", 2345: "   ", 3456: "\n\t ", 4567: None, 5678: None}  # index in the 10k file -> text (None: short CSV row)
SUMMARY = re.compile(r"scored (\d+) rows \((\d+) errors[^)]*\) in ([\d.]+) s: ([\d.]+) rows/s")
RAY_EXECUTION = re.compile(r"Dataset \S+ execution finished in ([\d.]+) seconds")


def csv_path(name: str) -> Path:
    return common.RESULTS / f"score_{name}.csv"


def prepare() -> None:
    """IMDb test reviews (all 25,000, shuffled) as CSV with id/label/text; a 10k file with bad rows; a 2k file."""
    sys.path.insert(0, str(common.ROOT))
    from training import data  # bench code may import training: it is not part of the service

    reviews = data.load(common.DATA).test
    order = list(range(len(reviews)))
    random.Random(0).shuffle(order)
    common.RESULTS.mkdir(parents=True, exist_ok=True)

    def write(name: str, indices: list[int], bad: dict[int, str | None] | None = None) -> None:
        with csv_path(name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "gold", "text"])  # not "label": scoring writes its own label column
            for k, i in enumerate(indices):
                if bad and k in bad:
                    writer.writerow([f"bad{k}"] if bad[k] is None else [f"bad{k}", "", bad[k]])
                writer.writerow([i, reviews[i].label, reviews[i].text])

    write("25k", order)
    write("10k_bad", order[:10_000], BAD_ROWS)
    write("2k", order[:2_000])
    write("10k", order[:10_000])  # for Ray: pyarrow's CSV reader refuses rows with missing fields (the local engine scores them)
    print(f"wrote {csv_path('25k')}, {csv_path('10k_bad')}, {csv_path('10k')}, {csv_path('2k')}")


def run_score(*argv: str) -> dict[str, float | str]:
    """Run sentiment-score as a subprocess; wall seconds of the whole process and its own summary line."""
    started = time.perf_counter()
    result = subprocess.run([*SCORE, *argv, "--quiet"], capture_output=True, text=True, cwd=common.ROOT)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"sentiment-score {' '.join(argv)} -> {result.returncode}: {result.stderr[-2000:]}")
    rows, errors, seconds, _ = SUMMARY.search(result.stderr).groups()  # type: ignore[union-attr]
    out: dict[str, float | str] = {"rows": int(rows), "errors": int(errors), "wall_s": wall, "inside_s": float(seconds)}
    out["rows_per_s"] = int(rows) / wall
    ray = RAY_EXECUTION.findall(result.stderr)
    if ray:
        out["ray_execution_s"] = float(ray[-1])
        out["ray_rows_per_s"] = int(rows) / float(ray[-1])
    print(f"  sentiment-score {' '.join(argv[:1])} {' '.join(argv[3:])}: {out}", flush=True)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_10k(scored: list[dict[str, str]], source: list[dict[str, str]], url: str) -> dict[str, object]:
    """Every row back in order with its columns; bad rows with an error; probabilities vs /predict."""
    assert [r["id"] for r in scored] == [r["id"] for r in source], "rows missing or out of order"
    assert all(r["text"] == (s["text"] or "") for r, s in zip(scored, source, strict=True)), "text column changed"
    bad = [r for r in scored if r["error"]]
    good = [r for r in scored if not r["error"]]
    assert {r["id"] for r in bad} == {f"bad{k}" for k in BAD_ROWS}, bad
    worst = 0.0
    for start in range(0, len(good), 100):
        batch = good[start : start + 100]
        status, _, body = common.post_json(url, {"texts": [r["text"] for r in batch]}, timeout=120)
        if status != 200:
            raise RuntimeError(f"/predict -> {status}: {body}")
        for row, prediction in zip(batch, body["predictions"], strict=True):
            worst = max(worst, abs(float(row["p_positive"]) - prediction["p_positive"]))
            assert row["label"] == prediction["label"]
    accuracy = sum((float(r["p_positive"]) >= 0.5) == (r["gold"] == "1") for r in good) / len(good)
    return {"bad_rows_with_error": len(bad), "max_abs_diff_vs_predict": worst, "accuracy": accuracy, "compared": len(good)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="write the CSVs and stop")
    parser.add_argument("--out", default="score")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--ray-only", action="store_true", help="only the Ray actor comparison (step 4's second half)")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare()
        return {}
    common.refuse_if_busy(args.force)
    if not csv_path("25k").is_file():
        raise SystemExit("run `python -m bench.score --prepare` first")
    result: dict[str, object] = {"machine": common.machine()}
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        out = Path(tmp)
        if args.ray_only:
            for actors in (1, 2):
                argv = ["--engine", "ray", "--workers", str(actors), "--chunk-rows", "1024"]
                result[f"ray_10k_{actors}_actors"] = run_score(str(csv_path("10k")), "--out", str(out / f"10k_ray{actors}.csv"), *argv)
            print(f"wrote {common.save(args.out + '_ray', result)}")
            return result
        print("raw model (python -m bench.raw_model):", flush=True)
        # --precision auto: the route sentiment-score's default (--precision auto) runs here
        raw_argv = ["--precision", "auto", "--out", f"{args.out}_raw", "--force"]
        subprocess.run([sys.executable, "-m", "bench.raw_model", *raw_argv], check=True, cwd=common.ROOT)
        raw = common.load_result(f"{args.out}_raw") or {}
        best = float(raw["best_any"])
        result["raw"] = {"best_any": best, "best_end_to_end": raw["best_end_to_end"], "streams": raw["streams"]["rows"]}

        print("25,000 IMDb test reviews:", flush=True)
        full = run_score(str(csv_path("25k")), "--out", str(out / "25k.csv"))
        full["vs_raw"] = full["rows_per_s"] / best  # type: ignore[operator]
        scored = read_csv(out / "25k.csv")
        full["accuracy"] = sum((float(r["p_positive"]) >= 0.5) == (r["gold"] == "1") for r in scored) / len(scored)
        result["imdb_25k"] = full

        print("10,000 reviews with bad rows:", flush=True)
        ten = run_score(str(csv_path("10k_bad")), "--out", str(out / "10k.csv"))
        ten["vs_raw"] = ten["rows_per_s"] / best  # type: ignore[operator]
        server = common.start_service({"SENTIMENT_MODEL_PATH": str(common.MODEL)}, name="bench_score_service")
        try:
            ten.update(check_10k(read_csv(out / "10k.csv"), read_csv(csv_path("10k_bad")), f"{server.base}/predict"))
        finally:
            server.stop()
        result["imdb_10k_bad"] = ten

        print("Ray (local): 2,000 reviews vs the local engine, then 1 and 2 actors on the 10,000:", flush=True)
        result["local_2k"] = run_score(str(csv_path("2k")), "--out", str(out / "2k_local.csv"))
        expected = read_csv(out / "2k_local.csv")
        ray = run_score(str(csv_path("2k")), "--out", str(out / "2k_ray.csv"), "--engine", "ray", "--chunk-rows", "256")
        got = read_csv(out / "2k_ray.csv")
        assert [r["id"] for r in got] == [r["id"] for r in expected], "Ray changed the row order"
        ray["max_abs_diff_vs_local"] = max(abs(float(a["p_positive"]) - float(b["p_positive"])) for a, b in zip(got, expected, strict=True))
        ray["labels_equal"] = all(a["label"] == b["label"] for a, b in zip(got, expected, strict=True))
        result["ray_2k"] = ray
        for actors in (1, 2):
            argv = ["--engine", "ray", "--workers", str(actors), "--chunk-rows", "1024"]
            result[f"ray_10k_{actors}_actors"] = run_score(str(csv_path("10k")), "--out", str(out / f"10k_ray{actors}.csv"), *argv)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
