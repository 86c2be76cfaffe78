"""The HTTP server: uvicorn with a shutdown that leaves no accepted connection without an answer.

uvicorn on its own, at SIGTERM, closes its listening socket at once (the
connections waiting in the kernel's backlog are reset), closes every
connection whose request it has not started parsing (a client that has just
connected and sent its request gets nothing), and a close with request bytes
still unread makes the kernel send a reset that can destroy an answer already
sent (a 413 or 503 given before the body was read). Here:

1. SIGTERM: `Service.begin_drain()` (readiness 503), and every response from
   now on carries `Connection: close`, so keep-alive clients reconnect, through
   their load balancer, elsewhere. Requests are served as usual for
   `drain_delay_s`. SIGINT (Ctrl-C, a developer) skips the delay.
2. The listener closes without a race: in one synchronous step, every
   connection waiting in the backlog is accepted, then the socket is closed.
   Those connections are served like any other.
3. A connection with a request in progress gets its answer, then closes; one
   that has sent nothing yet (just accepted) gets LAST_CALL_S to send its
   request, answered with `Connection: close`; an idle keep-alive connection is
   closed (the inherent HTTP/1.1 race, narrowed by step 1: any connection used
   during the delay was told to close).
4. Every close is a lingering close: FIN after the answer, then what the client
   still sends is read and dropped for up to LINGER_S, so no reset overtakes
   the answer.

The keep-alive idle timeout is `keep_alive_timeout_s` (75 s by default):
it must exceed the idle timeout of any proxy in front, or the server closes
connections the proxy is about to reuse and its clients see 502s. A new
connection that has sent nothing yet is idle in the same sense.

Slow and hostile clients (slowloris), which uvicorn alone does not bound:

5. Deadlines on the client's turn: from its first byte, a request head must
   arrive within `header_timeout_s`; from the end of the head, its body within
   `body_timeout_s` (a total, not a rate: a rate lets a sender trickle for
   max_body_bytes / rate seconds). Past either, a JSON 408 (app/errors.py's
   RequestTimeout, written here: the app has not been reached, or is only
   waiting for the body) and a close.
6. Slots: `max_connections` is the most open connections (those lingering
   after their answer aside) before stalled ones are reclaimed: when a
   connection is accepted past it, every connection whose client has been at
   its current step (idle, sending its head, sending its body) for STALLED_S
   or more, longest first, gets that 408 (or, idle, just the close) until the
   count is back at the limit. So connections that stall cannot hold the
   slots, and a client that sends its request at once is never stalled. No
   request is refused for the connection count (uvicorn's 503 beyond
   limit_concurrency is off): the work is capped by `max_in_flight`
   (app/middleware.py, which likewise gives a slow body's place to a
   newcomer), and the count can pass the limit only by connections younger
   than STALLED_S or busy being answered.
7. Per client address, at most `max_connections_per_client` connections (0 =
   no cap); beyond it a connection gets a JSON 503 and is closed at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app import allocator
from app.errors import Overloaded, RequestTimeout, ServiceError, error_response
from app.metrics import Metrics, rss_bytes
from app.process_group import Group
from app.service import Service

logger = logging.getLogger("app")

LAST_CALL_S = 2.0  # how long a just-accepted connection may take to send its request once the listener is closed
LINGER_S = 5.0  # how long, after the last answer, what the client still sends is read and dropped before the close
# Past the connection limit, a connection whose client has been this long at its current step (idle, head, body)
# is stalled and closed for the newcomer. Far beyond a request sent at once (its head and body come a loop turn or
# a round trip apart), far below the deadlines (seconds) a trickling client would otherwise hold a slot for.
STALLED_S = 1.0

Phase = Literal["idle", "head", "body", "busy"]  # whose turn it is: the client's (idle, head, body) or the server's (busy)


@dataclass(frozen=True)
class Limits:
    """What a connection may hold and for how long (steps 5 to 7)."""

    max_connections: int
    max_per_client: int = 0  # 0 = no cap
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


class _ServerState(ServerState):
    """uvicorn's per-server state, plus where the shutdown is and who holds a slot."""

    def __init__(self, limits: Limits, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.draining = False  # SIGTERM came: every response says Connection: close
        self.closing = False  # the listener is closed: connections get their last call
        self.limits = limits
        self.metrics = metrics
        self.slots: dict[Protocol, None] = {}  # open connections not yet lingering
        self.waiting: dict[Protocol, None] = {}  # slot holders waiting on their client, longest-waiting first
        self.lingering: dict[Protocol, None] = {}  # answered and closing, oldest first
        self.per_client: Counter[str] = Counter()  # open connections per client address

    def count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()


def _raw_error(path: str, error: ServiceError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """`error` as app/errors.py renders it, as bytes for a connection the app cannot answer on, with Connection: close."""
    response = error_response(path, error.status, error.type, error.message, error.headers)
    headers = [*default_headers, *(h for h in response.raw_headers if h[0] != b"connection"), (b"connection", b"close")]
    return STATUS_LINE[response.status_code] + b"".join(b"%s: %s\r\n" % header for header in headers) + b"\r\n" + bytes(response.body)


class _LingeringTransport:
    """An asyncio transport whose close() is a lingering close (FIN, read and drop, then close)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, on_close: Callable[[], None]) -> None:
        self._transport = transport
        self._loop = loop
        self._on_close = on_close  # the connection gives up its slot
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        self.lingering = True
        self._on_close()
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()  # after what is buffered: the answer goes out first
        transport.resume_reading()  # flow control may have paused reads; unread bytes would turn the close into a reset
        self._timer = self._loop.call_later(LINGER_S, transport.close)

    def close_now(self) -> None:
        """Close without lingering: what the client still sends may turn into a reset."""
        if not self.lingering:
            self.lingering = True
            self._on_close()
        self._transport.close()

    def lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the shutdown behaviour (steps 1, 3, 4) and the client limits (5 to 7) above."""

    server_state: _ServerState
    transport: _LingeringTransport  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_call: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase = "idle"
        self._since = 0.0  # when the current phase began
        self._host: str | None = None  # counted in per_client under this address
        self.limit_concurrency = None  # no 503 by connection count: slots are reclaimed instead (step 6)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self.loop, self._lingers))  # type: ignore[arg-type]
        state, limits = self.server_state, self.server_state.limits
        while len(state.lingering) > limits.max_connections:  # a flood of answered connections must not exhaust descriptors
            oldest = next(iter(state.lingering))
            del state.lingering[oldest]
            oldest.transport.close_now()
        host = self.client[0] if self.client else None
        if host is not None and limits.max_per_client and state.per_client[host] >= limits.max_per_client:
            state.count("client_connections")
            message = f"{state.per_client[host]} connections open from {host}, the limit is {limits.max_per_client}; retry later"
            self.transport.write(_raw_error("/", Overloaded(message), state.default_headers))
            self.transport.close_now()
            return
        if host is not None:
            self._host = host
            state.per_client[host] += 1
        state.slots[self] = None
        state.waiting[self] = None
        self._since = time.monotonic()
        self._reclaim_slots()
        # Nothing received yet: idle, like a keep-alive connection (uvicorn arms this only after a response).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        if state.closing:  # accepted from the backlog after the server began closing its connections
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.lost()
        self._release()
        self.server_state.lingering.pop(self, None)
        if self._host is not None:
            per_client = self.server_state.per_client
            per_client[self._host] -= 1
            if per_client[self._host] <= 0:
                del per_client[self._host]
            self._host = None
        if self._last_call is not None:
            self._last_call.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # answered and closing: the rest of what the client sends is dropped
        if self._phase in ("idle", "busy"):  # the first byte of a request (busy: a pipelined one)
            self._enter("head")
            self._arm(self.server_state.limits.header_timeout_s, "the request head")
        super().data_received(data)

    def on_headers_complete(self) -> None:
        state = self.server_state
        super().on_headers_complete()
        if (state.draining or state.closing) and self.cycle is not None:
            self.cycle.keep_alive = False  # the response says Connection: close
        self._enter("body")
        if self.pipeline:  # queued behind a response in progress: reading is paused by the server, not the client
            self._cancel_deadline()
        else:
            self._arm(state.limits.body_timeout_s, "the request body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_deadline()
        if self.cycle is not None and self.cycle.response_complete:  # answered early (a 413 or 503): idle again
            self._enter("idle")
        else:
            self._phase = "busy"
            self.server_state.waiting.pop(self, None)  # the server's turn: not reclaimable

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase == "busy" and self in self.server_state.slots and (self.cycle is None or self.cycle.response_complete):
            self._enter("idle")

    def shutdown(self) -> None:
        """Called by the server once the listener is closed."""
        if self.cycle is None:  # accepted, nothing received yet: its request is on the way
            if self._last_call is None:
                self._last_call = self.loop.call_later(LAST_CALL_S, self._close_if_nothing_came)
        elif self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    def _close_if_nothing_came(self) -> None:
        if self.cycle is None:
            self.transport.close()

    def _enter(self, phase: Phase) -> None:
        """A new step of the client's: it goes to the back of the reclaim line (a client that keeps moving keeps its slot)."""
        self._phase = phase
        self._since = time.monotonic()
        waiting = self.server_state.waiting
        if self in self.server_state.slots:
            waiting.pop(self, None)
            waiting[self] = None

    def _release(self) -> None:
        """Give up the slot: the connection is lingering after its answer, or gone."""
        self.server_state.slots.pop(self, None)
        self.server_state.waiting.pop(self, None)
        self._cancel_deadline()

    def _lingers(self) -> None:
        self._release()
        self.server_state.lingering[self] = None

    def _arm(self, seconds: float, what: str) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, self._expire, f"{what} did not arrive within {seconds:g} s", "request_timeout")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _reclaim_slots(self) -> None:
        """Past the limit, connections stalled on their client (STALLED_S or more), longest first, give up their slots."""
        state = self.server_state
        limit = state.limits.max_connections
        while len(state.slots) > limit:
            oldest = next((c for c in state.waiting if c is not self), None)  # the first or second: self is first or last
            if oldest is None or time.monotonic() - oldest._since < STALLED_S:
                return  # the other slots are busy being answered, or their clients are not stalled (yet)
            oldest._expire(f"the connection limit ({limit}) was reached and this connection had stalled; retry", "connection_reclaimed")
            state.waiting.pop(oldest, None)  # closed, or closing once its answer in progress is sent

    def _expire(self, message: str, reason: str) -> None:
        """The client's turn is over: answer 408 where no answer has begun, stop the app waiting for a body, close."""
        self._deadline = None
        cycle, state = self.cycle, self.server_state
        if self.transport.is_closing():
            return
        state.count(reason)
        if self._phase == "body" and cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the app, reading the body, sees the client gone and stops
            cycle.message_event.set()
            self.transport.write(_raw_error(cycle.scope["path"], RequestTimeout(message), state.default_headers))
        elif self._phase == "head" and (cycle is None or cycle.response_complete):
            self.transport.write(_raw_error("/", RequestTimeout(message), state.default_headers))
        elif cycle is not None and not cycle.response_complete:  # an answer is on its way (a pipelined head is late)
            cycle.keep_alive = False  # the connection closes after it
            return
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server driving the service's shutdown sequence (steps 1 and 2 above), one of a group's processes or alone."""

    def __init__(self, config: uvicorn.Config, service: Service, metrics: Metrics | None = None, group: Group | None = None) -> None:
        super().__init__(config)
        self.group = group  # app/process_group.py: signals go on to the secondaries; a secondary drains without its primary
        settings = service.settings
        limits = Limits(
            max_connections=settings.max_connections,
            max_per_client=settings.max_connections_per_client,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
        )
        self.server_state = _ServerState(limits, metrics)
        self.service = service
        self._delay: float | None = None  # None = the service's drain_delay_s
        self._idle_trim = allocator.IdleTrim(settings.malloc_trim_idle_ms / 1000) if settings.malloc_trim_idle_ms else None
        self._trimming: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT:
            self._delay = 0.0  # Ctrl-C: a developer, not a load balancer, is waiting
        self.server_state.draining = True
        if self.group is not None:
            self.group.signal(sig)
        super().handle_exit(sig, frame)

    async def main_loop(self) -> None:
        await super().main_loop()
        self.server_state.draining = True
        self.service.begin_drain(self._delay)
        waiting = asyncio.ensure_future(self.service.drain_delay_passed())
        counter = 0
        while not waiting.done() and not self.force_exit:
            await asyncio.wait([waiting], timeout=0.1)
            counter += 1
            await self.on_tick(counter)  # keeps the Date header fresh
        waiting.cancel()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s), plus the process group's upkeep and the idle malloc_trim when it is on."""
        should_exit = await super().on_tick(counter)
        if self.group is not None and self.group.tick() and not self.server_state.draining:
            logger.error("the primary serving process is gone: draining")
            self.handle_exit(signal.SIGTERM, None)
        if self._idle_trim is not None:
            self._maybe_trim()
        return should_exit

    def _maybe_trim(self) -> None:
        assert self._idle_trim is not None
        state = self.server_state
        # Busy: a request in progress, texts waiting for the model (HTTP and gRPC alike), or a trim still running.
        busy = bool(state.tasks) or self.service.queue_depth > 0 or (self._trimming is not None and not self._trimming.done())
        if self._idle_trim.due(state.total_requests, busy, time.monotonic()):
            self._trimming = asyncio.get_running_loop().run_in_executor(None, _trim_and_log)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.server_state.draining = True
        self.server_state.closing = True
        loop = asyncio.get_running_loop()
        factory = functools.partial(
            self.config.http_protocol_class, config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        backlog = self._close_listeners()
        if backlog:
            logger.info("serving %d connection(s) taken from the listen backlog", len(backlog))
        for connection in backlog:
            try:
                await loop.connect_accepted_socket(factory, connection)
            except OSError:  # the client is already gone
                connection.close()
        await super().shutdown(sockets)

    def _close_listeners(self) -> list[socket.socket]:
        """Accept every connection the kernel has queued, then close the listeners: one step, no await, no race."""
        accepted: list[socket.socket] = []
        listeners = [s.dup() for server in self.servers for s in (server.sockets or ())]
        for listener in listeners:
            listener.setblocking(False)
            while True:
                try:
                    connection, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    logger.exception("accepting from the backlog failed")
                    break
                accepted.append(connection)
        for server in self.servers:
            server.close()
        for listener in listeners:
            listener.close()
        return accepted


def _trim_and_log() -> None:
    before = _rss_mib()
    released = allocator.trim()
    logger.debug("idle malloc_trim: released=%s, RSS %.0f -> %.0f MiB", released, before, _rss_mib())


def _rss_mib() -> float:
    return rss_bytes() / 2**20
