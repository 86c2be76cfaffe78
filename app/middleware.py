"""The envelope around every HTTP request: request id, in-flight limit, body size limit, per-route metrics.

Pure ASGI rather than BaseHTTPMiddleware: it can answer 503 or 413 before a
body is ever held in memory, and it watches the connection while the request
is handled: when the client goes away (a timeout, a crash), the handler is
cancelled, so its queued texts are dropped instead of costing model time that
clients still waiting need. An overloaded service then recovers as soon as
clients give up, instead of computing answers nobody reads.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Overloaded, PayloadTooLarge, RequestTimeout, ShuttingDown, error_response, service_error_response
from app.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"; only ever in metrics
_VALID_REQUEST_ID = re.compile(r"[\w.:/+=@-]{1,128}")  # echoed into headers and logs: no spaces, no control chars
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
_MODEL_VERSION = "model_version"  # scope["state"] key: the model version that answered the request


def answered_by(scope: Scope, model_version: str) -> None:
    """Note which model version answered (a reload may swap it mid-request): the access line names this one (app/logs.py)."""
    scope.setdefault("state", {})[_MODEL_VERSION] = model_version


def model_version(scope: Scope) -> str | None:
    """The model version noted by `answered_by`; None for a request no model answered (a probe, an error)."""
    return scope.get("state", {}).get(_MODEL_VERSION)


class RequestEnvelope:
    """Echo or mint X-Request-ID, cap requests in flight and body bytes, count and time each request.

    The in-flight cap counts requests with a body (the work): past it they get
    the service's JSON 503 + Retry-After at once, unread, so memory held by
    bodies stays under max_in_flight x max_body_bytes. Except that, when a
    request still reading its body holds a place, the one that has been
    reading longest gives its place to the newcomer (a JSON 408 for it):
    bodies trickled on purpose cannot hold every place, and a body sent with
    its head is never the oldest for long (without an attack, a newcomer at
    the limit may so turn one client's 503 into another's 408). Body-less requests
    (health probes, metrics, docs) are never refused: an orchestrator must see
    an overloaded service as alive.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        max_in_flight: int,
        access_log: Callable[[Scope, str, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # requests with a body being handled now
        self._reading: dict[asyncio.Task[None], None] = {}  # requests reading their body, oldest first
        self._reclaimed: set[asyncio.Task[None]] = set()  # gave their place away: no longer counted in in_flight
        self.access_log = access_log  # telemetry hook: app/logs.py's line per request (json logs + access log only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_REQUEST_ID.fullmatch(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what a crash that escapes every handler amounts to

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        self.metrics.in_progress.inc()
        try:
            if scope["method"] in _BODYLESS:
                await self.app(scope, receive, send_with_id)
            elif self.in_flight >= self.max_in_flight and not self._reclaim_a_place():
                message = f"{self.in_flight} requests in flight, the limit is {self.max_in_flight}; retry later"
                await service_error_response(scope["path"], Overloaded(message), self.metrics)(scope, receive, send_with_id)
            else:
                self.in_flight += 1
                task = asyncio.current_task()
                try:
                    body = await self._read_body_in_place(scope, receive, send_with_id, headers.get(b"content-length"))
                    if body is None and status == 500:  # no answer: the client left, or was timed out, before its body came
                        status = CLIENT_CLOSED
                    if body is not None and not await self._run_while_connected(scope, body, receive, send_with_id):
                        status = CLIENT_CLOSED
                        self.metrics.rejected.labels("client_closed").inc()
                finally:
                    if task in self._reclaimed:
                        self._reclaimed.discard(task)
                    else:
                        self.in_flight -= 1
        finally:
            self.metrics.in_progress.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # templates, not raw paths: bounded label cardinality
            labels = (scope["method"], template, str(status))
            self.metrics.requests.labels(*labels).inc()
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(*labels).observe(elapsed)
            if self.access_log is not None:  # telemetry hook (app/logs.py)
                self.access_log(scope, template, status, elapsed)

    def _reclaim_a_place(self) -> bool:
        """Cancel the request that has been reading its body longest; True if there was one."""
        if not self._reading:
            return False
        task = next(iter(self._reading))
        del self._reading[task]
        self._reclaimed.add(task)
        self.in_flight -= 1
        task.cancel()
        return True

    async def _read_body_in_place(self, scope: Scope, receive: Receive, send: Send, content_length: bytes | None) -> bytes | None:
        """`_read_body`, which `_reclaim_a_place` may cut short: then a 408, and None."""
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = None
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            return await self._read_body(scope, receive, send_tracked, content_length)
        except asyncio.CancelledError:
            if task not in self._reclaimed:
                raise
            task.uncancel()
            self.metrics.rejected.labels("slow_body").inc()
            if not started:
                message = "the request body was still arriving when every place in flight was taken; its place went to another request"
                await service_error_response(scope["path"], RequestTimeout(message), self.metrics)(scope, receive, send)
            return None
        finally:
            self._reading.pop(task, None)

    async def _run_while_connected(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Answer `body`, cancelling the work if the client disconnects first; False if it was cancelled.

        The work runs in this task; one watcher task cancels it when the
        server reports the client gone before the answer is complete.
        """
        started = responded = gone = False
        worker = asyncio.current_task()
        assert worker is not None

        async def send_tracked(message: Message) -> None:
            nonlocal started, responded
            started = True
            await send(message)
            responded = responded or (message["type"] == "http.response.body" and not message.get("more_body", False))

        async def watch() -> None:
            nonlocal gone
            await _disconnected(receive)  # also returns once the response is complete
            if not responded:
                gone = True
                worker.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, replay(body, receive), send_tracked)
        except asyncio.CancelledError:
            if gone:  # the client left before its answer: stop working for it
                worker.uncancel()
                return False
            if started:  # the server is cancelling us (its shutdown timeout passed) mid-answer: let it
                raise
            # ...and still answer: an accepted request gets its result or a JSON 503 that says the connection closes.
            response = service_error_response(scope["path"], ShuttingDown("the server is shutting down; retry"), self.metrics)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return True
        finally:
            watcher.cancel()
        return True

    async def _read_body(self, scope: Scope, receive: Receive, send: Send, content_length: bytes | None) -> bytes | None:
        """The whole body, or None once a 413/400 was sent (or the client left); never holds more than the limit."""
        limit = self.max_body_bytes
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                await error_response(scope["path"], 400, "bad_request", "invalid Content-Length header")(scope, receive, send)
                return None
            if declared > limit:
                await self._too_large(scope, receive, send, f"body of {declared} bytes exceeds the limit of {limit} bytes")
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, f"body exceeds the limit of {limit} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        response = service_error_response(scope["path"], PayloadTooLarge(message), self.metrics)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    """Return once the server reports the client gone (or the response complete: both are http.disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands `body` over whole, in one message, then passes on what the server reports."""
    sent = False

    async def receive_body() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then disconnects, as the server reports them

    return receive_body


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex has. Not uuid4: os.urandom releases the GIL, and under load the event
    loop then waits for a model worker to hand it back (a third of the loop's samples in `bench.profile`). An id
    must be unique, not secret: the Mersenne Twister, seeded from os.urandom at start, gives 128 bits without a
    system call."""
    return f"{random.getrandbits(128):032x}"
