"""A real `sentiment-serve` process on a free port, for the tests that need the real server (signals, sockets, browsers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def serve_command() -> list[str]:
    """The console script the container runs, or the same entry point via python when it is not installed."""
    script = shutil.which("sentiment-serve", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from app.main import cli; cli()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(model: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update({"SENTIMENT_MODEL_PATH": str(model), "SENTIMENT_TORCH_THREADS": "1", "SENTIMENT_LOG_LEVEL": "warning", **extra})
    return env


@contextlib.contextmanager
def running_server(model: Path, tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`sentiment-serve` on a free port, ready; yields (process, port, its log file). Killed if still running after."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*serve_command(), "--port", str(port)],
            env=server_env(model, SENTIMENT_HOST="127.0.0.1", **env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        started = time.monotonic()
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() - started < 90, "server never became ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield process, port, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
