"""Overload: bursts of 10x capacity. Excess must get a fast 503 with Retry-After, accepted requests must complete,
RSS must stay bounded and the service must be healthy afterwards.

    python -m bench.overload [--factor 10] [--burst-seconds 2] [--capacity REQ_PER_S]

Two bursts, open loop (arrivals do not wait for answers), real IMDb test reviews, default settings:
A. `batch`:  requests of 16 texts at factor x capacity (in texts/s), at most 600 connections: the model queue
   (SENTIMENT_MAX_QUEUE, 1024 texts) overflows and the app answers 503 `overloaded` + Retry-After.
B. `single`: single-text requests at factor x capacity, up to 1500 connections: past SENTIMENT_MAX_IN_FLIGHT the
   in-flight cap answers 503 (connections past SENTIMENT_MAX_CONNECTIONS are not refused: the server closes the
   longest-stalled ones, app/server.py).
Capacity (single-text requests/s ~ texts/s) from --capacity, else bench/results/serve.json, else a wrk probe.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench import common, loadgen
from bench.soak import capacity_from_results, probe_capacity


async def burst(server: common.Server, requests: list[bytes], rate: float, seconds: float, max_in_flight: int) -> dict:
    port = int(server.base.rsplit(":", 1)[1])
    peak = {"rss_mb": common.tree_rss_mb(server.pid), "queue": 0.0}
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            peak["rss_mb"] = max(peak["rss_mb"], common.tree_rss_mb(server.pid))
            await asyncio.sleep(0.1)

    cpu0, t0 = common.cpu_seconds(os.getpid()), time.monotonic()
    task = asyncio.create_task(sampler())
    run = await loadgen.open_loop("127.0.0.1", port, requests, rate, seconds, max_in_flight=max_in_flight, timeout=60)
    stop.set()
    await task
    wall = time.monotonic() - t0
    s = run.summary()
    r503 = [r for r in run.results if r.outcome == "ok" and r.status == 503]
    return {
        "offered_rate": rate,
        "sent": len(run.results),
        "achieved_offer_rate": len(run.results) / seconds,
        "late_arrivals": getattr(run, "late", 0),
        "summary": s,
        "503_with_retry_after": sum(1 for r in r503 if r.retry_after),
        "503_without_retry_after": sum(1 for r in r503 if not r.retry_after),
        "peak_rss_mb": peak["rss_mb"],
        "client_cores": (common.cpu_seconds(os.getpid()) - cpu0) / wall,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--burst-seconds", type=float, default=2.0)
    parser.add_argument("--capacity", type=float)
    args = common.parse_bench_args(parser, argv, "overload")
    texts = common.imdb_test_texts()
    bodies = common.write_bodies(texts, common.RESULTS / "bodies.jsonl")
    env = common.service_env(args)
    server = common.start_service(env, name="overload")
    result: dict = {"machine": common.machine(), "env": {k: v for k, v in env.items() if k != "SENTIMENT_MODEL_PATH"}}
    try:
        rss_idle = common.tree_rss_mb(server.pid)
        capacity = args.capacity or capacity_from_results() or probe_capacity(server, bodies)
        result.update({"capacity_req_s": capacity, "factor": args.factor, "rss_idle_mb": rss_idle})
        print(f"capacity {capacity:.0f} texts/s; bursts of {args.factor:.0f}x for {args.burst_seconds} s; RSS idle {rss_idle:.0f} MiB")
        phases = {
            "batch": (loadgen.predict_requests(texts, per_request=16), args.factor * capacity / 16, 600),
            "single": (loadgen.predict_requests(texts), args.factor * capacity, 1500),
        }
        for name, (requests, rate, max_in_flight) in phases.items():
            phase = asyncio.run(burst(server, requests, rate, args.burst_seconds, max_in_flight))
            t_end = time.monotonic()
            # Recovery: ready again, and a good request answers correctly.
            recovered = None
            while time.monotonic() - t_end < 60:
                status, _, body = common.post_json(f"{server.base}/predict", {"texts": ["A wonderful, moving film.", "Awful and boring."]})
                if status == 200 and common.http("GET", f"{server.base}/health/ready")[0] == 200:
                    recovered = time.monotonic() - t_end
                    phase["good_request_labels"] = [p["label"] for p in body["predictions"]]
                    break
                time.sleep(0.1)
            phase["recovered_after_s"] = recovered
            phase["rss_after_mb"] = common.tree_rss_mb(server.pid)
            result[name] = phase
            s = phase["summary"]
            print(
                f"[{name}] offered {phase['offered_rate']:.0f} req/s, sent {phase['sent']} ({phase['achieved_offer_rate']:.0f}/s), "
                f"outcomes {s['outcomes']}, statuses {s['statuses']}\n"
                f"  200 latency {s['latency_200_ms']}\n  503 latency {s['latency_503_ms']}\n"
                f"  503 with Retry-After {phase['503_with_retry_after']}, without {phase['503_without_retry_after']}; "
                f"peak RSS {phase['peak_rss_mb']:.0f} MiB (idle {rss_idle:.0f}), after {phase['rss_after_mb']:.0f}; "
                f"recovered in {recovered if recovered is None else round(recovered, 2)} s; client {phase['client_cores']:.2f} cores",
                flush=True,
            )
            time.sleep(2)
        result["rss_peak_mb"] = common.tree_hwm_mb(server.pid)
    finally:
        result["exit_code"] = server.stop()
    print(f"exit {result['exit_code']}; peak RSS (VmHWM) {result.get('rss_peak_mb', 0):.0f} MiB")
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
