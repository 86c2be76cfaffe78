"""RSS under sustained overload, for one or more allocator settings in one run: does memory plateau, and does it return?

    python -m bench.memory [--rounds 8] [--seconds 20] [--clients 256] [--idle 30] \
        [--config default --config 'trim:SENTIMENT_IDLE_TRIM_MS=0' --config 'jemalloc:LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2']

Each --config is `name[:KEY=VALUE,KEY=VALUE...]`: environment for a fresh `sentiment-serve` (defaults otherwise).
Per config: RSS at ready, then `--rounds` rounds of wrk (closed loop, `--clients` connections, single real IMDb test
reviews) of `--seconds` each with RSS and throughput after each, then RSS after `--idle` seconds without load.
Verdicts (issue 30): plateau = RSS after the last round <= 1.05 x RSS after round 4 (half-way); return = idle RSS
<= 1.5 x ready. Configs run one after another in the same process, so their figures are comparable.
"""

from __future__ import annotations

import argparse
import re
import time

from bench import common


def parse_config(spec: str) -> tuple[str, dict[str, str]]:
    """`name:KEY=VALUE,KEY=VALUE`; a comma splits only before an UPPER_CASE name and '=' (MALLOC_CONF's own commas stay)."""
    name, _, pairs = spec.partition(":")
    return name, dict(kv.split("=", 1) for kv in re.split(r",(?=[A-Z_][A-Z0-9_]*=)", pairs) if kv)


def measure(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    server = common.start_service({"SENTIMENT_MODEL_PATH": str(args.model), **env}, name=f"memory_{name}")
    url = f"{server.base}/predict"
    try:
        ready = common.rss_mb(server.pid)[0]
        rounds = []
        for k in range(args.rounds):
            w = common.run_wrk(url, args.bodies, args.clients, args.seconds)
            rss = common.rss_mb(server.pid)[0]
            errors = sum(w["errors"].values())
            rounds.append({"round": k + 1, "rss_mb": rss, "throughput": w["requests"] / (w["duration_us"] / 1e6), "errors": errors})
            print(f"  {name:>10} round {k + 1}: RSS {rss:7.1f} MiB  {rounds[-1]['throughput']:7.1f} req/s  errors {errors}", flush=True)
        time.sleep(args.idle)
        idle = common.rss_mb(server.pid)[0]
        peak = common.rss_mb(server.pid)[1]
    finally:
        exit_code = server.stop()
    half = rounds[len(rounds) // 2 - 1]["rss_mb"] if len(rounds) >= 2 else rounds[0]["rss_mb"]
    result = {
        "name": name,
        "env": env,
        "rss_ready_mb": ready,
        "rounds": rounds,
        "rss_idle_mb": idle,
        "rss_peak_mb": peak,
        "plateau_ratio": rounds[-1]["rss_mb"] / half,
        "idle_over_ready": idle / ready,
        "mean_throughput": sum(r["throughput"] for r in rounds) / len(rounds),
        "exit_code": exit_code,
    }
    print(
        f"  {name:>10}: ready {ready:.0f} MiB, last round / round {len(rounds) // 2} = {result['plateau_ratio']:.3f} "
        f"({'ok' if result['plateau_ratio'] <= 1.05 else 'FAIL'}), idle after {args.idle:.0f} s {idle:.0f} MiB = "
        f"{result['idle_over_ready']:.2f}x ready ({'ok' if result['idle_over_ready'] <= 1.5 else 'FAIL'}), peak {peak:.0f} MiB, "
        f"mean {result['mean_throughput']:.1f} req/s",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="name[:KEY=VALUE,...] (repeatable; default: 'default')")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--idle", type=float, default=30.0)
    args = common.parse_bench_args(parser, argv, "memory")
    machine = common.machine()
    args.bodies = common.write_bodies(common.imdb_test_texts(), common.RESULTS / "bodies.jsonl")
    results = [
        measure(name, {**dict(kv.split("=", 1) for kv in args.env), **env}, args)
        for name, env in map(parse_config, args.config or ["default"])
    ]
    payload = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, "configs": results}
    print(f"wrote {common.save(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
