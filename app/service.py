"""The service's lifecycle in one object: the runner, readiness with a reason, draining, the shutdown sequence.

Routes, the health and OIP probes, the lifespan and the servers (HTTP here,
gRPC beside it) talk to a `Service` and to nothing else about the lifecycle,
so readiness is derived in one place (`ready()`) and `draining` has one writer
(`begin_drain()`).

The shutdown sequence (SIGTERM; `app/server.py` drives it for HTTP):

1. `begin_drain()`: readiness turns 503 at once ("shutting down"), and every
   callback given to `on_drain` runs (say, a gRPC health service going
   NOT_SERVING). Requests are still served normally, so load balancers have
   `drain_delay_s` to notice and move traffic away (the preStop pattern, built in).
2. `drain_delay_s` later (`drain_delay_passed()` returns): each server stops
   listening and finishes what it accepted; the HTTP server does so itself,
   every other server registered with `add_listener(stop)` has its `stop()`
   awaited then, concurrently.
3. `stop()` (the lifespan's shutdown, once the HTTP server has finished its
   connections, within `shutdown_timeout_s`): waits for every listener's
   `stop()`, then closes the runner: every accepted text is finished, then the
   model's worker threads stop.

For another server (issue 16's gRPC):

    service.ready()                    -> (True, "ready") | (False, reason): the health answer
    service.draining                   -> True from begin_drain() on
    service.on_drain(callback)         sync callback, run once when draining begins
    service.add_listener(stop)         async stop(): awaited after the drain delay; the runner
                                       closes only after it returns (finish in-flight calls in it)
    service.runner                     the model behind the batcher (raises NotReady before start())

It knows nothing of HTTP: the servers map its state onto their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.config import Settings
from app.errors import NotReady
from app.metrics import Metrics
from app.runner import Runner
from contract.artifact import Artifact

if TYPE_CHECKING:
    from app.tracing import Tracing

logger = logging.getLogger("app")

READY = "ready"
NOT_LOADED = "model not loaded"
SHUTTING_DOWN = "shutting down: draining accepted requests"
GOLDEN_FAILED = "model failed the built-in golden check (it mislabels known examples)"


class Service:
    """One app's lifecycle: `start()`, `ready()`, `begin_drain()`, `stop()`; restartable (tests run lifespans twice)."""

    def __init__(self, settings: Settings, metrics: Metrics, artifact: Artifact | None = None, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing  # telemetry hook: None unless OTEL_* turns tracing on (app/tracing.py)
        self._metrics = metrics
        self._artifact = artifact  # already loaded and verified (cli), else loaded from settings.model_path in start()
        self._runner: Runner | None = None
        self._draining = False
        self._on_drain: list[Callable[[], None]] = []
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._delay_passed: asyncio.Event | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            raise NotReady(NOT_LOADED)
        return self._runner

    @property
    def draining(self) -> bool:
        return self._draining

    def ready(self) -> tuple[bool, str]:
        """Whether to send traffic here, and why not: the one place readiness is derived."""
        runner = self._runner
        if runner is None:
            return False, NOT_LOADED
        if self._draining or not runner.accepting:
            return False, SHUTTING_DOWN
        if not runner.golden_ok:
            return False, GOLDEN_FAILED
        return True, READY

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Run `callback()` once when draining begins (at once if it already has)."""
        self._on_drain.append(callback)
        if self._draining:
            callback()

    def add_listener(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Another server taking traffic for this service: `await stop()` once the drain delay has passed.

        `stop()` should stop accepting, finish what it accepted (within
        settings.shutdown_timeout_s) and return; the runner closes after that.
        """
        self._listeners.append(stop)

    async def start(self) -> None:
        """Load (unless given) and verify the model, warm it up with the golden check, start the workers."""
        self._draining = False
        self._delay_passed = asyncio.Event()
        self._stopping = None
        runner = await asyncio.to_thread(Runner.from_settings, self.settings, self._metrics, self._artifact)
        runner.tracing = self.tracing  # telemetry hook
        await runner.start()
        manifest = runner.artifact.manifest
        self._metrics.track_queue(lambda: runner.queue_depth)
        self._metrics.set_model(manifest.name, manifest.version, str(runner.device))
        self._runner = runner
        if runner.golden_ok:
            plan = runner.threads
            logger.info(
                "serving %s %s on %s: %d model worker(s) x %s torch thread(s)",
                manifest.name,
                manifest.version,
                runner.device,
                plan.workers,
                plan.torch_threads or "default",
            )
        else:
            logger.error("model %s %s failed the golden check: /health/ready stays 503", manifest.name, manifest.version)

    def begin_drain(self, delay: float | None = None) -> None:
        """Turn unready now; servers stop listening `delay` seconds later (default settings.drain_delay_s).

        Idempotent: a second call changes nothing (the first delay stands).
        Call it from the event loop.
        """
        if self._draining:
            return
        self._draining = True
        delay = self.settings.drain_delay_s if delay is None else delay
        logger.info("draining: unready now, listeners stop in %.1f s", delay)
        for callback in self._on_drain:
            try:
                callback()
            except Exception:  # one broken hook must not stop the shutdown
                logger.exception("drain callback failed")
        self._stopping = asyncio.get_running_loop().create_task(self._stop_listeners(delay))

    async def drain_delay_passed(self) -> None:
        """Return once the drain delay after begin_drain() has passed: time to stop listening."""
        assert self._delay_passed is not None, "start() first"
        await self._delay_passed.wait()

    async def stop(self) -> None:
        """The end of the shutdown: wait for every listener to finish, then finish every accepted text and stop the runner."""
        self.begin_drain(delay=0)  # a no-op after SIGTERM; a lifespan ended otherwise (tests) drains at once
        assert self._delay_passed is not None
        self._delay_passed.set()  # the HTTP server is done: what is left of the delay is of no use
        if self._stopping is not None:
            await self._stopping
        if self._runner is not None:
            await self._runner.close()
        if self.tracing is not None:  # telemetry hook: export the last spans
            await asyncio.to_thread(self.tracing.force_flush)

    async def _stop_listeners(self, delay: float) -> None:
        assert self._delay_passed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._delay_passed.wait(), delay)  # stop() may cut it short
        self._delay_passed.set()
        results = await asyncio.gather(*(stop() for stop in self._listeners), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.error("a listener failed to stop cleanly", exc_info=result)
