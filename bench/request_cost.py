"""CPU per request on the event loop vs the model threads, from /proc per-thread counters, under wrk load.

    python -m bench.request_cost [--clients 32] [--seconds 8] [--env SENTIMENT_...=...] [--out request_cost]

On 2 cores every millisecond the event loop spends per request (HTTP, JSON, validation, tokenization,
asyncio) is taken from the model, so this is the figure to cut. The main thread (tid = pid) runs the event
loop; every other thread of the server is counted as "workers" (the model workers, and the helper threads
that encode requests over 4 KiB of text). With several serving processes, each one's main thread and other
threads are counted the same way and summed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import common


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the main threads ("loop") and of all other threads ("model") of `pid` and the serving
    processes it started (SENTIMENT_PROCESSES: each has its own event loop and model workers)."""
    out = {"model": 0.0, "loop": 0.0}
    for process in [pid, *common.descendants(pid)]:
        for task in Path(f"/proc/{process}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / common.CLK_TCK
            out["loop" if task.name == str(process) else "model"] += seconds
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = common.parse_bench_args(parser, argv, "request_cost")
    texts = common.imdb_test_texts()
    bodies = common.write_bodies(texts, common.RESULTS / "bodies.jsonl")
    server = common.start_service(common.service_env(args), name="request_cost")
    try:
        url = f"{server.base}/predict"
        common.run_wrk(url, bodies, args.clients, 2)  # warm-up
        before, t0 = thread_cpu(server.pid), time.perf_counter()
        w = common.run_wrk(url, bodies, args.clients, args.seconds)
        wall = time.perf_counter() - t0
        after = thread_cpu(server.pid)
    finally:
        server.stop()
    n = w["requests"]
    result = {
        "clients": args.clients,
        "env": args.env,
        "requests": n,
        "throughput": n / (w["duration_us"] / 1e6),
        "loop_ms_per_request": 1000 * (after["loop"] - before["loop"]) / n,
        "model_ms_per_request": 1000 * (after["model"] - before["model"]) / n,
        "loop_cores": (after["loop"] - before["loop"]) / wall,
        "model_cores": (after["model"] - before["model"]) / wall,
        "client_cores": w["client_cores"],
    }
    print(
        f"{result['throughput']:.1f} req/s at {args.clients} clients; CPU per request: event loop "
        f"{result['loop_ms_per_request']:.3f} ms, worker threads {result['model_ms_per_request']:.3f} ms "
        f"(cores: loop {result['loop_cores']:.2f}, model {result['model_cores']:.2f}, wrk {result['client_cores']:.2f})"
    )
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
