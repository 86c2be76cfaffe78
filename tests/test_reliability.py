"""Reliability against a real server process (uvicorn via `sentiment-serve`'s entry point) with the tiny model.

A corpus of bad inputs must each get its documented 4xx with a JSON body naming the problem, never a 5xx,
and the server must stay healthy and keep answering correctly afterwards. A small overload burst against a
tiny queue must get fast 503s with Retry-After for the excess and complete answers for everything admitted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = "A wonderful, moving film. I loved it, the best and most brilliant story!"
NEGATIVE = "Dull, boring and awful: a complete waste of time, the worst mess."


@dataclass
class LiveServer:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(model: Path, log: Path, **settings: str) -> LiveServer:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update({"SENTIMENT_MODEL_PATH": str(model), "SENTIMENT_TORCH_THREADS": "1", "SENTIMENT_LOG_LEVEL": "info", **settings})
    cmd = [sys.executable, "-c", "from app.main import cli; cli()", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return LiveServer(proc, f"http://127.0.0.1:{port}", log)


def _wait_ready(server: LiveServer, timeout: float = 90.0) -> LiveServer:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"server exited with {server.proc.returncode}:\n{server.log_text()[-3000:]}"
        try:
            if httpx.get(f"{server.base}/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.proc.kill()
    raise AssertionError(f"server not ready within {timeout} s:\n{server.log_text()[-3000:]}")


def _stop(server: LiveServer) -> int:
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError("server did not exit within 30 s of SIGTERM") from None


@pytest.fixture(scope="module")
def servers(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    """Two servers started side by side (start-up dominates on busy cores): defaults, and a tiny queue for overload."""
    logs = tmp_path_factory.mktemp("reliability")
    live = {
        "default": _spawn(tiny_model_path, logs / "server.log"),
        # Queue of 4 texts, at most 4 per request: one request waits while the model runs, the rest must be refused.
        "tiny_queue": _spawn(
            tiny_model_path,
            logs / "overload.log",
            SENTIMENT_MAX_QUEUE="4",
            SENTIMENT_MAX_ITEMS_PER_REQUEST="4",
            SENTIMENT_PROCESSES="1",  # the queue is per process: a second one would take the requests it must refuse
            SENTIMENT_LOG_LEVEL="warning",
        ),
    }
    try:
        for server in live.values():
            _wait_ready(server)
        yield live
    finally:
        codes = {name: _stop(server) for name, server in live.items()}
    assert codes == {"default": 0, "tiny_queue": 0}, f"exit codes after SIGTERM: {codes}"


@pytest.fixture(scope="module")
def server(servers: dict[str, LiveServer]) -> LiveServer:
    return servers["default"]


def _assert_healthy(base: str) -> None:
    """Ready, and a good request still answers correctly (the model was not poisoned by what came before)."""
    assert httpx.get(f"{base}/health/ready", timeout=10).status_code == 200
    r = httpx.post(f"{base}/predict", json={"texts": [POSITIVE, NEGATIVE]}, timeout=30)
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == ["positive", "negative"]


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _big_number(digits: int) -> bytes:
    return b'{"text": ' + b"9" * digits + b"}"


JSON = "application/json"

# (id, body, content-type, status, error type(s), words the message must contain)
BAD_INPUTS: list[tuple[str, bytes, str | None, int, tuple[str, ...], tuple[str, ...]]] = [
    ("empty body", b"", JSON, 422, ("invalid_input",), ("body", "required")),
    ("null", b"null", JSON, 422, ("invalid_input",), ("body",)),
    ("top-level list", b'["good"]', JSON, 422, ("invalid_input",), ("body",)),
    ("top-level string", b'"good"', JSON, 422, ("invalid_input",), ("body",)),
    ("text is a number", b'{"text": 5}', JSON, 422, ("invalid_input",), ("text", "string")),
    ("text is a list", b'{"text": ["good"]}', JSON, 422, ("invalid_input",), ("text", "string")),
    ("texts is a string", b'{"texts": "good"}', JSON, 422, ("invalid_input",), ("texts", "list")),
    ("texts holds a number", b'{"texts": ["good", 7]}', JSON, 422, ("invalid_input",), ("texts.1",)),
    ("explain is a string", b'{"text": "good", "explain": "yes"}', JSON, 422, ("invalid_input",), ("explain",)),
    ("neither text nor texts", b"{}", JSON, 422, ("invalid_input",), ("text",)),
    ("both text and texts", b'{"text": "a", "texts": ["b"]}', JSON, 422, ("invalid_input",), ("exactly one",)),
    ("unknown field", b'{"text": "good", "txt": "x"}', JSON, 422, ("invalid_input",), ("txt",)),
    ("empty text", b'{"text": ""}', JSON, 422, ("invalid_input",), ("text", "empty")),
    ("whitespace text", b'{"text": " \\t\\n\\u00a0 "}', JSON, 422, ("invalid_input",), ("text", "whitespace")),
    ("empty texts", b'{"texts": []}', JSON, 422, ("invalid_input",), ("texts",)),
    ("one blank among texts", b'{"texts": ["good", "  "]}', JSON, 422, ("invalid_input",), ("texts.1",)),
    ("1 MB text", json.dumps({"text": "good " * 200_000}).encode(), JSON, 422, ("invalid_input",), ("characters", "100000")),
    ("2 MiB body", json.dumps({"text": "good " * 420_000}).encode(), JSON, 413, ("payload_too_large",), ("limit",)),
    ("10,000 items", json.dumps({"texts": ["good film"] * 10_000}).encode(), JSON, 422, ("invalid_input",), ("10000", "256")),
    ("invalid UTF-8", b'{"text": "caf\xc3\x28 \xff\xfe"}', JSON, 400, ("malformed_body",), ("UTF-8",)),
    ("raw control characters", b'{"text": "a\x00\x01\x1fb"}', JSON, 400, ("malformed_body",), ("JSON", "control")),
    ("truncated JSON", b'{"text": "good', JSON, 400, ("malformed_body",), ("JSON",)),
    ("trailing garbage", b'{"text": "good"} xyz', JSON, 400, ("malformed_body",), ("JSON",)),
    ("deeply nested (10,000 levels)", _deep(10_000), JSON, 400, ("malformed_body", "bad_request"), ("body",)),
    ("deeply nested inside text", b'{"text": ' + _deep(10_000) + b"}", JSON, 400, ("malformed_body", "bad_request"), ("body",)),
    ("huge integer (5,000 digits)", _big_number(5_000), JSON, 400, ("malformed_body",), ("digits",)),
    ("huge float (1e999999)", b'{"text": 1e999999}', JSON, 422, ("invalid_input",), ("text", "string")),
    ("NaN literal", b'{"texts": [NaN]}', JSON, 422, ("invalid_input",), ("texts.0",)),
    ("text/plain content type", b'{"text": "good"}', "text/plain", 422, ("invalid_input",), ("Content-Type",)),
    ("no content type", b'{"text": "good"}', None, 422, ("invalid_input",), ("Content-Type",)),
    ("form encoded", b"text=good", "application/x-www-form-urlencoded", 422, ("invalid_input",), ("Content-Type",)),
]


def test_bad_input_corpus_gets_documented_4xx_and_server_stays_healthy(server: LiveServer) -> None:
    problems = []
    with httpx.Client(base_url=server.base, timeout=60) as client:
        for name, body, content_type, status, types, words in BAD_INPUTS:
            headers = {"Content-Type": content_type} if content_type else {}
            r = client.post("/predict", content=body, headers=headers)
            try:
                error = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{name}: {r.status_code} with a non-JSON or unexpected body {r.text[:200]!r}")
                continue
            message = error.get("message", "") if isinstance(error, dict) else ""
            if r.status_code != status or error.get("type") not in types:
                problems.append(f"{name}: got {r.status_code} {error}, expected {status} {types}")
            elif missing := [w for w in words if w.lower() not in message.lower()]:
                problems.append(f"{name}: message {message!r} does not name the problem (missing {missing})")
            if not r.headers.get("content-type", "").startswith("application/json"):
                problems.append(f"{name}: content-type {r.headers.get('content-type')!r}")
        # Same body over the size limit streamed in chunks (no Content-Length): the limit is counted while reading.
        chunks = [b'{"text": "'] + [b"good " * 50_000] * 6 + [b'"}']
        r = client.post("/predict", content=iter(chunks), headers={"Content-Type": JSON})
        if r.status_code != 413 or r.json()["error"]["type"] != "payload_too_large":
            problems.append(f"chunked 1.5 MB body: got {r.status_code} {r.text[:200]}")
        # A bad timeout header is the client's mistake too.
        r = client.post("/predict", json={"text": "good"}, headers={"X-Request-Timeout-Ms": "soon"})
        if r.status_code != 422 or "X-Request-Timeout-Ms" not in r.json()["error"]["message"]:
            problems.append(f"bad X-Request-Timeout-Ms: got {r.status_code} {r.text[:200]}")
        # OIP v2 answers its own error format, still 4xx.
        tensor = {"name": "text", "shape": [2], "datatype": "BYTES", "data": [1, 2]}
        r = client.post("/v2/models/tiny-test-model/infer", json={"inputs": [tensor]})
        if r.status_code != 422 or not isinstance(r.json().get("error"), str):
            problems.append(f"OIP non-string data: got {r.status_code} {r.text[:200]}")
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["good"]}
        r = client.post("/v2/models/no-such-model/infer", json={"inputs": [tensor]})
        if r.status_code != 404:
            problems.append(f"OIP unknown model: got {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)
    assert server.proc.poll() is None, "the server died"
    _assert_healthy(server.base)
    log = server.log_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


def test_control_characters_escaped_in_json_are_text_not_errors(server: LiveServer) -> None:
    """Escaped control characters are valid JSON strings: answered (200), with no tokens counted."""
    r = httpx.post(f"{server.base}/predict", json={"texts": ["\u0000\u0001\u001f", "good\u0007 film\u200b"]}, timeout=30)
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    assert first["n_tokens"] == 0 and 0.0 <= first["p_positive"] <= 1.0
    assert second["n_tokens"] == 2


def test_overload_burst_gets_fast_503_with_retry_after_and_admitted_requests_complete(servers: dict[str, LiveServer]) -> None:
    live = servers["tiny_queue"]
    texts = [POSITIVE * 3, NEGATIVE * 3, POSITIVE, NEGATIVE]

    async def burst(n: int) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=live.base, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(client.post("/predict", json={"texts": texts, "explain": True}) for _ in range(n)))

    for _attempt in range(3):  # how many are refused depends on the machine's speed; a burst almost always overflows
        responses = asyncio.run(burst(96))
        statuses = [r.status_code for r in responses]
        if 503 in statuses:
            break
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1, "a burst of 96 x 4 texts against a queue of 4 was never refused"
    assert statuses.count(200) >= 1, "nothing was admitted"
    for r in responses:
        if r.status_code == 503:
            assert r.headers.get("retry-after", "").isdigit(), r.headers
            assert r.json()["error"]["type"] == "overloaded"
        else:
            predictions = r.json()["predictions"]
            assert [p["label"] for p in predictions] == ["positive", "negative", "positive", "negative"]
    _assert_healthy(live.base)
