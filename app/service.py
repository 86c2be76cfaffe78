"""The service in one object: the model and its batcher, readiness with a reason, draining, the shutdown
sequence, and the one protocol-neutral inference call.

Every protocol (/predict with its fast lane, OIP over HTTP, gRPC) decodes its
request, then calls `admit` (the API key, the deadline) and `predict` (the
limits, then the model) and encodes the `Result`; both raise only the typed
errors of app/errors.py, which each protocol maps onto its own answer. Nothing
else calls the runner or the batcher.

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
   `stop()`, then closes the batcher: every accepted text is finished, then the
   model's worker threads stop.

For another server (issue 16's gRPC):

    service.ready()                    -> (True, "ready") | (False, reason): the health answer
    service.draining                   -> True from begin_drain() on
    service.on_drain(callback)         sync callback, run once when draining begins
    service.add_listener(stop)         async stop(): awaited after the drain delay; the batcher
                                       closes only after it returns (finish in-flight calls in it)
    service.admit(...), service.predict(...)   the inference call (see above)
    service.model                      the model serving now (raises NotReady before start())

It knows nothing of HTTP: the servers map its state onto their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from app.batcher import Batcher, BatchStats
from app.config import Settings
from app.errors import BATCHER_ERRORS, Forbidden, InvalidInput, NotReady, ReloadFailed, Timeout, Unauthorized
from app.metrics import Metrics
from app.request_context import RequestContext
from app.runner import Job, Output, Runner, init_thread, kind, process, traced_process
from contract import scored
from contract.artifact import Artifact
from contract.manifest import Manifest
from contract.scored import Scored

if TYPE_CHECKING:
    from app.tracing import Tracing

logger = logging.getLogger("app")

READY = "ready"
NOT_LOADED = "model not loaded"
SHUTTING_DOWN = "shutting down: draining accepted requests"
GOLDEN_FAILED = "model failed the built-in golden check (it mislabels known examples)"

# Built-in sanity check run at start-up: readiness requires the model to get both right.
GOLDEN: tuple[tuple[str, int], ...] = (
    ("A wonderful, moving film. I loved every minute of it!", 1),
    ("Dull, boring and awful: a complete waste of time.", 0),
)

# Encoding costs ~190 ns/char (~0.2 ms for a typical 1.1k-char review; ~0.3 s for a 1 MiB body)
# and a hop to a helper thread ~0.1-0.5 ms (measured on the 2-core dev box under load). Below this
# many characters per request, encoding inline is cheaper than the hop and stalls the loop < ~1 ms;
# above it, encoding moves off the event loop so big requests never stall other clients.
INLINE_ENCODE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Attribution:
    token: str
    start: int
    end: int
    attribution: float


@dataclass(frozen=True, slots=True)
class Prediction(Scored):
    """The scored record (contract/scored.py) plus what only the service gives: the explanation."""

    explanation: list[Attribution] | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """What `predict` answers: the predictions in input order, and the model that made them."""

    model: Manifest
    predictions: list[Prediction]


@dataclass(frozen=True, slots=True)
class TextsField:
    """How a protocol names its texts in error messages: the field, and text i."""

    name: str
    item: Callable[[int], str]


TEXTS = TextsField("texts", lambda i: f"texts.{i}")


class Service:
    """One app's lifecycle: `start()`, `ready()`, `begin_drain()`, `stop()`; restartable (tests run lifespans twice)."""

    def __init__(self, settings: Settings, metrics: Metrics, artifact: Artifact | None = None, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing  # telemetry hook: None unless OTEL_* turns tracing on (app/tracing.py)
        self._metrics = metrics
        self._artifact = artifact  # already loaded and verified (cli), else loaded from settings.model_path in start()
        self._runner: Runner | None = None
        self._batcher: Batcher[Job, Output] | None = None
        self._golden_ok = False
        self._draining = False
        self._on_drain: list[Callable[[], None]] = []
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._delay_passed: asyncio.Event | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloading = asyncio.Lock()  # one reload at a time; a second waits, then loads the file as it is then
        self._tasks: set[asyncio.Task[object]] = set()  # reloads asked for by signal, and the file watch

    @property
    def model(self) -> Runner:
        """The model serving now (what /model and the OIP metadata describe)."""
        if self._runner is None:
            raise NotReady(NOT_LOADED)
        return self._runner

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def accepting(self) -> bool:
        """Started and not closing: new texts are taken."""
        return self._batcher is not None and self._batcher.accepting

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a model worker."""
        return 0 if self._batcher is None else self._batcher.depth

    def ready(self) -> tuple[bool, str]:
        """Whether to send traffic here, and why not: the one place readiness is derived."""
        if self._runner is None:
            return False, NOT_LOADED
        if self._draining or not self.accepting:
            return False, SHUTTING_DOWN
        if not self._golden_ok:
            return False, GOLDEN_FAILED
        return True, READY

    # ---------------------------------------------------------------- the inference call

    def admit(self, *, api_key: str | None, timeout_s: float | InvalidInput | None, request_id: str = "-") -> RequestContext:
        """Check the key, fix the deadline: the first step of every inference request, before its body is judged.

        `api_key` is the bearer token presented (None: none); `timeout_s` the
        client's own deadline in seconds (None: none), capped by the server's
        default, or the error decoding it gave, raised after the key check.
        Raises Unauthorized, that error, or Timeout when the client's deadline
        has already passed.
        """
        check_api_key(self.settings, api_key)
        if isinstance(timeout_s, InvalidInput):
            raise timeout_s
        if timeout_s is not None and timeout_s <= 0:
            raise Timeout("the call's deadline had passed on arrival")
        default = self.settings.request_timeout_ms / 1000 or None
        limits = [t for t in (timeout_s, default) if t is not None]
        return RequestContext(request_id, time.monotonic() + min(limits) if limits else None)

    async def predict(
        self, texts: Sequence[str], context: RequestContext | None = None, *, explain: bool = False, field: TextsField = TEXTS
    ) -> Result:
        """Predictions for `texts` in input order, within the context's deadline; `field` names the texts in errors.

        Checks the limits, then runs the model. Raises InvalidInput, NotReady,
        Overloaded, ShuttingDown or Timeout. Without a context the call is
        admitted here (with no key: refused when one is configured).
        """
        if context is None:
            context = self.admit(api_key=None, timeout_s=None)
        self._check_limits(texts, field)
        runner, batcher = self.model, self._batcher
        assert batcher is not None
        try:
            jobs = await self._encode(runner, batcher, texts, explain, context)
            if self.tracing is not None:  # telemetry hook (app/tracing.py): the jobs carry the span context, stamped as they queue
                context = replace(context, trace=self.tracing.enqueued())
                jobs = [replace(job, context=context) for job in jobs]
            outputs = await batcher.submit(jobs, context.remaining(), reserved=True)
        except tuple(BATCHER_ERRORS) as exc:  # the batcher knows nothing of the service's errors: mapped here, once
            raise BATCHER_ERRORS[type(exc)](str(exc)) from None
        labels = runner.artifact.manifest.labels
        return Result(runner.artifact.manifest, [prediction(job, output, labels) for job, output in zip(jobs, outputs, strict=True)])

    def _check_limits(self, texts: Sequence[str], field: TextsField) -> None:
        """Settings-dependent limits -> InvalidInput naming the offending field or item."""
        max_items, max_chars = self.settings.max_items_per_request, self.settings.max_text_chars
        if len(texts) > max_items:
            raise InvalidInput(f"{field.name}: {len(texts)} items, at most {max_items} per request")
        for i, text in enumerate(texts):
            if (error := scored.length_error(text, max_chars)) is not None:
                raise InvalidInput(f"{field.item(i)}: {error}")

    async def _encode(
        self, runner: Runner, batcher: Batcher[Job, Output], texts: Sequence[str], explain: bool, context: RequestContext
    ) -> list[Job]:
        """Reserve queue room (refused before any work when full or closing), then encode inline or off the loop."""
        batcher.reserve(len(texts))
        try:
            if sum(len(t) for t in texts) <= INLINE_ENCODE_CHARS:
                jobs = encode(runner, texts, explain, context)
            else:
                jobs = await asyncio.to_thread(encode, runner, texts, explain, context)
            remaining = context.remaining()
            if remaining is not None and remaining <= 0:
                raise Timeout("deadline passed while encoding")
        except BaseException:
            batcher.release(len(texts))
            raise
        for job in jobs:
            self._metrics.observe_text(len(job.ids) if job.n_tokens else 0, job.n_unknown, job.truncated)
        return jobs

    # ---------------------------------------------------------------- reload

    def check_admin_key(self, admin_key: str | None) -> None:
        """Unauthorized without a bearer token, Forbidden with another than settings.admin_key (compared in constant time)."""
        expected = self.settings.admin_key
        if admin_key is None:
            raise Unauthorized("missing `Authorization: Bearer <admin key>` header")
        if expected is None or not hmac.compare_digest(admin_key.encode(), expected.get_secret_value().encode()):
            raise Forbidden("invalid admin key")

    async def reload(self) -> Runner:
        """Load settings.model_path beside the serving model, verify and golden-check it, then serve it; its runner.

        Loading runs on a helper thread and the golden check on a model worker,
        never on the event loop. The swap is one assignment between batches:
        texts already queued were encoded for the old model and finish on it
        (their batches are keyed on it), new requests get the new one. A file
        that fails anything raises ReloadFailed and changes nothing; either way
        sentiment_model_reloads_total{result} counts it.
        """
        async with self._reloading:
            batcher = self._batcher
            if batcher is None or not batcher.accepting:
                raise NotReady("not serving: nothing to reload")
            try:
                runner = await asyncio.to_thread(Runner.load, self.settings, self._metrics)
                golden_ok = await batcher.call(golden_check, runner)
            except Exception as exc:  # ArtifactError, DeviceUnavailable, a broken file torch cannot read...
                return self._reload_failed(f"{type(exc).__name__}: {exc}")
            if not golden_ok:
                return self._reload_failed(GOLDEN_FAILED)
            old, self._runner = self._runner, runner
            self._artifact = None  # a restarted lifespan loads the file too; and the old model is referenced nowhere
            manifest = runner.artifact.manifest
            self._metrics.set_model(manifest.name, manifest.version, str(runner.device))
            self._metrics.observe_reload(ok=True)
            was = f"{old.artifact.manifest.version} ({old.artifact.file_sha256[:12]})" if old is not None else "none"
            logger.info(
                "reloaded %s: now %s %s (%s), was %s",
                self.settings.model_path,
                manifest.name,
                manifest.version,
                runner.artifact.file_sha256[:12],
                was,
            )
            return runner

    def _reload_failed(self, reason: str) -> Runner:
        self._metrics.observe_reload(ok=False)
        logger.error("model reload from %s failed, still serving the model loaded before: %s", self.settings.model_path, reason)
        raise ReloadFailed(f"{self.settings.model_path}: {reason}; still serving the model loaded before")

    def reload_soon(self) -> None:
        """Start a reload from any thread, a signal handler included (SIGHUP); its outcome is logged and counted."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, self._reload_quietly())

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ReloadFailed, NotReady):
            await self.reload()

    def _spawn(self, coroutine: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, every: float) -> None:
        """Reload when model_path's modification time or size changes (checked every `every` seconds)."""
        seen = _file_state(self.settings.model_path)
        while True:
            await asyncio.sleep(every)
            now = _file_state(self.settings.model_path)
            if now != seen and now is not None:
                seen = now
                await self._reload_quietly()

    # ---------------------------------------------------------------- lifecycle

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Run `callback()` once when draining begins (at once if it already has)."""
        self._on_drain.append(callback)
        if self._draining:
            callback()

    def add_listener(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Another server taking traffic for this service: `await stop()` once the drain delay has passed.

        `stop()` should stop accepting, finish what it accepted (within
        settings.shutdown_timeout_s) and return; the batcher closes after that.
        """
        self._listeners.append(stop)

    async def start(self) -> None:
        """Load (unless given) and verify the model, start the workers, warm the model up with the golden check."""
        self._draining = False
        self._delay_passed = asyncio.Event()
        self._stopping = None
        self._loop = asyncio.get_running_loop()
        runner = await asyncio.to_thread(Runner.load, self.settings, self._metrics, self._artifact)
        batcher: Batcher[Job, Output] = Batcher(
            process if self.tracing is None else functools.partial(traced_process, self.tracing),  # telemetry hook: batch spans
            self.settings.batch_policy(runner.threads.workers),
            cost=lambda job: len(job.ids),
            key=lambda job: job.batch_key,
            observe=self._observe_batch,
            thread_initializer=functools.partial(init_thread, runner.threads),  # not the runner: it must be freeable
            thread_name="model-worker",
        )
        batcher.start()
        self._golden_ok = await batcher.call(golden_check, runner)
        manifest = runner.artifact.manifest
        self._metrics.track_queue(lambda: batcher.depth)
        self._metrics.set_model(manifest.name, manifest.version, str(runner.device))
        self._runner, self._batcher = runner, batcher
        if self._golden_ok:
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
        if self.settings.model_watch_s:
            self._spawn(self._watch(self.settings.model_watch_s))

    def _observe_batch(self, stats: BatchStats) -> None:
        _, explain = stats.key  # type: ignore[misc]  # Job.batch_key: (runner, explain)
        self._metrics.observe_batch(kind(explain), stats.size, stats.padded_cost, stats.waits, stats.real_cost)

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
        """The end of the shutdown: wait for every listener to finish, then finish every accepted text and stop the workers."""
        self.begin_drain(delay=0)  # a no-op after SIGTERM; a lifespan ended otherwise (tests) drains at once
        assert self._delay_passed is not None
        self._delay_passed.set()  # the HTTP server is done: what is left of the delay is of no use
        if self._stopping is not None:
            await self._stopping
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close()
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


