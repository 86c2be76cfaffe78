"""The real `sentiment-serve` process: start-up failures, idle footprint, and a SIGTERM drain with requests in flight."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.main import cli
from tests.live_server import free_port, running_server, serve_command, server_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    """cli() installs a SIGTERM handler and configures the root logger (app/logs.py); keep both out of the test process.

    The root handler would keep writing to this test's captured stderr, closed once it ends: a later test's log
    line (training's, say) then prints "--- Logging error ---" into that test's own stderr."""
    previous = signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    signal.signal(signal.SIGTERM, previous)
    root.handlers[:] = handlers
    root.setLevel(level)


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


@pytest.mark.parametrize("processes", ["1", "2"])  # alone, and a group where SIGTERM reaches the primary only
def test_sigterm_drains_every_accepted_request_then_exits_0(tiny_model_path: Path, tmp_path: Path, processes: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One text per forward pass so that the requests below take a while and are surely in flight at SIGTERM.
    env = server_env(tiny_model_path, SENTIMENT_MAX_BATCH_SIZE="1", SENTIMENT_HOST="127.0.0.1", SENTIMENT_PROCESSES=processes)
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
        # One series per serving process (a pid label when several share the port).
        rss = [float(v) for v in re.findall(r"^process_resident_memory_bytes(?:\{[^}]*\})? (\S+)$", metrics, re.M)]
        print(f"ready after {ready_after:.2f} s, idle RSS {[round(r / 2**20) for r in rss]} MiB")
        assert rss and max(rss) < 400 * 2**20

        # Enough work per request (long texts to encode, 250 forwards and backwards: explained) to be surely in flight
        # at SIGTERM: with the dense route and the fast lane, 250 plain forwards can finish before the signal.
        n_requests, n_texts = 4, 250
        filler = " the plot" * 100  # dropped by head+tail truncation, but tokenized: ~1 kB per text
        texts = [f"{'great ' * (i % 4 + 1)}film{filler} {'awful ' * (i % 3)}" for i in range(n_texts)]

        def post(_: int) -> tuple[int, int, float]:
            response = httpx.post(f"{base}/predict", json={"texts": texts, "explain": True}, timeout=60)
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


def _predict_request(text: str, *, close: bool = False) -> bytes:
    body = json.dumps({"text": text}).encode()
    connection = b"Connection: close\r\n" if close else b""
    return b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        connection,
        len(body),
        body,
    )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _new_connection_each(port: int, n: int, spacing: float, signal_at: float, process: subprocess.Popen[bytes]) -> list[str]:
    """n requests `spacing` s apart, each on a new connection; SIGTERM at `signal_at`. One outcome per request:
    'refused' (connect failed: fine, the client knows it may retry), 'ok' (a 200, or a JSON 503 saying
    Connection: close), else what went wrong for a connection the server's kernel accepted ('lost ...')."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    loop.call_at(t0 + signal_at, process.send_signal, signal.SIGTERM)

    async def one(i: int) -> str:
        await asyncio.sleep(max(0.0, t0 + i * spacing - loop.time()))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return "refused"
        try:
            writer.write(_predict_request(f"a great film, number {i}"))
            await writer.drain()
            status, headers, body = await asyncio.wait_for(_read_response(reader), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            return f"lost {type(exc).__name__}"
        finally:
            writer.close()
        if status == 200 and json.loads(body)["predictions"][0]["label"] in ("positive", "negative"):
            return "ok"
        if status == 503 and headers.get("connection") == "close" and json.loads(body)["error"]["type"]:
            return "ok"
        return f"lost {status} {body[:80]!r}"

    return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.slow
def test_sigterm_under_new_connections_loses_none_over_10_rounds(tiny_model_path: Path, tmp_path: Path) -> None:
    """400 requests 2 ms apart, a new connection each, SIGTERM at 0.4 s: every accepted connection is answered.

    The drain delay is short (0 or 0.1 s) so that the listener closes while connections still arrive: the
    race between accept and close, and the connections in the backlog, are what this exercises.
    """
    totals: dict[str, int] = {}
    for round_ in range(10):
        delay = "0" if round_ % 2 else "0.1"
        with running_server(tiny_model_path, tmp_path, SENTIMENT_DRAIN_DELAY_S=delay) as (process, port, log):
            outcomes = asyncio.run(_new_connection_each(port, 400, 0.002, 0.4, process))
            exit_code = process.wait(timeout=60)
        counts = {o: outcomes.count(o) for o in set(outcomes)}
        print(f"round {round_} (drain delay {delay} s): {counts}, exit {exit_code}")
        for outcome, count in counts.items():
            totals[outcome] = totals.get(outcome, 0) + count
        assert exit_code == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    lost = {o: c for o, c in totals.items() if o.startswith("lost")}
    print(f"10 rounds: {totals}")
    assert not lost, f"accepted connections closed without an answer: {lost} (all: {totals})"
    assert totals.get("ok", 0) >= 10 * 200, "most requests came before the listener closed and were answered"
    assert totals.get("refused", 0) > 0, "the listener did close while clients were still connecting"


def test_the_drain_delay_keeps_serving_while_unready_then_connections_are_told_to_close(tiny_model_path: Path, tmp_path: Path) -> None:
    with running_server(tiny_model_path, tmp_path, SENTIMENT_DRAIN_DELAY_S="1.5") as (process, port, _):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.post("/predict", json={"text": "great"}).headers.get("connection") != "close"
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = client.get("/health/ready")
            served = client.post("/predict", json={"text": "great"})
            served_at = time.monotonic()
        exit_code = process.wait(timeout=30)
        exited = time.monotonic()
    assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
    assert served.status_code == 200 and served.headers["connection"] == "close", "served during the delay, told to reconnect"
    assert served_at - signalled < 1.5 <= exited - signalled, "the listener stayed open for the drain delay"
    assert exit_code == 0


def _early_answer(port: int, head: bytes, body_size: int) -> tuple[bytes, int]:
    """Send `head` and the first 64 KiB of a body, wait until an answer is readable, then send the rest of the body
    (a client that does not watch for early answers); return (what was read to EOF, bytes of body sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        chunk = b"x" * 65536
        sock.sendall(chunk)
        sent = len(chunk)
        select.select([sock], [], [], 10)  # the answer has arrived; the server has read at most the head
        while sent < body_size:
            sock.sendall(chunk)
            sent += len(chunk)
        received = b""
        while b"\r\n\r\n" not in received and (data := sock.recv(65536)):
            received += data
        length = re.search(rb"content-length: (\d+)", received, re.IGNORECASE)
        while length and len(received.split(b"\r\n\r\n", 1)[1]) < int(length.group(1)) and (data := sock.recv(65536)):
            received += data
        return received, sent


def test_answers_sent_before_the_body_is_read_reach_a_client_still_sending(tiny_model_path: Path, tmp_path: Path) -> None:
    size = 8 << 20  # far more than the socket buffers hold: the server must read it for the client to finish
    # One process: the in-flight limit is per process, and a second would take the next request elsewhere.
    limits = {"SENTIMENT_MAX_BODY_BYTES": "100000", "SENTIMENT_MAX_IN_FLIGHT": "1", "SENTIMENT_PROCESSES": "1"}
    with running_server(tiny_model_path, tmp_path, **limits) as (_, port, _):
        too_large = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
        received, sent = _early_answer(port, too_large, size)
        assert sent == size and received.startswith(b"HTTP/1.1 413 ") and b'"payload_too_large"' in received, received[:300]
        streamed = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:  # 413 counted while streaming
            sock.sendall(streamed)
            for _ in range(4):
                sock.sendall(chunk)
            select.select([sock], [], [], 10)
            for _ in range(120):
                sock.sendall(chunk)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]

        # The in-flight place: one request holds the only one, its body still arriving; the next request takes it
        # (app/middleware.py: trickled bodies cannot hold every place), and the holder, still sending, gets its 408.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as holder:
            holder.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            time.sleep(0.3)
            assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["fine"]}, timeout=20).status_code == 200
            select.select([holder], [], [], 10)  # the answer has arrived
            holder.sendall(b"x" * 999)  # the rest of the body, after it
            received = b""
            while data := holder.recv(65536):
                received += data
        assert received.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in received, received
