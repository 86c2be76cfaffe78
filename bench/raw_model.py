"""The ceiling for any server: the shipped TorchScript artifact alone, on real IMDb test reviews, per batch size.

    python -m bench.raw_model [--model models/sentiment.pt] [--threads N] [--seconds 3] [--batch-sizes 1,2,...]

For each batch size it runs consecutive slices of a shuffled sample of test reviews (so lengths mix as they do
when strangers' requests share a batch) for about `--seconds`, and reports ms per batch and reviews/s:
- `model`: pad_batch + forward under inference_mode + .tolist() (what the server's model thread does);
- `end_to_end`: the same plus tokenization and vocabulary lookup (what any server must do per text).
Then, with --streams N (default: one per core), N threads run end_to_end batches side by side, each with
cores/N torch threads: a server may run batches in parallel (the service does), so the ceiling is the best
of the single-stream and parallel figures.
Torch intra-op threads default to what the service uses when SENTIMENT_TORCH_THREADS is unset (torch's
default, one per core); pass --threads to match a server started with SENTIMENT_TORCH_THREADS.

With --peak it then measures the CPU's dense GEMM rate per precision and the share of it the model's best batch
reaches (its BiLSTM's projections, counted per review): how far the kernel is from the hardware.

    python -m bench.raw_model --kernels [--kernel-batch-sizes 1,4,16,64] [--kernel-threads 1,2]

measures the model's two BiLSTM routes instead (training/model.py): packed, dense and the artifact's own
per-batch choice ("auto"), on mixed-length batches (consecutive slices of the shuffled sample, as strangers'
texts arrive) and on length-sorted ones (consecutive slices of the sample sorted by length, what the
service's batcher cuts when many texts wait), model only, at each torch thread count.

Both modes run each precision of `--precision` (default fp32,bf16: the file's exact route and its bf16 route,
SENTIMENT_PRECISION) on the same texts in the same run, and report bf16/fp32 ratios of the best throughputs
(--kernels: of the best dense figure). The top-level figures (best_model, best_any, ...: what bench.serve and
bench.score compare servers with) are those of the route SENTIMENT_PRECISION=auto serves on this device.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from pathlib import Path

import torch

from bench import common
from contract import artifact as artifact_io
from contract.device import has_native_bf16, resolve_precision
from contract.predictor import Predictor

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def measure(fn, batches: list, seconds: float, min_batches: int = 5) -> list[float]:
    """Run fn over `batches` round-robin for ~seconds (at least min_batches); per-batch wall times in s."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while (time.perf_counter() < deadline or len(times) < min_batches) and len(times) < 100_000:
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def parallel(fn, batches: list, streams: int, seconds: float) -> float:
    """Items per second when `streams` threads each run fn over their share of `batches` for ~seconds."""
    done = [0] * streams
    stop = time.perf_counter() + seconds

    def stream(k: int) -> None:
        mine = batches[k::streams]
        i = 0
        while time.perf_counter() < stop:
            batch = mine[i % len(mine)]
            fn(batch)
            done[k] += len(batch)
            i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


KERNELS = {"packed": 0.0, "dense": float("inf")}  # dense_max_padding forcing one route; "auto" = the file's own


def kernel_table(
    module, ids: list[list[int]], batch_sizes: list[int], threads: list[int], seconds: float, device: str = "cpu", precision: str = "fp32"
) -> list[dict]:
    """reviews/s of each route x batch order x batch size x torch threads, model only, in `module`'s precision."""
    own = getattr(module, "dense_max_padding", None)
    predictor = Predictor(module, device=device)  # pad + forward + .tolist(), as the service's workers run it
    routes = {**KERNELS, "auto": own} if own is not None else {"packed (file has one route)": None}
    by_length = sorted(ids, key=len)
    rows = []
    print(f"\n{'route':>8} {'prec':>4} {'order':>6} {'threads':>7} | " + " ".join(f"{'b=' + str(b):>8}" for b in batch_sizes))
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for route, limit in routes.items():
            if limit is not None:
                module.dense_max_padding = limit
            for order, sample in (("mixed", ids), ("sorted", by_length)):
                cells = []
                for b in batch_sizes:
                    n = len(sample) // b * b
                    batches = [sample[i : i + b] for i in range(0, n, b)]
                    random.Random(0).shuffle(batches)  # a timed prefix must not be the shortest batches
                    padding = sum(len(x) * max(map(len, x)) for x in batches) / sum(len(r) for x in batches for r in x)
                    for batch in batches[:3]:  # the profiling executor specialises on its first calls
                        predictor.predict_batch(batch)
                    times = measure(predictor.predict_batch, batches, seconds)
                    cells.append({"batch_size": b, "padded_over_real": padding, **summary(times, b)})
                rows.append({"route": route, "precision": precision, "order": order, "threads": n_threads, "cells": cells})
                print(
                    f"{route:>8} {precision:>4} {order:>6} {n_threads:>7} | " + " ".join(f"{c['reviews_per_s']:>8.1f}" for c in cells),
                    flush=True,
                )
    if own is not None:
        module.dense_max_padding = own
    return rows


