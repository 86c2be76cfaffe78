"""The real service under load vs the naive baseline (batching off) vs LitServe and TorchServe, plus the raw ceiling, in one run.

    python -m bench.serve [--clients 1,8,64,256] [--seconds 12] [--threads 0] [--targets service,naive,litserve,torchserve]

1. Raw ceiling: bench.raw_model on the same texts with the same torch threads (a short pass, same process).
2. For each target, start it fresh on 127.0.0.1 (cold start = spawn -> first ready answer), check it answers what the
   raw model answers, warm it up (3 s at 64 clients), then drive it with wrk (closed loop: N connections, one
   single-text request of a real IMDb test review in flight each) for --seconds per concurrency.
   - service: `sentiment-serve` with defaults (SENTIMENT_MAX_BATCH_SIZE=64);
   - naive:   the same with SENTIMENT_MAX_BATCH_SIZE=1 (one forward per text, no batching);
   - litserve: bench/litserve (LitServe 0.2.19: max_batch_size 64, batch_timeout 5 ms, 2 workers x 1 torch thread),
     if its venv exists;
   - torchserve: bench/torchserve (batchSize 64, maxBatchDelay 5 ms, 2 workers x 1 torch thread), if its venv exists.
   All of them serve the same artifact through the same contract encoder.
3. Per point: throughput, p50/p95/p99 latency (wrk), errors, mean batch size and model-thread busy fraction
   (/metrics deltas; TorchServe: the handler's own counters), CPU seconds of server and client from /proc.
4. Open loop (--open-loop 0.5,0.8,0.95): Poisson arrivals (bench/loadgen.py) at those fractions of the target's own
   capacity (its best closed-loop throughput), and at the same fractions of the anchor's capacity (--open-loop-anchor,
   LitServe by default; the anchor runs first). p50/p99 here are the latency an operator plans with: closed-loop wrk
   lets a slow server slow its own clients down and so hides queueing.

The client competes with the server for the 2 cores: its CPU (wrk's utime+stime from /proc/<pid>/stat, read after it
exits and before it is reaped) is reported per point as cores used, next to the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.parse
from pathlib import Path

import torch

from bench import common, loadgen, raw_model
from bench.litserve import ls
from bench.torchserve import ts
from contract import artifact as artifact_io
from contract.predictor import pad_batch


def expected_probs(model: Path, texts: list[str]) -> list[float]:
    art = artifact_io.load(model)
    out = []
    for t in texts:  # one at a time: the reference does not depend on batching
        x, lengths = pad_batch([art.encoder.encode(t).ids])
        with torch.inference_mode():
            out.append(float(art.module(x, lengths)[0]))
    return out


def check_answers(url: str, texts: list[str], expected: list[float]) -> float:
    """Largest |served - raw| over `texts`; raises if a request fails."""
    worst = 0.0
    for text, p in zip(texts, expected, strict=True):
        status, _, body = common.post_json(url, {"text": text})
        if status != 200:
            raise RuntimeError(f"POST {url} -> {status}: {body}")
        served = body["predictions"][0]["p_positive"] if "predictions" in body else body["p_positive"]
        worst = max(worst, abs(served - p))
    return worst


ANCHORS = ("litserve", "torchserve")  # other servers: batch counters from their handler's stats files, not /metrics


def counters(target: str, server: common.Server) -> dict[str, float]:
    if target in ANCHORS:
        raw = ts.read_stats(Path(str(server.extra["stats"])))
        return {"ts_batches": raw["batches"], "ts_texts": raw["texts"]}
    return common.scrape(f"{server.base}/metrics")


def drain(target: str, server: common.Server, timeout: float = 60.0) -> None:
    """Wait until the server has finished what a stopped wrk left behind, so it is not counted in the next point."""
    if target in ANCHORS:
        last, deadline = None, time.monotonic() + timeout
        while time.monotonic() < deadline:  # the handler's counter stops moving
            now = counters(target, server)
            if now == last:
                return
            last = now
            time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = common.scrape(f"{server.base}/metrics")
        if m.get("sentiment_queue_depth", 0) == 0 and m.get("sentiment_http_requests_in_progress", 0) <= 1:  # 1 = this scrape
            return
        time.sleep(0.2)


def point_stats(target: str, before: dict[str, float], after: dict[str, float], duration: float) -> dict[str, object]:
    if target in ANCHORS:
        batches = after["ts_batches"] - before["ts_batches"]
        texts = after["ts_texts"] - before["ts_texts"]
        return {"batches": batches, "mean_batch_size": texts / batches if batches else None}
    return common.batch_stats(before, after, duration)


def open_loop_point(url: str, requests: list[bytes], label: str, rate: float, seconds: float) -> dict[str, object]:
    """Poisson arrivals at `rate` req/s for `seconds` against `url`, cycling through the pre-built raw `requests`."""
    parts = urllib.parse.urlsplit(url)
    run = asyncio.run(loadgen.open_loop(parts.hostname or "127.0.0.1", parts.port or 80, requests, rate, seconds, max_in_flight=2048))
    summary = run.summary()
    latency = summary["latency_200_ms"] or {}
    point = {
        "label": label,
        "rate": rate,
        "ok_per_s": summary["ok_per_s"],
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "outcomes": summary["outcomes"],
        "statuses": summary["statuses"],
        "late": run.late,  # type: ignore[attr-defined]
        "unsent": run.unsent,  # type: ignore[attr-defined]
    }
    p50, p99 = point["p50_ms"], point["p99_ms"]
    print(
        f"  open loop {label:>14} {rate:7.1f}/s -> {point['ok_per_s']:7.1f} ok/s  p50 {p50 or float('nan'):8.2f}  "
        f"p99 {p99 or float('nan'):8.2f} ms  statuses {point['statuses']}  late {point['late']} unsent {point['unsent']}",
        flush=True,
    )
    return point


def open_loop_rates(args: argparse.Namespace, capacity: float, anchor_capacity: float | None) -> list[tuple[str, float]]:
    """(label, rate) pairs: fractions of the target's own capacity, then of the anchor's (when measured)."""
    rates = [(f"{f:.0%} own", f * capacity) for f in args.open_loop]
    if anchor_capacity:
        rates += [(f"{f:.0%} {args.open_loop_anchor}", f * anchor_capacity) for f in args.open_loop]
    return rates


def capacity(result: dict) -> float | None:
    """A target's measured capacity: its best closed-loop throughput."""
    return max((p["throughput"] for p in result.get("points", [])), default=None)


