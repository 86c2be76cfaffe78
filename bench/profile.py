"""Where the service's time goes under load: py-spy samples of every thread, bucketed by what the code is doing.

    python -m bench.profile [--clients 64] [--seconds 15] [--env SENTIMENT_TORCH_THREADS=1 ...]

Starts the service, drives it with wrk (single-text IMDb reviews), and samples it with py-spy (`pip install
py-spy`; needs ptrace, fine as root) at 200 Hz including idle samples. Each sample is attributed to the first
matching category walking from the innermost frame outwards (tokenize, vocab lookup, JSON/validation, torch
forward, padding, HTTP parsing, framework, metrics, asyncio, idle), per thread: the event-loop thread and the
model thread are the two that matter. Writes the raw stacks and the table to bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import threading
import time

from bench import common

# (category, regex on "function (file:line)"), first match from the leaf wins.
RULES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        (
            "idle (waiting)",
            r"^(select|poll|epoll_wait|_worker|wait|_wait_for_tstate_lock|acquire) \((selectors|threading|concurrent|queue)",
        ),
        ("tokenize (contract.text)", r"contract/text\.py"),
        ("vocab lookup (contract.vocab encode)", r"\((?:encode) \(contract/vocab\.py|contract/vocab\.py:\d+\)$|^encode \(contract/vocab"),
        ("padding (pad_batch)", r"^pad_batch "),
        ("torch forward", r"torch/|^forward \(app/runner|<torch|RecursiveScriptModule|_call_impl"),
        (
            "JSON + pydantic (request parse, response serialize)",
            r"json/|pydantic|jsonable_encoder|serialize_response|_prepare_response_content|fastapi/encoders",
        ),
        ("prometheus metrics", r"prometheus_client"),
        ("HTTP parsing/writing (uvicorn, httptools)", r"uvicorn/protocols|httptools|h11"),
        ("framework (starlette/fastapi routing, deps, middleware)", r"starlette/|fastapi/|app/middleware|app/dependencies|anyio/"),
        ("service code (routes, runner, batcher)", r"app/"),
        ("asyncio event loop", r"asyncio/|uvloop"),
    ]
]


def thread_name(frames: list[str]) -> str:
    text = ";".join(frames[:3])
    if "model-worker" in text:
        return "model thread"
    if "MainThread" in text:
        return "event loop (main thread)"
    if "AnyIO worker thread" in text:
        return "anyio worker threads (FastAPI runs sync `def` dependencies here)"
    return "other threads"


def categorize(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in RULES:
            if pattern.search(frame):
                return name
    return "other"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=15)
    args = common.parse_bench_args(parser, argv, "profile")
    bodies = common.write_bodies(common.imdb_test_texts(), common.RESULTS / "bodies.jsonl")
    env = common.service_env(args)
    server = common.start_service(env, name=args.out)
    raw = common.RESULTS / f"{args.out}.pyspy.txt"
    try:
        common.run_wrk(f"{server.base}/predict", bodies, args.clients, 3)  # warm-up
        wrk_result: dict = {}

        def load() -> None:
            time.sleep(1)
            wrk_result.update(common.run_wrk(f"{server.base}/predict", bodies, args.clients, args.seconds + 2))

        t = threading.Thread(target=load)
        t.start()
        time.sleep(2)
        cmd = ["py-spy", "record", "--pid", str(server.pid), "--rate", "200", "--duration", str(args.seconds), "--format", "raw"]
        cmd += ["--threads", "--nonblocking", "--output", str(raw)]  # no --idle: only samples where the thread is on CPU
        subprocess.run(cmd, check=True, capture_output=True)
        t.join()
    finally:
        server.stop()
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        frames = stack_text.split(";")
        per_thread[thread_name(frames)][categorize(frames[1:])] += int(count)
    table = {}
    for thread, counts in sorted(per_thread.items()):
        total = sum(counts.values())
        table[thread] = {
            "cpu_s": total / 200,
            "busy_fraction": total / 200 / args.seconds,
            "categories_pct": {k: round(100 * v / total, 1) for k, v in counts.most_common()},
        }
        print(f"\n{thread}: on CPU {total / 200:.1f} s of {args.seconds} s ({100 * total / 200 / args.seconds:.0f} % of one core)")
        for k, v in counts.most_common():
            print(f"  {100 * v / total:5.1f} %  {k}")
    throughput = wrk_result["requests"] / (wrk_result["duration_us"] / 1e6)
    print(f"\nthroughput during profile {throughput:.0f} req/s (py-spy sampling costs a little); settings {env}")
    result = {"clients": args.clients, "env": env, "throughput": throughput, "threads": table, "raw": str(raw)}
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