def gemm_peak(dtype: torch.dtype, seconds: float, n: int = 1024) -> float:
    """GFLOP/s of back-to-back n x n x n matmuls in `dtype` on torch's threads: the CPU's dense-math ceiling, which
    no kernel of small recurrent steps reaches."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):  # warm-up: oneDNN picks and JITs its kernel
        a @ b
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        runs += 1
    return 2 * n**3 * runs / elapsed / 1e9


def lstm_flops_per_review(module: torch.nn.Module, mean_ids: float) -> float:
    """Multiply-adds x 2 of the BiLSTM over a review of `mean_ids` tokens: per token and direction, the input and the
    recurrent projections, 4H x (E + H) each way (the gates' pointwise math is left out: it is not GEMM work)."""
    weights = dict(module.named_parameters())
    per_token = sum(2 * w.shape[0] * w.shape[1] for name, w in weights.items() if name.startswith("lstm.weight_"))  # every direction
    return per_token * mean_ids


def summary(times: list[float], batch_size: int) -> dict[str, float]:
    total = sum(times)
    return {
        "batches": len(times),
        "ms_per_batch_median": 1000 * statistics.median(times),
        "ms_per_batch_mean": 1000 * total / len(times),
        "ms_per_batch_p95": 1000 * sorted(times)[int(0.95 * (len(times) - 1))],
        "reviews_per_s": batch_size * len(times) / total,
    }


def placed(art: artifact_io.Artifact, device: str, spec: str | None) -> dict[str, artifact_io.Artifact]:
    """--precision -> {"fp32": ..., "bf16": ...}: the artifact in each route asked for, each route its own module.

    The default (None) runs both, bf16 only where the file has the route; an explicit bf16 on a file without it is an error.
    """
    names = ["fp32", "bf16"] if spec is None else [name.strip() for name in spec.split(",") if name.strip()]
    routes: dict[str, artifact_io.Artifact] = {}
    for name in names:
        try:
            chosen = resolve_precision(name, torch.device(device))
            if chosen not in routes:
                routes[chosen] = artifact_io.place(art, device, chosen)
        except ValueError as exc:
            raise SystemExit(f"bench.raw_model: --precision: {exc}") from None
        except artifact_io.ArtifactError as exc:
            if spec is not None:
                raise SystemExit(f"bench.raw_model: {exc}") from None
            print(f"(bf16 skipped: {exc})")
    return routes


def served(routes: dict[str, artifact_io.Artifact], device: str) -> str:
    """The route SENTIMENT_PRECISION=auto serves here, if it was run; else the first one run."""
    auto = resolve_precision("auto", torch.device(device))
    return auto if auto in routes else next(iter(routes))


def ratio(results: dict[str, dict], pick) -> float | None:  # type: ignore[no-untyped-def]
    """bf16 / fp32 of `pick(result)`, when both routes ran."""
    if "fp32" not in results or "bf16" not in results:
        return None
    return pick(results["bf16"]) / pick(results["fp32"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=common.MODEL)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default, as the service)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per batch size and mode")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--texts", type=int, default=2000, help="sample of test reviews")
    parser.add_argument("--streams", type=int, default=len(os.sched_getaffinity(0)), help="parallel streams (1 = skip)")
    parser.add_argument("--stream-batch-sizes", default="8,16,32,64")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu.sh)")
    parser.add_argument(
        "--precision",
        default=None,
        help="routes to run, comma-separated: fp32, bf16, auto (what SENTIMENT_PRECISION=auto picks here); "
        "default fp32,bf16 (bf16 skipped on a file without the route)",
    )
    parser.add_argument("--kernels", action="store_true", help="compare the model's BiLSTM routes instead (see above)")
    parser.add_argument("--peak", action="store_true", help="also the CPU's GEMM peak per precision and the share of it the model reaches")
    parser.add_argument("--kernel-batch-sizes", default="1,4,16,64")
    parser.add_argument("--kernel-threads", default="1,2")
    parser.add_argument("--out", default="raw_model", help="results name under bench/results/")
    parser.add_argument("--force", action="store_true", help="run even while a training process is running")
    args = parser.parse_args(argv)
    common.refuse_if_busy(args.force)

    if args.threads:
        torch.set_num_threads(args.threads)
    art = artifact_io.load(args.model, args.device)
    routes = placed(art, args.device, args.precision)
    main_route = served(routes, args.device)
    encoder = art.encoder
    texts = common.imdb_test_texts(args.texts)
    ids = [encoder.encode(t).ids for t in texts]
    native = has_native_bf16(torch.device(args.device))
    print(f"model {art.manifest.name} {art.manifest.version}; torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(
        f"{len(texts)} IMDb test reviews, mean {statistics.mean(map(len, texts)):.0f} chars, "
        f"mean {statistics.mean(map(len, ids)):.0f} ids (max_length {art.manifest.max_length})"
    )
    print(f"precision: {', '.join(routes)} (native bf16 on {args.device}: {'yes' if native else 'no'}; auto serves {main_route})")
    about = {"precisions": list(routes), "served_precision": main_route, "native_bf16": native}

    if args.kernels:
        rows = []
        for precision, placed_art in routes.items():
            rows += kernel_table(
                placed_art.module,
                ids,
                [int(x) for x in args.kernel_batch_sizes.split(",")],
                [int(x) for x in args.kernel_threads.split(",")],
                args.seconds,
                args.device,
                precision,
            )
        best_by = {
            p: {
                route: max(c["reviews_per_s"] for r in rows if (r["route"], r["precision"]) == (route, p) for c in r["cells"])
                for route in {r["route"] for r in rows if r["precision"] == p}
            }
            for p in routes
        }
        best = best_by.get("fp32", best_by[main_route])  # the routes' comparison, in the exact precision where it ran
        for p, b in best_by.items():
            print(f"best reviews/s per route, {p}: " + ", ".join(f"{route} {v:.1f}" for route, v in sorted(b.items())))
        dense = ratio(best_by, lambda b: b["dense"]) if all("dense" in b for b in best_by.values()) else None
        if dense is not None:
            print(
                f"best dense: fp32 {best_by['fp32']['dense']:.1f}, bf16 {best_by['bf16']['dense']:.1f} reviews/s: bf16/fp32 = {dense:.2f}x"
            )
        result = {"machine": common.machine(), "model": {"name": art.manifest.name, "version": art.manifest.version}, "texts": len(texts)}
        result["device"] = args.device
        result |= {"mean_ids": statistics.mean(map(len, ids)), "kernels": rows, "best": best, "best_by_precision": best_by}
        result |= about | {"bf16_over_fp32_best_dense": dense}
        print(f"wrote {common.save(args.out if args.out != 'raw_model' else 'raw_kernels', result)}")
        return result

    # Encoding cost alone (per text), to separate it from the model.
    t0 = time.perf_counter()
    for t in texts:
        encoder.encode(t)
    encode_ms = 1000 * (time.perf_counter() - t0) / len(texts)

    results = {p: throughput(a, encoder, texts, ids, args) for p, a in routes.items()}

    result = {
        "machine": common.machine(),
        "model": {"name": art.manifest.name, "version": art.manifest.version, "file_sha256": art.file_sha256},
        "torch_threads": torch.get_num_threads(),
        "texts": len(texts),
        "mean_chars": statistics.mean(map(len, texts)),
        "mean_ids": statistics.mean(map(len, ids)),
        "encode_ms_per_review": encode_ms,
        **results[main_route],  # rows, best_model, best_end_to_end, streams, best_any, batch1_ms of the served route
        **about,
        "by_precision": results,
        "bf16_over_fp32": {
            key: ratio(results, lambda r, key=key: r[key] if key == "best_any" else r[key]["reviews_per_s"])
            for key in ("best_model", "best_end_to_end", "best_any")
        },
    }
    print(f"\nencode (tokenize + vocab): {encode_ms:.3f} ms per review")
    for precision, r in results.items():
        gain = f"; batching gain {r['batching_gain']:.2f}x" if r["batching_gain"] else ""
        m, e = r["best_model"], r["best_end_to_end"]
        print(
            f"best {precision}: model {m['reviews_per_s']:.1f} reviews/s (batch {m['batch_size']}), "
            f"end to end {e['reviews_per_s']:.1f} (batch {e['batch_size']}), any {r['best_any']:.1f}{gain}"
        )
    if result["bf16_over_fp32"]["best_model"] is not None:
        print("bf16/fp32: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["bf16_over_fp32"].items()))
    if args.peak:
        flops = lstm_flops_per_review(art.module, result["mean_ids"])
        result["lstm_mflop_per_review"] = flops / 1e6
        result["gemm_peak"] = {}
        for precision, r in results.items():
            peak = gemm_peak(torch.bfloat16 if precision == "bf16" else torch.float32, args.seconds)
            share = r["best_model"]["reviews_per_s"] * flops / 1e9 / peak
            result["gemm_peak"][precision] = {"gflops": peak, "reviews_per_s_at_peak": peak * 1e9 / flops, "best_model_share": share}
            print(
                f"{precision} GEMM peak ({torch.get_num_threads()} threads): {peak:.0f} GFLOP/s = {peak * 1e9 / flops:.0f} reviews/s at "
                f"{flops / 1e6:.0f} MFLOP per review; the best model figure uses {100 * share:.0f} % of it"
            )
    print(f"wrote {common.save(args.out, result)}")
    return result


def throughput(art: artifact_io.Artifact, encoder, texts: list[str], ids: list[list[int]], args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    """The batch-size table (model only and end to end) and the parallel streams, for one precision route."""
    precision = art.precision
    model_only = Predictor(art.module, device=args.device).predict_batch  # pad_batch + forward under inference_mode + .tolist()

    def end_to_end(batch_texts: list[str]) -> list[float]:
        return model_only([encoder.encode(t).ids for t in batch_texts])

    # Warm-up: the profiling executor specialises on its first calls.
    for b in (1, 8, 64):
        for _ in range(3):
            model_only(ids[:b])

    rows = []
    print(f"\n{'batch':>5} {'prec':>4} | {'model ms/batch':>14} {'reviews/s':>10} | {'e2e ms/batch':>12} {'reviews/s':>10}")
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        n = len(texts) // b * b
        id_batches = [ids[i : i + b] for i in range(0, n, b)]
        text_batches = [texts[i : i + b] for i in range(0, n, b)]
        m = summary(measure(model_only, id_batches, args.seconds), b)
        e = summary(measure(end_to_end, text_batches, args.seconds), b)
        rows.append({"batch_size": b, "model": m, "end_to_end": e})
        print(
            f"{b:>5} {precision:>4} | {m['ms_per_batch_median']:>14.2f} {m['reviews_per_s']:>10.1f} | "
            f"{e['ms_per_batch_median']:>12.2f} {e['reviews_per_s']:>10.1f}"
        )

    streams, one = [], {}
    if args.streams > 1:
        single_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, single_threads // args.streams))
        one = summary(measure(end_to_end, [[t] for t in texts], args.seconds), 1)  # what a lone request costs one worker
        print(f"batch 1 on one stream of {torch.get_num_threads()} thread(s), {precision}: {one['ms_per_batch_median']:.2f} ms end to end")
        print(f"{args.streams} parallel streams x {torch.get_num_threads()} torch thread(s), end to end, {precision}:")
        for b in [int(x) for x in args.stream_batch_sizes.split(",")]:
            n = len(texts) // b * b
            rate = parallel(end_to_end, [texts[i : i + b] for i in range(0, n, b)], args.streams, args.seconds)
            streams.append({"batch_size": b, "reviews_per_s": rate})
            print(f"{b:>5} | {rate:>10.1f} reviews/s")
        torch.set_num_threads(single_threads)

    best_model = max(rows, key=lambda r: r["model"]["reviews_per_s"])
    best_e2e = max(rows, key=lambda r: r["end_to_end"]["reviews_per_s"])
    b1 = next((r for r in rows if r["batch_size"] == 1), None)
    return {
        "precision": precision,
        "rows": rows,
        "best_model": {"batch_size": best_model["batch_size"], "reviews_per_s": best_model["model"]["reviews_per_s"]},
        "best_end_to_end": {"batch_size": best_e2e["batch_size"], "reviews_per_s": best_e2e["end_to_end"]["reviews_per_s"]},
        "streams": {"n": args.streams, "rows": streams, "batch1_ms_one_stream": one["ms_per_batch_median"] if streams else None},
        "best_any": max(
            [best_e2e["end_to_end"]["reviews_per_s"], *(r["reviews_per_s"] for r in streams)]
        ),  # the ceiling: single stream or parallel streams, end to end
        "batch1_ms": {"model": b1["model"]["ms_per_batch_median"], "end_to_end": b1["end_to_end"]["ms_per_batch_median"]} if b1 else None,
        "batching_gain": best_e2e["end_to_end"]["reviews_per_s"] / b1["end_to_end"]["reviews_per_s"] if b1 else None,
    }


if __name__ == "__main__":
    main()
