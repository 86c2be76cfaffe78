"""RSS across repeated model reloads under light load: does each reload free the model it replaces?

    python -m bench.reload [--reloads 20] [--clients 4] [--settle 0.5]

A real `sentiment-serve` (SENTIMENT_ADMIN_KEY set) serves a temporary copy of --model; `--clients` threads post
single real IMDb test reviews to /predict in a closed loop the whole time. Each reload first replaces the served
file (os.replace) with the other of two copies of --model, then calls POST /admin/reload; RSS is read
`--settle` seconds after each answer. Reported: RSS at ready, after the first and the last reload, the max after
any reload and the peak (VmHWM), the reload answers that were not 200, and the /predict answers that were not 200.
A leak (the old model kept alive) would grow RSS by the model's size (~16 MiB on disk) per reload.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench import common

ADMIN_KEY = "bench-reload"


def clients(base: str, texts: list[str], n: int, stop: threading.Event) -> tuple[list[threading.Thread], list[int]]:
    """`n` closed-loop /predict clients; returns the threads and the shared list of every answer's status."""
    statuses: list[int] = []

    def run(k: int) -> None:
        i = k
        while not stop.is_set():
            try:
                status = common.post_json(f"{base}/predict", {"text": texts[i % len(texts)]})[0]
            except OSError:
                status = -1  # connection refused or reset: never expected during a reload
            statuses.append(status)  # list.append is atomic under the GIL
            i += n

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for thread in threads:
        thread.start()
    return threads, statuses


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--settle", type=float, default=0.5, help="seconds between a reload's answer and the RSS reading")
    args = common.parse_bench_args(parser, argv, "reload")
    texts = common.imdb_test_texts(200)
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        copies = [Path(tmp) / "a.pt", Path(tmp) / "b.pt"]
        for copy in copies:
            shutil.copy(args.model, copy)
        served = Path(tmp) / "model.pt"
        shutil.copy(copies[0], served)
        env = {**common.service_env(args, SENTIMENT_ADMIN_KEY=ADMIN_KEY), "SENTIMENT_MODEL_PATH": str(served)}  # --env never moves it
        server = common.start_service(env, name="reload")
        stop = threading.Event()
        try:
            ready_rss = common.tree_rss_mb(server.pid)
            threads, statuses = clients(server.base, texts, args.clients, stop)
            time.sleep(2.0)  # the load's own working set before the first reload
            loaded_rss = common.tree_rss_mb(server.pid)
            reloads: list[dict[str, object]] = []
            for k in range(args.reloads):
                staged = Path(tmp) / "staged.pt"
                shutil.copy(copies[(k + 1) % 2], staged)
                os.replace(staged, served)  # atomic: the service never reads a half-written file
                started = time.perf_counter()
                status, _, _ = common.http(
                    "POST", f"{server.base}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
                )
                seconds = time.perf_counter() - started
                time.sleep(args.settle)
                rss = common.tree_rss_mb(server.pid)
                reloads.append({"reload": k + 1, "status": status, "seconds": round(seconds, 3), "rss_mb": round(rss, 1)})
                print(f"  reload {k + 1:2d}: {status} in {seconds:.2f} s, RSS {rss:7.1f} MiB", flush=True)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            peak = common.tree_hwm_mb(server.pid)
        finally:
            stop.set()
            exit_code = server.stop()
    after = [float(r["rss_mb"]) for r in reloads]  # type: ignore[arg-type]
    result = {
        "machine": common.machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rss_ready_mb": round(ready_rss, 1),
        "rss_under_load_before_reloads_mb": round(loaded_rss, 1),
        "rss_after_first_reload_mb": after[0],
        "rss_after_last_reload_mb": after[-1],
        "rss_max_after_a_reload_mb": max(after),
        "rss_peak_mb": round(peak, 1),
        "reloads": reloads,
        "reload_non_200": sum(r["status"] != 200 for r in reloads),
        "predict_answers": len(statuses),
        "predict_non_200": sum(s != 200 for s in statuses),
        "exit_code": exit_code,
    }
    print(
        f"RSS: ready {ready_rss:.1f} MiB, under load before reloads {loaded_rss:.1f}, after reload 1 {after[0]:.1f}, "
        f"after reload {len(after)} {after[-1]:.1f}, max after a reload {max(after):.1f}, peak {peak:.1f} MiB; "
        f"reloads not 200: {result['reload_non_200']}/{len(reloads)}; /predict not 200: {result['predict_non_200']}/{len(statuses)}"
    )
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