def _file_state(path: os.PathLike[str] | str) -> tuple[int, int] | None:
    """(mtime in ns, size) of the file, None while it is missing (mid-replacement)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def check_api_key(settings: Settings, api_key: str | None) -> None:
    """Unauthorized unless the configured key was presented as the bearer token (compared in constant time)."""
    if settings.api_key is None:
        return
    if api_key is None:
        raise Unauthorized("missing `Authorization: Bearer <key>` header")
    if not hmac.compare_digest(api_key.encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized("invalid API key")


def encode(runner: Runner, texts: Sequence[str], explain: bool, context: RequestContext | None) -> list[Job]:
    """Texts -> jobs for `runner` (its vocabulary, its truncation); spans are computed only for explanations (2.5x the cost)."""
    encoder = runner.predictor.encoder
    assert encoder is not None
    jobs = []
    for text in texts:
        if explain:
            encoded, tokens = encoder.encode_with_spans(text)
        else:
            encoded, tokens = encoder.encode(text), None
        jobs.append(Job(runner, encoded.ids, explain, encoded.n_tokens, encoded.n_unknown, encoded.truncated, tokens, context))
    return jobs


def golden_check(runner: Runner) -> bool:
    """Warm `runner` up on GOLDEN (worker thread only) and say whether it labels both right."""
    ok = True
    for explain in (False, True, False):  # TorchScript's profiling executor optimizes on the first calls
        jobs = encode(runner, [text for text, _ in GOLDEN], explain, None)
        for (_, expected), output in zip(GOLDEN, runner.run_batch(jobs), strict=True):
            ok = ok and (output.p_positive >= 0.5) == bool(expected)
    return ok


def prediction(job: Job, output: Output, labels: tuple[str, str]) -> Prediction:
    """One text's answer: label and score from P(positive), and the explanation's tokens with their spans."""
    explanation = None
    if job.tokens is not None and output.attributions is not None:
        # zip: a text without tokens was encoded as [UNK] and has no token to attribute
        explanation = [Attribution(t.text, t.start, t.end, a) for t, a in zip(job.tokens, output.attributions, strict=False)]
    return Prediction.of(output.p_positive, labels, job.n_tokens, job.truncated, explanation=explanation)
