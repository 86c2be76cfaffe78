"""Slow and greedy clients (issue 30, slowloris) against a real `sentiment-serve` process, over real sockets.

A small connection limit and short deadlines keep it fast: twice the limit of
connections that send their head (then their body) a few bytes at a time,
reconnecting whenever the server closes them, while a normal client posts
reviews. The normal client must get its answers, and the server must close
every slow connection within its deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import free_port, running_server

LIMIT = 64  # SENTIMENT_MAX_CONNECTIONS
IN_FLIGHT = 16  # SENTIMENT_MAX_IN_FLIGHT: below LIMIT, as by default (512 of 2048), so slow bodies could fill it
TIMEOUT_S = 1.5  # SENTIMENT_HEADER_TIMEOUT_S and SENTIMENT_BODY_TIMEOUT_S
MARGIN_S = 1.0  # scheduling slack on a shared machine
PHASE_S = 5.0  # how long each attack lasts
TRICKLE_S = 0.3  # a slow client sends a little this often
RECONNECT_S = 0.1  # and comes back this long after the server closed it


def _head(body_length: int) -> bytes:
    return f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {body_length}\r\n\r\n".encode()


async def _slow_client(port: int, kind: str, until: float, lifetimes: list[float], answers: list[bytes]) -> None:
    """One attacker: connect, trickle a head (or a complete head, then a body), until the server closes; again until `until`."""
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = b"POST /predict HTTP/1.1\r\n" if kind == "head" else _head(10_000) + b'{"texts": ["'
        started = time.monotonic()
        writer.write(first)
        received = bytearray()
        closed = False
        while not closed and time.monotonic() < until + 2 * TIMEOUT_S:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), TRICKLE_S)
            except TimeoutError:
                try:
                    writer.write(b"X-Slow: 1\r\n" if kind == "head" else b"aaaa")
                except (ConnectionError, RuntimeError):
                    closed = True
                continue
            except ConnectionError:
                chunk = b""
            received += chunk
            closed = not chunk
        if closed:
            lifetimes.append(time.monotonic() - started)
            answers.append(bytes(received))
        writer.close()
        await asyncio.sleep(RECONNECT_S)


async def _attack(port: int, kind: str) -> tuple[list[int | str], list[float], list[bytes], float]:
    """2 x LIMIT slow clients for PHASE_S while a normal client posts reviews; the normal client's statuses, and the slow ones' fate."""
    until = time.monotonic() + PHASE_S
    lifetimes: list[float] = []
    answers: list[bytes] = []
    attackers = [asyncio.ensure_future(_slow_client(port, kind, until, lifetimes, answers)) for _ in range(2 * LIMIT)]
    await asyncio.sleep(0.5)  # the slow clients hold every slot
    statuses: list[int | str] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while time.monotonic() < until:
            try:
                response = await client.post("/predict", json={"texts": ["a wonderful, moving film"]})
                statuses.append(response.status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
            await asyncio.sleep(0.02)
    await asyncio.gather(*attackers)
    return statuses, lifetimes, answers, until


@pytest.mark.parametrize("kind", ["head", "body"])
def test_slow_clients_at_twice_the_connection_limit_starve_no_one(tiny_model_path: Path, tmp_path: Path, kind: str) -> None:
    env = {
        "SENTIMENT_MAX_CONNECTIONS": str(LIMIT),
        "SENTIMENT_MAX_IN_FLIGHT": str(IN_FLIGHT),
        "SENTIMENT_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "SENTIMENT_BODY_TIMEOUT_S": str(TIMEOUT_S),
        "SENTIMENT_PROCESSES": "1",  # the limits are per process: twice one process's limit is what the attack needs
    }
    with running_server(tiny_model_path, tmp_path, **env) as (_, port, log):
        statuses, lifetimes, answers, _ = asyncio.run(_attack(port, kind))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    ok = statuses.count(200)
    assert len(statuses) >= 50, statuses
    assert ok >= 0.99 * len(statuses), f"{ok} of {len(statuses)} answered 200: {[s for s in statuses if s != 200][:10]}\n{log.read_text()}"
    # Every slow connection was closed by the server, within the deadline (most sooner: their slot went to a newer one).
    assert len(lifetimes) >= 2 * LIMIT, f"only {len(lifetimes)} slow connections were closed by the server"
    assert max(lifetimes) <= TIMEOUT_S + MARGIN_S, sorted(lifetimes)[-5:]
    # ...with a JSON 408 saying why, where a request had begun.
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) >= 0.9 * len(answers), answers[:3]
    for answer in timed_out:
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "request_timeout", answer
    assert 'sentiment_rejected_total{reason="request_timeout"}' in metrics


def test_a_client_over_its_connection_cap_is_refused_others_are_not(tiny_model_path: Path, tmp_path: Path) -> None:
    cap = 4

    async def scenario(port: int) -> tuple[list[bytes], int]:
        greedy = []
        for _ in range(cap + 2):  # from 127.0.0.2: another client address on loopback
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            greedy.append((reader, writer))
        refused = []
        for reader, _writer in greedy[cap:]:
            refused.append(await asyncio.wait_for(reader.read(), 2))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:  # from 127.0.0.1
            status = (await client.post("/predict", json={"texts": ["fine"]})).status_code
        for _reader, writer in greedy:
            writer.close()
        return refused, status

    # One process: the cap is per process, and the kernel would spread the six connections over two.
    with running_server(tiny_model_path, tmp_path, SENTIMENT_MAX_CONNECTIONS_PER_CLIENT=str(cap), SENTIMENT_PROCESSES="1") as (_, port, _):
        refused, status = asyncio.run(scenario(port))
    assert status == 200
    for answer in refused:
        assert answer.startswith(b"HTTP/1.1 503"), answer
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["type"] == "overloaded" and "127.0.0.2" in body["error"]["message"]


def test_the_grpc_port_closes_a_connection_that_never_finishes_its_handshake(tiny_model_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="gRPC support is not installed (pip install -e '.[grpc]')")
    grpc_port = free_port()
    env = {"SENTIMENT_GRPC_PORT": str(grpc_port), "SENTIMENT_HEADER_TIMEOUT_S": str(TIMEOUT_S)}

    async def stall() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", grpc_port)
        writer.write(b"PRI * HTTP/2.0\r\n")  # half of the HTTP/2 preface, then nothing
        started = time.monotonic()
        await asyncio.wait_for(reader.read(), TIMEOUT_S + 10)  # returns at the server's close
        writer.close()
        return time.monotonic() - started

    with running_server(tiny_model_path, tmp_path, **env):
        closed_after = asyncio.run(stall())
    assert closed_after <= TIMEOUT_S + MARGIN_S
