"""The real `sentiment-serve` process: start-up failures, idle footprint, and a SIGTERM drain with requests in flight."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.main import _Server, cli, create_app

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    """cli() installs a SIGTERM handler; keep it out of the test process."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_missing_model_stops_sentiment_serve_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sentiment.pt"
    result = subprocess.run(
        [*serve_command(), "--port", str(free_port())], env=server_env(missing), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sentiment-serve: error: model file not found") and str(missing) in lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a zip file at all", "is not a readable TorchScript model"),
        (b"", "is not a readable TorchScript model"),
    ],
)
def test_a_corrupt_model_is_one_line_and_exit_1(
    tmp_path: Path,
    content: bytes,
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restore_sigterm: None,
) -> None:
    path = tmp_path / "sentiment.pt"
    path.write_bytes(content)
    monkeypatch.setenv("SENTIMENT_MODEL_PATH", str(path))
    with pytest.raises(SystemExit) as exit_info:
        cli([])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err


def test_a_tampered_model_is_refused(
    tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_sigterm: None
) -> None:
    import torch

    from contract.artifact import MANIFEST_FILE, VOCAB_FILE

    extra = {MANIFEST_FILE: "", VOCAB_FILE: ""}
    module = torch.jit.load(str(tiny_model_path), _extra_files=extra)
    with torch.no_grad():
        next(module.parameters()).add_(0.01)  # weights no longer match the manifest's sha256
    tampered = tmp_path / "tampered.pt"
    torch.jit.save(module, str(tampered), _extra_files=extra)
    monkeypatch.setenv("SENTIMENT_MODEL_PATH", str(tampered))
    with pytest.raises(SystemExit) as exit_info:
        cli([])
    assert exit_info.value.code == 1
    assert "weights do not match the manifest sha256" in capsys.readouterr().err


def test_invalid_settings_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_sigterm: None
) -> None:
    monkeypatch.setenv("SENTIMENT_MAX_BATCH_SIZE", "lots")
    with pytest.raises(SystemExit) as exit_info:
        cli([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "SENTIMENT_MAX_BATCH_SIZE" in err


def test_sigterm_marks_the_app_unready_before_uvicorn_drains(make_settings: object) -> None:
    app = create_app(make_settings())  # type: ignore[operator]
    server = _Server(uvicorn.Config(app), on_exit=lambda: setattr(app.state, "draining", True))
    server.handle_exit(signal.SIGTERM, None)
    assert app.state.draining and server.should_exit


def test_sigterm_drains_every_accepted_request_then_exits_0(tiny_model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One text per forward pass so that the requests below take a while and are surely in flight at SIGTERM.
    env = server_env(tiny_model_path, SENTIMENT_MAX_BATCH_SIZE="1", SENTIMENT_HOST="127.0.0.1")
    started = time.monotonic()
    process = subprocess.Popen([*serve_command(), "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() - started < 90, "server never became ready"
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        ready_after = time.monotonic() - started
        metrics = httpx.get(f"{base}/metrics").text
        rss = float(re.search(r"^process_resident_memory_bytes (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
        print(f"ready after {ready_after:.2f} s, idle RSS {rss / 2**20:.0f} MiB")
        assert rss < 400 * 2**20

        n_requests, n_texts = 4, 250  # enough work per request to still be in flight at SIGTERM with the fast lane
        texts = [f"{'great ' * (i % 4 + 1)}film {'awful ' * (i % 3)}" for i in range(n_texts)]

        def post(_: int) -> tuple[int, int, float]:
            response = httpx.post(f"{base}/predict", json={"texts": texts}, timeout=60)
            return response.status_code, len(response.json().get("predictions", [])), time.monotonic()

        with ThreadPoolExecutor(n_requests) as pool:
            futures = [pool.submit(post, i) for i in range(n_requests)]
            deadline = time.monotonic() + 30
            while True:  # every request is inside the server (and the metrics request itself)
                gauge = re.search(r"^sentiment_http_requests_in_progress (\S+)$", httpx.get(f"{base}/metrics").text, re.M)
                if gauge and float(gauge.group(1)) >= n_requests + 1:
                    break
                assert time.monotonic() < deadline and not any(f.done() for f in futures), "requests finished before SIGTERM"
                time.sleep(0.01)
            sigterm_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        exit_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.stderr.read() if process.stderr else ""
    assert results == [(200, n_texts, r[2]) for r in results], results
    assert all(r[2] > sigterm_at for r in results), "the requests were answered after SIGTERM, i.e. drained"
    assert exit_code == 0, stderr
    assert "Traceback" not in stderr