def bench_target(
    target: str, args: argparse.Namespace, bodies: Path, check_texts: list[str], expected: list[float], anchor_capacity: float | None = None
) -> dict:
    threads = str(args.threads) if args.threads else ""
    t_spawn = time.time()
    if target == "torchserve":
        server = ts.start(
            args.ts_venv,
            args.model,
            batch_size=64,
            max_batch_delay_ms=args.ts_delay_ms,
            torch_threads=args.ts_threads,
            workers=args.ts_workers,
        )
        url = f"{server.base}{server.extra['path']}"
        pid_cpu, pid_rss = common.tree_cpu_seconds, common.tree_rss_mb
    elif target == "litserve":
        server = ls.start(args.ls_venv, args.model, batch_size=64, batch_timeout_s=args.ls_timeout_ms / 1000, workers=args.ls_workers)
        url = f"{server.base}{server.extra['path']}"
        pid_cpu, pid_rss = common.tree_cpu_seconds, common.tree_rss_mb
    else:
        settings = {"SENTIMENT_MAX_BATCH_SIZE": "1" if target == "naive" else "64"}
        if threads:
            settings["SENTIMENT_TORCH_THREADS"] = threads
        env = common.service_env(args, **settings)
        server = common.start_service(env, name=target)
        url = f"{server.base}/predict"
        pid_cpu, pid_rss = common.tree_cpu_seconds, common.tree_rss_mb  # its serving processes (SENTIMENT_PROCESSES)
    result: dict[str, object] = {"target": target, "ready_s": server.ready_s, "started_at": t_spawn}
    try:
        result["rss_ready_mb"] = pid_rss(server.pid)
        result["max_abs_diff_vs_raw"] = check_answers(url, check_texts, expected)
        common.run_wrk(url, bodies, 64, args.warmup)  # warm-up: allocator, profiling executor, connection pools
        points = []
        for c in args.clients:
            drain(target, server)
            before, cpu0, t0 = counters(target, server), pid_cpu(server.pid), time.perf_counter()
            w = common.run_wrk(url, bodies, c, args.seconds)
            wall = time.perf_counter() - t0
            after, cpu1 = counters(target, server), pid_cpu(server.pid)
            duration = w["duration_us"] / 1e6
            lat = w["latency_us"]
            errors = sum(w["errors"].values())
            point = {
                "clients": c,
                "requests": w["requests"],
                "duration_s": duration,
                "throughput": w["requests"] / duration,
                "p50_ms": lat["p50"] / 1000,
                "p95_ms": lat["p95"] / 1000,
                "p99_ms": lat["p99"] / 1000,
                "max_ms": lat["max"] / 1000,
                "errors": w["errors"],
                "server_cores": (cpu1 - cpu0) / wall,
                "client_cores": w["client_cores"],
                "rss_mb": pid_rss(server.pid),
                **point_stats(target, before, after, wall),
            }
            points.append(point)
            mb = point.get("mean_batch_size")
            print(
                f"  {target:>10} c={c:<4} {point['throughput']:8.1f} req/s  p50 {point['p50_ms']:8.2f}  p95 {point['p95_ms']:8.2f}  "
                f"p99 {point['p99_ms']:8.2f} ms  batch {mb if mb is None else round(mb, 1)}  errors {errors}  "
                f"cpu server {point['server_cores']:.2f} client {point['client_cores']:.2f} cores",
                flush=True,
            )
        result["points"] = points
        if args.open_loop:
            texts = [json.loads(line)["text"] for line in bodies.read_text().splitlines()]
            requests = loadgen.predict_requests(texts, path=urllib.parse.urlsplit(url).path)  # built once, sent at every rate
            result["open_loop"] = []
            for label, rate in open_loop_rates(args, capacity(result) or 0.0, anchor_capacity):
                drain(target, server)
                result["open_loop"].append(open_loop_point(url, requests, label, rate, args.open_loop_seconds))
        drain(target, server)
        time.sleep(2)
        result["rss_idle_after_mb"] = pid_rss(server.pid)
        if target not in ANCHORS:
            result["rss_peak_mb"] = common.tree_hwm_mb(server.pid)
    finally:
        t_stop = time.perf_counter()
        if target in ANCHORS:
            ts.stop(server)  # the launcher and every process it started, by pid
            result["exit_code"] = server.proc.returncode
        else:
            result["exit_code"] = server.stop()
        result["stop_s"] = time.perf_counter() - t_stop
    return result


