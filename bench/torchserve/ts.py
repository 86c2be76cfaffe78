"""Package the shipped artifact for TorchServe and run it: the anchor that bench/serve.py compares against.

    python -m bench.torchserve.ts [--ts-venv /tmp/ts-venv]    # smoke: build, start, one request, stop

TorchServe lives in its own venv (it pins nothing we need, but it must not touch the project's):
    python3.11 -m venv /tmp/ts-venv && /tmp/ts-venv/bin/pip install torch==2.13.0 torchserve torch-model-archiver pyyaml numpy  # torchserve 0.12 imports both without requiring them
It needs Java 11+ (Debian: `apt-get install -y openjdk-17-jre-headless`).

Configuration mirrors the service: one worker process (the service has one model thread), batchSize 64 (the
service's max_batch_size), maxBatchDelay 5 ms (TorchServe waits up to this long to fill a batch; the service
adds no delay), job queue 1024 (the service's max_queue), token auth and the model API off, loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench import common

HERE = Path(__file__).resolve().parent
WORK = Path("/tmp/bench-torchserve")
MODEL_NAME = "sentiment"


def model_config(batch_size: int, max_batch_delay_ms: int, workers: int) -> str:
    return (
        f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {batch_size}\nmaxBatchDelay: {max_batch_delay_ms}\n"
        "responseTimeout: 120\nstartupTimeout: 120\n"
    )


def build_mar(ts_venv: Path, model: Path, batch_size: int, max_batch_delay_ms: int, workers: int) -> Path:
    store = WORK / "model_store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    cfg = WORK / "model-config.yaml"
    cfg.write_text(model_config(batch_size, max_batch_delay_ms, workers))
    subprocess.run(
        [
            str(ts_venv / "bin" / "torch-model-archiver"),
            "--model-name", MODEL_NAME,
            "--version", "1.0",
            "--serialized-file", str(model),
            "--handler", str(HERE / "handler.py"),
            "--config-file", str(cfg),
            "--export-path", str(store),
            "--force",
        ],
        check=True,
    )  # fmt: skip
    return store / f"{MODEL_NAME}.mar"


def start(
    ts_venv: Path,
    model: Path = common.MODEL,
    *,
    batch_size: int = 64,
    max_batch_delay_ms: int = 5,
    torch_threads: int = 0,
    workers: int = 1,
    queue: int = 1024,
    ready_timeout: float = 180.0,
) -> common.Server:
    """Start TorchServe in the foreground; returns once a real prediction answers 200 (ready_s = spawn -> that)."""
    mar = build_mar(ts_venv, model, batch_size, max_batch_delay_ms, workers)
    port, mport, metrics_port = common.free_port(), common.free_port(), common.free_port()
    config = WORK / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{port}",
                f"management_address=http://127.0.0.1:{mport}",
                f"metrics_address=http://127.0.0.1:{metrics_port}",
                f"model_store={mar.parent}",
                f"load_models={mar.name}",
                f"job_queue_size={queue}",
                f"default_workers_per_model={workers}",
                "disable_token_authorization=true",
                "enable_model_api=false",
                "install_py_dep_per_model=false",
                "vmargs=-Xmx1g -XX:+ExitOnOutOfMemoryError",
                "",
            ]
        )
    )
    stats = WORK / "batch_stats.json"
    for old in WORK.glob("batch_stats.json.*"):
        old.unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update(
        {
            "PYTHONPATH": str(common.ROOT),  # the handler imports `contract`
            "BENCH_TS_STATS": str(stats),
            "BENCH_TORCH_THREADS": str(torch_threads),
            "PATH": f"{ts_venv / 'bin'}:{env.get('PATH', '')}",
            "LOG_LOCATION": str(WORK / "logs"),
            "METRICS_LOCATION": str(WORK / "logs"),
        }
    )
    log = common.RESULTS / "torchserve.log"
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(ts_venv / "bin" / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--ts-config", str(config),
        "--model-store", str(mar.parent),
        "--models", f"{MODEL_NAME}={mar.name}",
    ]  # fmt: skip
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=WORK, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = common.Server(proc, f"http://127.0.0.1:{port}", log, extra={"stats": stats, "path": f"/predictions/{MODEL_NAME}"})
    deadline = started + ready_timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"torchserve exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        if "Failed to load model" in log.read_text(errors="replace"):
            stop(server)
            lines = [line for line in log.read_text(errors="replace").splitlines() if "MODEL_LOG" in line]
            raise RuntimeError(f"torchserve's worker could not load the model; see {log}:\n" + "\n".join(lines[-25:]))
        try:
            status, _, _ = common.post_json(f"{server.base}/predictions/{MODEL_NAME}", {"text": "A wonderful film."}, timeout=5)
            if status == 200:
                server.ready_s = time.perf_counter() - started
                return server
        except OSError:
            pass
        time.sleep(0.1)
    stop(server)
    raise RuntimeError(f"torchserve not ready within {ready_timeout} s; see {log}:\n{log.read_text()[-3000:]}")


def read_stats(stats: Path) -> dict[str, int]:
    """The handler's batch/text counters summed over its worker processes (one file each)."""
    total = {"batches": 0, "texts": 0}
    for path in stats.parent.glob(stats.name + ".*"):
        if path.suffix != ".tmp":
            raw = json.loads(path.read_text())
            total = {k: total[k] + raw.get(k, 0) for k in total}
    return total


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _signal_if_same(pid: int, started: str | None, sig: int) -> None:
    """Signal `pid` only if it is still the process we recorded (same start time), never a reused pid."""
    if started is not None and _start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(server: common.Server) -> None:
    """SIGTERM the launcher and every process it started (the JVM and its Python worker), by pid."""
    procs = [(pid, _start_time(pid)) for pid in [server.pid, *common.descendants(server.pid)]]
    for pid, started in reversed(procs):
        _signal_if_same(pid, started, signal.SIGTERM)
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    time.sleep(1)
    for pid, started in procs:  # anything left of what we started
        _signal_if_same(pid, started, signal.SIGKILL)


def smoke(server: common.Server) -> None:
    """One request to a started anchor (TorchServe or LitServe), its batch counters, then stop it."""
    try:
        print(f"ready in {server.ready_s:.1f} s; RSS (all its processes) {common.tree_rss_mb(server.pid):.0f} MiB")
        print(common.post_json(f"{server.base}{server.extra['path']}", {"text": "Dull, boring and awful."}))
        print(read_stats(Path(str(server.extra["stats"]))))
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ts-venv", type=Path, default=Path("/tmp/ts-venv"))
    parser.add_argument("--model", type=Path, default=common.MODEL)
    args = parser.parse_args()
    smoke(start(args.ts_venv, args.model))


if __name__ == "__main__":
    main()
