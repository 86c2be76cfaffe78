"""Soak: the service at ~70 % of its capacity for a bounded time; 0 errors, 0 connections closed without a response
(keep-alive connections are reused, never retried by the client) and RSS growth < 5 % expected.

    python -m bench.soak [--seconds 600 | --requests N] [--load 0.7] [--capacity REQ_PER_S] [--probe]

Capacity (single-text requests/s) comes from --capacity, else (unless --probe) the service's 64-client point of
bench/results/serve.json, else a 10 s wrk probe at 64 clients of the warmed-up server under test. `--requests N` sets the
duration to N / rate (issue 30's soak: `--requests 1000000 --load 0.8 --probe`). Load is open loop (Poisson arrivals, so queueing is real, not self-throttled)
from the asyncio client in bench/loadgen.py, with single-text requests of real IMDb test reviews.
RSS is sampled from /proc every few seconds; growth is the mean RSS over the last 10 % of the run against the mean
over 10-20 % (after allocator and connection warm-up; single samples swing with the batches in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench import common, loadgen

PROXY_IDLE_S = 60.0  # a common load balancer's idle timeout (AWS ALB, nginx upstream keepalive_timeout is 60 s too)


def capacity_from_results() -> float | None:
    """The service's closed-loop throughput at 64 clients in bench/results/serve.json (what it sustains with a
    queue of moderate depth; the 256-client figure needs a 4x deeper queue and is not a sustainable rate)."""
    serve = common.load_result("serve")
    points = (serve or {}).get("targets", {}).get("service", {}).get("points") or []
    at64 = [p["throughput"] for p in points if p["clients"] == 64]
    return at64[0] if at64 else max((p["throughput"] for p in points), default=None)


def probe_capacity(server: common.Server, bodies) -> float:
    """wrk at 64 clients for 10 s after a 5 s warm-up: a cold server (TorchScript's first optimising calls, the
    allocator) measures ~40 % low."""
    common.run_wrk(f"{server.base}/predict", bodies, 64, 5)
    w = common.run_wrk(f"{server.base}/predict", bodies, 64, 10)
    return w["requests"] / (w["duration_us"] / 1e6)


async def soak(server: common.Server, requests: list[bytes], rate: float, seconds: float, sample_every: float) -> dict:
    samples: list[dict] = []
    port = int(server.base.rsplit(":", 1)[1])
    t0 = time.monotonic()
    self_cpu0 = common.cpu_seconds(os.getpid())
    srv_cpu0 = common.tree_cpu_seconds(server.pid)

    async def sampler() -> None:
        while True:
            rss, hwm = common.tree_rss_mb(server.pid), common.tree_hwm_mb(server.pid)
            samples.append({"t": time.monotonic() - t0, "rss_mb": rss, "hwm_mb": hwm})
            await asyncio.sleep(sample_every)

    task = asyncio.create_task(sampler())
    # The client stands in for a proxy: keep-alive pool, idle timeout PROXY_IDLE_S (below the server's), and no retry
    # of a reused connection closed under it, so every such close shows as no_response.
    run = await loadgen.open_loop(
        "127.0.0.1", port, requests, rate, seconds, max_in_flight=512, retry_stale=False, idle_timeout=PROXY_IDLE_S
    )
    task.cancel()
    rss, hwm = common.tree_rss_mb(server.pid), common.tree_hwm_mb(server.pid)
    samples.append({"t": time.monotonic() - t0, "rss_mb": rss, "hwm_mb": hwm})
    wall = time.monotonic() - t0
    # Per-minute-ish windows of p99, to see drift.
    windows = []
    step = max(10.0, seconds / 10)
    for k in range(int(seconds // step) + 1):
        lo, hi = run.started + k * step, run.started + (k + 1) * step
        lat = sorted(r.latency for r in run.results if lo <= r.started_at < hi and r.outcome == "ok" and r.status == 200)
        if lat:
            windows.append({"from_s": k * step, "n": len(lat), **(loadgen.percentiles(lat) or {})})
    return {
        "summary": run.summary(),
        "late_arrivals": getattr(run, "late", 0),
        "unsent_client_behind": getattr(run, "unsent", 0),
        "samples": samples,
        "windows": windows,
        "client_cores": (common.cpu_seconds(os.getpid()) - self_cpu0) / wall,
        "server_cores": (common.tree_cpu_seconds(server.pid) - srv_cpu0) / wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of capacity")
    parser.add_argument("--capacity", type=float, help="single-text requests/s the service sustains")
    parser.add_argument("--probe", action="store_true", help="measure capacity with wrk on the server under test")
    parser.add_argument("--requests", type=int, help="run until about this many requests are sent (overrides --seconds)")
    args = common.parse_bench_args(parser, argv, "soak")
    texts = common.imdb_test_texts()
    bodies = common.write_bodies(texts, common.RESULTS / "bodies.jsonl")
    requests = loadgen.predict_requests(texts)
    env = common.service_env(args)
    server = common.start_service(env, name="soak")
    try:
        rss_ready = common.tree_rss_mb(server.pid)
        capacity = args.capacity or (None if args.probe else capacity_from_results()) or probe_capacity(server, bodies)
        rate = args.load * capacity
        if args.requests:
            args.seconds = args.requests / rate
        print(f"capacity {capacity:.0f} req/s -> soak at {rate:.0f} req/s for {args.seconds:.0f} s (RSS at ready {rss_ready:.0f} MiB)")
        result = asyncio.run(soak(server, requests, rate, args.seconds, sample_every=max(1.0, args.seconds / 120)))
        healthy = common.http("GET", f"{server.base}/health/ready")[0] == 200
    finally:
        exit_code = server.stop()
    samples = result["samples"]
    base = next(s for s in samples if s["t"] >= 0.1 * args.seconds)
    end = samples[-1]
    # Single samples are noisy (batches in flight): growth is judged on means over [10 %, 20 %) and the last 10 %.
    early = [x["rss_mb"] for x in samples if 0.1 * args.seconds <= x["t"] < 0.2 * args.seconds] or [base["rss_mb"]]
    late = [x["rss_mb"] for x in samples if x["t"] >= 0.9 * args.seconds] or [end["rss_mb"]]
    growth_windows = 100 * (sum(late) / len(late) - sum(early) / len(early)) / (sum(early) / len(early))
    s = result["summary"]
    errors = s["requests"] - s["statuses"].get("200", 0) + result["unsent_client_behind"]
    # A connection the server closed with a request written and no response byte sent: what a proxy turns into a 502.
    closed_without_response = s["outcomes"].get("no_response", 0) + s["outcomes"].get("unsent", 0)
    result.update(
        {
            "machine": common.machine(),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "capacity_req_s": capacity,
            "rate_req_s": rate,
            "seconds": args.seconds,
            "rss_ready_mb": rss_ready,
            "rss_base_mb": base["rss_mb"],
            "rss_end_mb": end["rss_mb"],
            "rss_peak_mb": end["hwm_mb"],
            "rss_growth_pct": 100 * (end["rss_mb"] - base["rss_mb"]) / base["rss_mb"],
            "rss_growth_windows_pct": growth_windows,
            "rss_growth_from_ready_pct": 100 * (end["rss_mb"] - rss_ready) / rss_ready,
            "errors": errors,
            "closed_without_response": closed_without_response,
            "healthy_after": healthy,
            "exit_code": exit_code,
        }
    )
    print(
        f"{s['requests']} requests in {s['duration_s']:.0f} s ({s['ok_per_s']:.0f}/s ok), "
        f"outcomes {s['outcomes']}, statuses {s['statuses']}\n"
        f"latency 200: {s['latency_200_ms']}\n"
        f"errors {errors}; connections closed without a response {closed_without_response}; RSS {result['rss_base_mb']:.0f} -> {result['rss_end_mb']:.0f} MiB "
        f"(growth {result['rss_growth_pct']:+.2f} % from t={base['t']:.0f} s; {result['rss_growth_from_ready_pct']:+.2f} % from ready), "
        f"peak {result['rss_peak_mb']:.0f} MiB; client {result['client_cores']:.2f} cores, server {result['server_cores']:.2f} cores; "
        f"healthy after: {healthy}; exit {exit_code}"
    )
    print(f"RSS growth, mean of the last 10 % vs mean over 10-20 % of the run: {growth_windows:+.2f} %")
    verdict = errors == 0 and closed_without_response == 0 and growth_windows < 5 and healthy
    result["pass"] = verdict
    print("PASS" if verdict else "FAIL")
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
