"""What does an explanation cost? Explain (forward + backward, gradient x input) vs plain predict, at the artifact level.

    python bench/explain_cost.py --model models/sentiment.pt --data ../shared/data/aclImdb.tar.gz

Takes the median-length IMDb test review (by token count) and, for batch 32, the
32 test reviews closest to that length; times `module(ids, lengths)` under
inference_mode against `module.explain(ids, lengths)` under enable_grad,
interleaved so background load hits both alike, and reports medians and the
ratio. Target: explain <= 10x predict. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: `contract`/`training` live at the repo root

from contract import artifact
from contract.predictor import pad_batch

TARGET_RATIO = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/sentiment.pt"), help="model file (default %(default)s)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/aclImdb.tar.gz"), help="aclImdb tarball or folder")
    parser.add_argument("--limit", type=int, default=1000, help="test reviews per class to pick the median from (default %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="(default %(default)s)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first: TorchScript optimises on early calls")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="set requires_grad=False on the weights first, so the backward pass computes input gradients only",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if any ratio exceeds {TARGET_RATIO:g}x")
    return parser.parse_args(argv)


def median_batches(model: artifact.Artifact, texts: list[str], sizes: list[int]) -> tuple[int, list[tuple[str, list[list[int]]]]]:
    """The median token count and the batches to time: per size, the reviews closest to it in length ("mixed"),
    and, for sizes > 1, the median review repeated ("equal": packed LSTMs take a faster path when all lengths match)."""
    encoded = [model.encoder.encode(t) for t in texts]
    median = int(statistics.median_low(e.n_tokens for e in encoded))
    by_closeness = sorted(encoded, key=lambda e: (abs(e.n_tokens - median), e.n_tokens))
    if max(sizes) > len(by_closeness):
        raise SystemExit(f"only {len(by_closeness)} reviews for a batch of {max(sizes)}; raise --limit")
    batches = []
    for size in sizes:
        batches.append((f"{size} mixed" if size > 1 else "1", [e.ids for e in by_closeness[:size]]))
        if size > 1:
            batches.append((f"{size} equal", [by_closeness[0].ids] * size))
    return median, batches


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds per call for each of `calls`, run alternately so drifting background load affects all of them alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    model = artifact.load(args.model, device)
    if args.freeze:
        for parameter in model.module.parameters():
            parameter.requires_grad_(False)
    from training import data  # a bench script may read the dataset with the training code; the app never does

    started = time.perf_counter()
    reviews = data.load(args.data, limit=args.limit).test
    print(f"read {len(reviews)} test reviews from {args.data} in {time.perf_counter() - started:.1f} s")
    median, batches = median_batches(model, [r.text for r in reviews], args.batch_sizes)

    manifest = model.manifest
    print(
        f"model {manifest.name} {manifest.version} ({args.model}), max_length {manifest.max_length}; "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
        f"{', weights frozen' if args.freeze else ''}"
    )
    print(f"median review: {median} tokens; {args.repeats} timed calls per variant after {args.warmup} warm-up calls\n")
    print(f"{'batch':>8}  {'tokens':>9}  {'predict ms':>10}  {'explain ms':>10}  {'ratio':>6}  (medians; p10-p90 of explain)")

    module = model.module
    results = []
    for name, rows in batches:
        ids, lengths = pad_batch(rows)
        ids, lengths = ids.to(device), lengths.to(device)

        def predict(ids: torch.Tensor = ids, lengths: torch.Tensor = lengths) -> object:
            with torch.inference_mode():
                return module(ids, lengths)

        def explain(ids: torch.Tensor = ids, lengths: torch.Tensor = lengths) -> object:
            with torch.enable_grad():
                return module.explain(ids, lengths)

        times = time_interleaved({"predict": predict, "explain": explain}, args.repeats, args.warmup, sync)
        p, e = statistics.median(times["predict"]), statistics.median(times["explain"])
        deciles = statistics.quantiles(times["explain"], n=10)
        ratio = e / p
        token_range = f"{int(lengths.min())}-{int(lengths.max())}" if lengths.min() != lengths.max() else str(int(lengths[0]))
        print(
            f"{name:>8}  {token_range:>9}  {1000 * p:>10.2f}  {1000 * e:>10.2f}  {ratio:>5.1f}x"
            f"  ({1000 * deciles[0]:.2f}-{1000 * deciles[-1]:.2f} ms)"
        )
        results.append(
            {
                "batch": name,
                "batch_size": len(rows),
                "lengths": lengths.tolist(),
                "predict_ms_median": 1000 * p,
                "explain_ms_median": 1000 * e,
                "ratio": ratio,
                "predict_ms": [1000 * t for t in times["predict"]],
                "explain_ms": [1000 * t for t in times["explain"]],
            }
        )

    worst = max(r["ratio"] for r in results)
    verdict = "OK" if worst <= TARGET_RATIO else "ABOVE TARGET"
    print(f"\nexplain / predict: worst {worst:.1f}x, target <= {TARGET_RATIO:g}x: {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "model": str(args.model),
            "name": manifest.name,
            "version": manifest.version,
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "weights_frozen": args.freeze,
            "median_tokens": median,
            "repeats": args.repeats,
            "target_ratio": TARGET_RATIO,
            "results": results,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if args.check and worst > TARGET_RATIO else 0


if __name__ == "__main__":
    raise SystemExit(main())
