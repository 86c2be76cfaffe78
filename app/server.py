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
connections the proxy is about to reuse and its clients see 502s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.service import Service

logger = logging.getLogger("app")

LAST_CALL_S = 2.0  # how long a just-accepted connection may take to send its request once the listener is closed
LINGER_S = 5.0  # how long, after the last answer, what the client still sends is read and dropped before the close


class _DrainState(ServerState):
    """uvicorn's per-server state, plus where the shutdown is."""

    def __init__(self) -> None:
        super().__init__()
        self.draining = False  # SIGTERM came: every response says Connection: close
        self.closing = False  # the listener is closed: connections get their last call


class _LingeringTransport:
    """An asyncio transport whose close() is a lingering close (FIN, read and drop, then close)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
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
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()  # after what is buffered: the answer goes out first
        transport.resume_reading()  # flow control may have paused reads; unread bytes would turn the close into a reset
        self._timer = self._loop.call_later(LINGER_S, transport.close)

    def lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the shutdown behaviour above (steps 1, 3 and 4)."""

    server_state: _DrainState
    transport: _LingeringTransport  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_call: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self.loop))  # type: ignore[arg-type]
        if self.server_state.closing:  # accepted from the backlog after the server began closing its connections
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.lost()
        if self._last_call is not None:
            self._last_call.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # answered and closing: the rest of what the client sends is dropped
        super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if (self.server_state.draining or self.server_state.closing) and self.cycle is not None:
            self.cycle.keep_alive = False  # the response says Connection: close

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


class Server(uvicorn.Server):
    """uvicorn's server driving the service's shutdown sequence (steps 1 and 2 above)."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.server_state = _DrainState()
        self.service = service
        self._delay: float | None = None  # None = the service's drain_delay_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT:
            self._delay = 0.0  # Ctrl-C: a developer, not a load balancer, is waiting
        self.server_state.draining = True
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
