"""Start and stop the LitServe anchor that bench/serve.py compares against.

    python -m bench.litserve.ls [--ls-venv /tmp/ls-venv]    # smoke: start, one request, stop

LitServe lives in its own venv so that it cannot change the project's:
    python3.11 -m venv /tmp/ls-venv && /tmp/ls-venv/bin/pip install torch==2.13.0 litserve==0.2.19 numpy
Configuration mirrors the service on 2 cores: 2 inference worker processes x 1 torch thread, max_batch_size 64,
batch_timeout 5 ms (LitServe waits up to this long to fill a batch; the service adds no delay).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from bench.torchserve.ts import smoke, stop

WORK = Path("/tmp/bench-litserve")


def start(
    ls_venv: Path,
    model: Path = common.MODEL,
    *,
    batch_size: int = 64,
    batch_timeout_s: float = 0.005,
    workers: int = 2,
    torch_threads: int = 1,
    ready_timeout: float = 120.0,
) -> common.Server:
    """Start LitServe; returns once a real prediction answers 200 (ready_s = spawn -> that)."""
    WORK.mkdir(parents=True, exist_ok=True)
    stats = WORK / "batch_stats.json"
    for old in WORK.glob("batch_stats.json.*"):
        old.unlink()
    port = common.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update({"PYTHONPATH": str(common.ROOT), "BENCH_LS_STATS": str(stats)})
    cmd = [str(ls_venv / "bin" / "python"), "-m", "bench.litserve.api", "--port", str(port), "--model", str(model)]
    cmd += ["--workers", str(workers), "--threads", str(torch_threads), "--max-batch-size", str(batch_size)]
    cmd += ["--batch-timeout", str(batch_timeout_s)]
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    log = common.RESULTS / "litserve.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = common.Server(proc, f"http://127.0.0.1:{port}", log, extra={"stats": stats, "path": "/predict"})
    deadline = started + ready_timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"litserve exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            status, _, _ = common.post_json(f"{server.base}/predict", {"text": "A wonderful film."}, timeout=5)
            if status == 200:
                server.ready_s = time.perf_counter() - started
                return server
        except OSError:
            pass
        time.sleep(0.1)
    stop(server)
    raise RuntimeError(f"litserve not ready within {ready_timeout} s; see {log}:\n{log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ls-venv", type=Path, default=Path("/tmp/ls-venv"))
    parser.add_argument("--model", type=Path, default=common.MODEL)
    args = parser.parse_args()
    if not (args.ls_venv / "bin" / "python").is_file():
        sys.exit(f"no LitServe venv at {args.ls_venv}; see this module's docstring")
    smoke(start(args.ls_venv, args.model))


if __name__ == "__main__":
    main()
