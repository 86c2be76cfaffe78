"""A small, cheap asyncio HTTP/1.1 client that records every request's fate (wrk only counts).

Used by soak/overload/sigterm, where each outcome matters: status, Retry-After, latency, and for
failures *when* it failed. Plain asyncio streams, keep-alive, Content-Length bodies only (the service
never chunks), so one Python process drives a few thousand requests per second.

Outcome of a request (`Result.outcome`):
- "ok": a complete response (status line, headers, Content-Length body) was read;
- "refused": connect() failed: the server never accepted the TCP connection, nothing was sent;
- "unsent": the connection was up but writing the request failed;
- "no_response": the request was fully written, then the connection closed/reset before any response byte;
- "truncated": some response bytes arrived, then the connection closed before the response was complete;
- "timeout": no complete response within the client timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Result:
    outcome: str
    status: int | None
    latency: float  # s, from the first write to the last byte (or the failure)
    sent_at: float  # monotonic time the request was fully written (or the attempt started)
    retry_after: str | None = None
    body: bytes = b""
    started_at: float = 0.0


@dataclass
class Connection:
    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    idle_since: float = 0.0  # monotonic time it went back to the pool

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, raw: bytes, timeout: float, keep_body: bool = False, retry_stale: bool = False) -> Result:
        """Send `raw`, read the answer. With retry_stale, a request on a *reused* keep-alive connection that got
        zero response bytes is retried once on a fresh connection (the server closed the idle connection as we
        wrote: the standard client-side retry; it never hides a partial or late answer)."""
        reused = self.writer is not None
        result = await self._request(raw, timeout, keep_body)
        if retry_stale and reused and result.outcome in ("no_response", "unsent"):
            retry = await self._request(raw, timeout, keep_body)
            retry.started_at = result.started_at
            retry.latency += result.latency
            return retry
        return result

    async def _request(self, raw: bytes, timeout: float, keep_body: bool = False) -> Result:
        started = time.monotonic()
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
            except (OSError, TimeoutError):
                return Result("refused", None, time.monotonic() - started, started, started_at=started)
        try:
            self.writer.write(raw)
            await self.writer.drain()
        except OSError:
            await self.close()
            return Result("unsent", None, time.monotonic() - started, started, started_at=started)
        sent = time.monotonic()
        got_any = False
        try:
            async with asyncio.timeout(timeout):
                head = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
                got_any = True
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await self.reader.readexactly(length) if length else b""  # type: ignore[union-attr]
        except TimeoutError:
            await self.close()
            return Result("timeout", None, time.monotonic() - started, sent, started_at=started)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError, IndexError) as exc:
            await self.close()
            partial = got_any or (isinstance(exc, asyncio.IncompleteReadError) and bool(exc.partial))
            return Result("truncated" if partial else "no_response", None, time.monotonic() - started, sent, started_at=started)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Result("ok", status, time.monotonic() - started, sent, headers.get("retry-after"), body if keep_body else b"", started)


def build_request(path: str, body: bytes, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def predict_requests(texts: Sequence[str], per_request: int = 1, path: str = "/predict") -> list[bytes]:
    """Pre-built raw requests, so the client spends no time on JSON while the clock runs."""
    out = []
    for i in range(0, len(texts) - per_request + 1, per_request):
        chunk = texts[i : i + per_request]
        obj = {"text": chunk[0]} if per_request == 1 else {"texts": list(chunk)}
        out.append(build_request(path, json.dumps(obj).encode()))
    return out


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def summary(self) -> dict[str, object]:
        duration = max(self.ended - self.started, 1e-9)
        outcomes = Counter(r.outcome for r in self.results)
        statuses = Counter(str(r.status) for r in self.results if r.outcome == "ok")
        ok200 = sorted(r.latency for r in self.results if r.outcome == "ok" and r.status == 200)
        s503 = [r for r in self.results if r.outcome == "ok" and r.status == 503]
        lat503 = sorted(r.latency for r in s503)
        return {
            "requests": len(self.results),
            "duration_s": duration,
            "outcomes": dict(outcomes),
            "statuses": dict(statuses),
            "ok_per_s": len(ok200) / duration,
            "latency_200_ms": percentiles(ok200),
            "latency_503_ms": percentiles(lat503),
            "503_without_retry_after": sum(1 for r in s503 if not r.retry_after),
        }


def percentiles(sorted_values: list[float]) -> dict[str, float] | None:
    if not sorted_values:
        return None

    def p(q: float) -> float:
        return 1000 * sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]

    return {"p50": p(0.50), "p95": p(0.95), "p99": p(0.99), "max": 1000 * sorted_values[-1], "n": len(sorted_values)}


async def closed_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    clients: int,
    duration: float,
    timeout: float = 30.0,
    stop: asyncio.Event | None = None,
    on_result: Callable[[Result], None] | None = None,
    max_requests: int = 10_000_000,
) -> Run:
    """`clients` connections each sending back-to-back until `duration` passes or `stop` is set (bounded by max_requests)."""
    run = Run(started=time.monotonic())
    deadline = run.started + duration
    counter = iter(range(max_requests))

    async def client(k: int) -> None:
        conn = Connection(host, port)
        i = k * 7919
        try:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                if next(counter, None) is None:
                    return
                r = await conn.request(requests[i % len(requests)], timeout)
                i += 1
                run.results.append(r)
                if on_result:
                    on_result(r)
                if r.outcome == "refused":
                    await asyncio.sleep(0.05)  # server gone: do not spin
        finally:
            await conn.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    run.ended = time.monotonic()
    return run


async def open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    duration: float,
    max_in_flight: int = 512,
    timeout: float = 30.0,
    seed: int = 0,
    on_result: Callable[[Result], None] | None = None,
    retry_stale: bool = True,
    idle_timeout: float | None = None,
) -> Run:
    """Poisson arrivals at `rate` req/s for `duration` s; idle keep-alive connections are reused, new ones opened
    up to `max_in_flight` (arrivals beyond that wait for one: counted in `late`).

    idle_timeout: pooled connections idle longer than this are closed instead of reused, as a proxy in front of
    the service does (its idle timeout must be below the server's keep-alive timeout)."""
    rng = random.Random(seed)
    run = Run(started=time.monotonic())
    idle: list[Connection] = []
    sem = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    late = 0

    async def one(raw: bytes) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        if idle_timeout is not None and conn.writer is not None and time.monotonic() - conn.idle_since > idle_timeout:
            await conn.close()  # a fresh connection in its place, as a proxy's pool does
        try:
            r = await conn.request(raw, timeout, retry_stale=retry_stale)
            run.results.append(r)
            if on_result:
                on_result(r)
        finally:
            if conn.writer is not None:
                conn.idle_since = time.monotonic()
                idle.append(conn)
            sem.release()

    t = run.started
    i = 0
    end = run.started + duration
    hard_end = end + max(5.0, 0.1 * duration)  # wall-clock bound even when the server falls behind
    unsent = 0
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        now = time.monotonic()
        if now > hard_end:
            unsent += 1  # the client fell behind its schedule (server saturated): counted, never sent
            continue
        if t > now:
            await asyncio.sleep(t - now)
        if sem.locked():
            late += 1
        try:
            await asyncio.wait_for(sem.acquire(), max(0.001, hard_end - time.monotonic()))
        except TimeoutError:
            unsent += 1
            continue
        task = asyncio.create_task(one(requests[i % len(requests)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5)
    for conn in idle:
        await conn.close()
    run.ended = time.monotonic()
    run.late = late  # type: ignore[attr-defined]
    run.unsent = unsent  # type: ignore[attr-defined]
    return run