def ratios(raw: dict, targets: dict[str, dict], anchor: str = "litserve") -> dict[str, object]:
    def at(target: str, c: int, key: str) -> float | None:
        for p in targets.get(target, {}).get("points", []):
            if p["clients"] == c:
                return p[key]
        return None

    out: dict[str, object] = {}
    clients = [p["clients"] for p in targets.get("service", {}).get("points", [])]
    raw_e2e = raw["best_end_to_end"]["reviews_per_s"]
    raw_model_best = raw["best_model"]["reviews_per_s"]
    raw_any = raw.get("best_any", raw_e2e)
    raw64 = next((r["end_to_end"]["reviews_per_s"] for r in raw["rows"] if r["batch_size"] == 64), None)
    per_c = {}
    for c in clients:
        s = at("service", c, "throughput")
        row: dict[str, float | None] = {
            "service_over_raw_best_e2e": s / raw_e2e if s else None,
            "service_over_raw_ceiling": s / raw_any if s else None,  # best of single-stream and parallel streams
            "service_over_raw_best_model": s / raw_model_best if s else None,
            "service_over_raw_e2e_batch64": s / raw64 if s and raw64 else None,
        }
        if (n := at("naive", c, "throughput")) and s:
            row["service_over_naive"] = s / n
        for anchor in ANCHORS:
            if (t := at(anchor, c, "throughput")) and s:
                row[f"service_over_{anchor}"] = s / t
                row[f"p99_service_over_{anchor}"] = at("service", c, "p99_ms") / at(anchor, c, "p99_ms")
        per_c[str(c)] = row
    out["per_clients"] = per_c
    out["open_loop_p99_ms"] = {  # the same arrival rates for every target: fractions of the anchor's capacity
        target: {
            p["label"].replace(" own", f" {anchor}"): p["p99_ms"]
            for p in result.get("open_loop", [])
            if target == anchor or not p["label"].endswith(" own")
        }
        for target, result in targets.items()
        if result.get("open_loop")
    }
    if raw.get("batch1_ms") and (p50 := at("service", 1, "p50_ms")) is not None:
        out["p50_1_client_ms"] = p50
        out["raw_batch1_e2e_ms"] = raw["batch1_ms"]["end_to_end"]
        out["p50_1_client_minus_raw_batch1_ms"] = p50 - raw["batch1_ms"]["end_to_end"]
        if per_worker := raw.get("streams", {}).get("batch1_ms_one_stream"):  # one worker's threads, as the service runs a lone text
            out["raw_batch1_one_worker_ms"] = per_worker
            out["p50_1_client_minus_raw_batch1_one_worker_ms"] = p50 - per_worker
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=common.MODEL)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64, 256])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads everywhere (0 = the service's default: torch's)")
    parser.add_argument("--targets", default="litserve,torchserve,service,naive", help="in order; the open-loop anchor first")
    parser.add_argument("--ls-venv", type=Path, default=Path("/tmp/ls-venv"))
    parser.add_argument("--ls-timeout-ms", type=float, default=5.0, help="LitServe batch_timeout")
    parser.add_argument("--ls-workers", type=int, default=2, help="LitServe inference workers (1 torch thread each)")
    parser.add_argument("--ts-venv", type=Path, default=Path("/tmp/ts-venv"))
    parser.add_argument("--ts-delay-ms", type=int, default=5, help="TorchServe maxBatchDelay")
    parser.add_argument("--ts-workers", type=int, default=2, help="TorchServe worker processes (the service's auto plan on 2 cores: 2)")
    parser.add_argument("--ts-threads", type=int, default=1, help="torch threads per TorchServe worker (0 = torch's default)")
    parser.add_argument("--raw-seconds", type=float, default=2.0)
    parser.add_argument(
        "--open-loop",
        type=lambda s: [float(x) for x in s.split(",")] if s else [],
        default=[0.5, 0.8, 0.95],
        help="Poisson-arrival points at these fractions of capacity ('' = none)",
    )
    parser.add_argument("--open-loop-seconds", type=float, default=10.0)
    parser.add_argument("--open-loop-anchor", default="litserve", help="also run every target at fractions of this one's capacity")
    parser.add_argument("--env", nargs="*", default=[], help="extra SENTIMENT_*=value settings for service and naive")
    parser.add_argument("--out", default="serve")
    parser.add_argument("--force", action="store_true", help="run even while a training process is running")
    args = parser.parse_args(argv)
    common.refuse_if_busy(args.force)
    machine = common.machine()  # before the load: its load average says how quiet the machine was

    texts = common.imdb_test_texts()
    bodies = common.write_bodies(texts, common.RESULTS / "bodies.jsonl")
    check = texts[:8]
    expected = expected_probs(args.model, check)

    print("== raw model (same run, same texts, same threads)")
    raw_argv = ["--model", str(args.model), "--seconds", str(args.raw_seconds), "--batch-sizes", "1,8,16,32,64,128"]
    precision = next((e.split("=", 1)[1] for e in args.env if e.startswith("SENTIMENT_PRECISION=")), "auto")
    raw_argv += ["--precision", precision, "--out", f"{args.out}_raw"]  # the route the service runs
    raw = raw_model.main([*raw_argv, "--threads", str(args.threads), "--force"])

    targets: dict[str, dict] = {}
    for target in args.targets.split(","):
        if target == "torchserve" and not (args.ts_venv / "bin" / "torchserve").is_file():
            targets[target] = {"target": target, "error": f"no TorchServe at {args.ts_venv}; see bench/torchserve/ts.py"}
            print(f"== {target}: skipped ({targets[target]['error']})")
            continue
        if target == "litserve" and not (args.ls_venv / "bin" / "python").is_file():
            targets[target] = {"target": target, "error": f"no LitServe at {args.ls_venv}; see bench/litserve/ls.py"}
            print(f"== {target}: skipped ({targets[target]['error']})")
            continue
        print(f"== {target}", flush=True)
        try:
            anchor = targets.get(args.open_loop_anchor, {})
            targets[target] = bench_target(
                target, args, bodies, check, expected, capacity(anchor) if target != args.open_loop_anchor else None
            )
        except Exception as exc:  # one target failing must not lose the others' figures
            targets[target] = {"target": target, "error": f"{type(exc).__name__}: {exc}"[:4000]}
            print(f"  FAILED: {targets[target]['error']}")
        else:
            t = targets[target]
            print(
                f"  ready {t['ready_s']:.2f} s; RSS ready {t['rss_ready_mb']:.0f} MiB, idle after load {t['rss_idle_after_mb']:.0f} MiB"
                + (f", peak {t['rss_peak_mb']:.0f} MiB" if "rss_peak_mb" in t else "")
                + f"; |served - raw| <= {t['max_abs_diff_vs_raw']:.2e}; exit {t['exit_code']} after {t['stop_s']:.1f} s"
            )

    result = {
        "machine": machine,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch_threads": raw["torch_threads"],
        "raw": {
            k: raw[k]
            for k in (
                "best_model",
                "best_end_to_end",
                "best_any",
                "streams",
                "batch1_ms",
                "rows",
                "encode_ms_per_review",
                "mean_chars",
                "mean_ids",
            )
        },
        "targets": targets,
    }
    result["ratios"] = ratios(raw, targets, args.open_loop_anchor)
    print("\n== ratios")
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {common.save(args.out, result)}")
    try:
        from bench import plots

        plots.main([args.out] if args.out == "serve" else [args.out, str(common.RESULTS)])
    except Exception as exc:
        print(f"plots failed: {exc}")
    return result


if __name__ == "__main__":
    main()
