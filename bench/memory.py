"""RSS under sustained overload, for one or more allocator settings in one run: does memory plateau, and does it return?

    python -m bench.memory [--rounds 8] [--seconds 20] [--clients 256] [--idle 30] [--reference-round N] \
        [--config default --config 'trim:SENTIMENT_IDLE_TRIM_MS=0' --config 'jemalloc:LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2']

Each --config is `name[:KEY=VALUE,KEY=VALUE...]`: environment for a fresh `sentiment-serve` (defaults otherwise);
the names `litserve` and `torchserve` run the peers instead, on the same artifact, as bench.serve configures them
(2 workers x 1 torch thread, batch 64, 5 ms; venvs at /tmp/ls-venv and /tmp/ts-venv), their RSS summed over the
process tree (launcher + workers).
Per config: RSS (and PSS, which counts pages the serving processes share once) at ready, then `--rounds` rounds of wrk (closed loop, `--clients` connections, single real IMDb test
reviews) of `--seconds` each, with RSS sampled every second during each round (mean and highest per round: a single
sample swings with the batches in flight) and throughput, then RSS after `--idle` seconds without load.
Verdicts (issue 30): plateau = mean RSS of the last round <= 1.05 x that of the reference round (default half-way:
round 4 of 8; `--rounds 90 --reference-round 30` is "minute 30 against minute 10" with 20-s rounds); return = idle
RSS <= 1.5 x ready. Configs run one after another in the same process, so their figures are comparable.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench import common
from bench.litserve import ls
from bench.torchserve import ts


def parse_config(spec: str) -> tuple[str, dict[str, str]]:
    """`name:KEY=VALUE,KEY=VALUE`; a comma splits only before an UPPER_CASE name and '=' (MALLOC_CONF's own commas stay)."""
    name, _, pairs = spec.partition(":")
    return name, dict(kv.split("=", 1) for kv in re.split(r",(?=[A-Z_][A-Z0-9_]*=)", pairs) if kv)


PEERS = ("litserve", "torchserve")


def sample_rss(rss: Callable[[], float], samples: list[float], done: threading.Event) -> None:
    """RSS every second until `done`: the mean over a round is steadier than the sample after it."""
    while not done.wait(1.0):
        samples.append(rss())


def start(name: str, env: dict[str, str], args: argparse.Namespace) -> tuple[common.Server, str, Callable[[], float]]:
    """The server under test -> (server, predict URL, its RSS in MiB now)."""
    if name in PEERS:
        server = (
            ls.start(Path("/tmp/ls-venv"), args.model, batch_size=64, workers=2)
            if name == "litserve"
            else ts.start(Path("/tmp/ts-venv"), args.model, batch_size=64, torch_threads=1, workers=2)
        )
        return server, f"{server.base}{server.extra['path']}", lambda: common.tree_rss_mb(server.pid)
    server = common.start_service({"SENTIMENT_MODEL_PATH": str(args.model), **env}, name=f"memory_{name}")
    return server, f"{server.base}/predict", lambda: common.tree_rss_mb(server.pid)  # every serving process


def measure(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    server, url, rss_now = start(name, env, args)
    try:
        ready, pss_ready = rss_now(), common.tree_pss_mb(server.pid)
        rounds = []
        for k in range(args.rounds):
            samples, done = [], threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(rss_now, samples, done))
            sampler.start()
            w = common.run_wrk(url, args.bodies, args.clients, args.seconds)
            done.set()
            sampler.join()
            rss, pss = rss_now(), common.tree_pss_mb(server.pid)
            errors = sum(w["errors"].values())
            mean = sum(samples) / len(samples) if samples else rss
            throughput = w["requests"] / (w["duration_us"] / 1e6)
            rounds.append(
                {
                    "round": k + 1,
                    "rss_mb": rss,
                    "rss_mean_mb": mean,
                    "rss_max_mb": max(samples, default=rss),
                    "pss_mb": pss,
                    "throughput": throughput,
                    "errors": errors,
                }
            )
            print(
                f"  {name:>10} round {k + 1}: RSS {rss:7.1f} MiB (mean {mean:7.1f}, max {rounds[-1]['rss_max_mb']:7.1f}), PSS {pss:7.1f}  "
                f"{throughput:7.1f} req/s  errors {errors}",
                flush=True,
            )
        time.sleep(args.idle)
        idle, pss_idle = rss_now(), common.tree_pss_mb(server.pid)
        peak = max(common.tree_hwm_mb(server.pid), max(r["rss_max_mb"] for r in rounds))  # a peer's tree: highest sample
    finally:
        if name in PEERS:
            ts.stop(server)
            exit_code = server.proc.returncode
        else:
            exit_code = server.stop()
    reference = rounds[min(args.reference_round or max(len(rounds) // 2, 1), len(rounds)) - 1]
    result = {
        "name": name,
        "env": env,
        "rss_ready_mb": ready,
        "rounds": rounds,
        "rss_idle_mb": idle,
        "pss_ready_mb": pss_ready,
        "pss_idle_mb": pss_idle,
        "rss_peak_mb": peak,
        "reference_round": reference["round"],
        "plateau_ratio": rounds[-1]["rss_mean_mb"] / reference["rss_mean_mb"],
        "idle_over_ready": idle / ready,
        "mean_throughput": sum(r["throughput"] for r in rounds) / len(rounds),
        "exit_code": exit_code,
    }
    print(
        f"  {name:>10}: ready {ready:.0f} MiB, mean RSS last round / round {reference['round']} = {result['plateau_ratio']:.3f} "
        f"({'ok' if result['plateau_ratio'] <= 1.05 else 'FAIL'}), idle after {args.idle:.0f} s {idle:.0f} MiB = "
        f"{result['idle_over_ready']:.2f}x ready ({'ok' if result['idle_over_ready'] <= 1.5 else 'FAIL'}), peak {peak:.0f} MiB, "
        f"mean {result['mean_throughput']:.1f} req/s; PSS ready {pss_ready:.0f} MiB, idle {pss_idle:.0f} MiB",
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
    parser.add_argument("--reference-round", type=int, help="round the last one is compared with (default: half-way)")
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
