"""A generic asyncio micro-batcher: merges concurrent submissions into batches for a few worker threads.

It knows nothing of HTTP or torch: it is given a blocking `process(payloads) ->
results` function and runs it on `workers` dedicated threads (a `BatchPolicy`
says how many, and every other limit below),
so the event loop never blocks on it and at most `workers` batches run at once.

Scheduling is continuous batching without added delay: when a worker is idle
a lone item runs at once; while all are busy, new items accumulate and the
next free worker takes them. What is waiting is split evenly over the free
workers: on a CPU, two batches on one core each beat one batch on two cores,
because the model gains little from intra-op threads (docs/benchmarks.md).
When a worker's share would be below `min_batch_size`, it takes one item.
A batch holds items of one key only (say, plain vs explained predictions), at
most `max_batch_size` of them and at most `max_batch_tokens` padded cost (items x
the costliest item). It always contains the oldest waiting item, so nothing
starves, plus the waiting items closest to it in cost (a window of the
cost-sorted queue), grown only while padded cost stays within `max_batch_padding` x
the items' real cost: a dense forward pays for padding, so when more items
wait than a batch of similar ones holds, the rest wait for the next worker
rather than pad this batch. Items overdue join the next batch ahead of that
rule (oldest first), which bounds how long the cost grouping can hold back an
item of a rare cost. Overdue means older than `max_queue_age_ms` *and* than
`queue_age_factor` x the recent mean wait: under sustained overload every item waits
longer than any fixed age, and a fixed rule alone would turn the queue into
first-in-first-out of mixed lengths (measured: -20 to -24 % throughput at 256 clients,
docs/benchmarks.md); relative to the mean wait it still cuts only the tail.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
logger = logging.getLogger(__name__)
_WAIT_SMOOTHING = 0.1  # weight of the newest batch in the mean wait: about the last 10 batches count


class QueueFull(Exception):
    """Admitting the submission would exceed `max_queue`: the caller should retry later."""


class Closed(Exception):
    """The batcher is draining or stopped and takes no new work."""


class DeadlineExceeded(Exception):
    """The submission was not served within its timeout; its still-waiting items were dropped."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How batches are cut and the queue bounded: built once from the settings (`Settings.batch_policy`).

    The fields are the settings of the same names (their defaults and reasons live
    there, app/config.py); `max_batch_tokens` bounds the padded cost (items x the
    costliest item), whatever `cost` counts.
    """

    max_batch_size: int  # most items per batch
    max_batch_tokens: int  # most padded cost per batch
    max_queue: int  # most items waiting
    workers: int  # batches running at once, each on its own thread
    min_batch_size: int  # fewer waiting per free worker than this: run them one by one
    max_batch_padding: float  # grow a batch only while padded cost <= this x real cost
    max_queue_age_ms: int  # items older than this join the next batch whatever their cost (0 = off)...
    queue_age_factor: float  # ...if they also waited this many times the recent mean wait

    def __post_init__(self) -> None:
        if min(self.max_batch_size, self.max_batch_tokens, self.max_queue, self.workers) < 1:
            raise ValueError("max_batch_size, max_batch_tokens, max_queue and workers must be >= 1")
        if self.max_batch_padding < 1:
            raise ValueError("max_batch_padding must be >= 1 (padded cost is never below real cost)")


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one batch looked like, for metrics."""

    key: Hashable
    size: int
    padded_cost: int  # size x costliest item
    waits: list[float]  # seconds each item spent queued
    real_cost: int = 0  # sum of the items' costs: padded_cost / real_cost is the padding waste


@dataclass(slots=True, eq=False)
class _Item(Generic[T, R]):
    seq: int
    payload: T
    key: Hashable
    cost: int
    enqueued: float
    future: asyncio.Future[R] = field(repr=False)


class Batcher(Generic[T, R]):
    """Bounded queue + `workers` worker threads; `submit` returns results in input order."""

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        policy: BatchPolicy,
        *,
        cost: Callable[[T], int] = lambda _: 1,
        key: Callable[[T], Hashable] = lambda _: None,
        observe: Callable[[BatchStats], None] | None = None,
        thread_initializer: Callable[[], None] | None = None,
        thread_name: str = "batch-worker",
    ) -> None:
        self._process = process
        self._cost = cost
        self._key = key
        self._observe = observe
        self.policy = policy
        self._max_age = policy.max_queue_age_ms / 1000 if policy.max_queue_age_ms else None  # seconds; None = off
        self._mean_wait = 0.0  # seconds, moving average over batches of the waits of the items they took
        self._thread_initializer = thread_initializer
        self._thread_name = thread_name
        self._running: set[asyncio.Task[None]] = set()  # batches on a worker now
        self._waiting: dict[int, _Item[T, R]] = {}  # insertion order = age
        self._reserved = 0  # items admitted by reserve() and not yet submitted
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Items waiting (not yet handed to the worker)."""
        return len(self._waiting)

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._closing

    def start(self) -> None:
        """Start the worker; call from the event loop that will submit."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._executor = ThreadPoolExecutor(
            max_workers=self.policy.workers, thread_name_prefix=self._thread_name, initializer=self._thread_initializer
        )
        self._task = asyncio.get_running_loop().create_task(self._work(), name=self._thread_name)

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run `fn(*args)` on a worker thread (e.g. a warm-up), outside any batch."""
        if self._executor is None:
            raise Closed("batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Stop accepting, finish every item already accepted, then stop the worker threads."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def reserve(self, n: int) -> None:
        """Hold room for `n` items now, or raise Closed / QueueFull: the one admission check.

        Callers that prepare their payloads first (say, encoding texts off the
        event loop) reserve before that work, so work bound to be refused is
        never done, and pass `reserved=True` to `submit`.
        """
        if not self.accepting:
            raise Closed("not accepting work (shutting down)")
        held = len(self._waiting) + self._reserved
        if held + n > self.policy.max_queue:
            raise QueueFull(f"queue holds {held} of {self.policy.max_queue} items; {n} more do not fit")
        self._reserved += n

    def release(self, n: int) -> None:
        """Give back room reserved for `n` items that will not be submitted."""
        self._reserved -= n

    async def submit(self, payloads: Sequence[T], timeout: float | None = None, *, reserved: bool = False) -> list[R]:
        """Queue all payloads (all or none), wait for their results; input order is kept.

        Raises QueueFull or Closed at once (unless `reserve` already admitted
        them), DeadlineExceeded after `timeout` seconds; on any failure or
        cancellation the items still waiting are dropped so they cost neither
        queue space nor model time.
        """
        if not reserved:
            self.reserve(len(payloads))
        self._reserved -= len(payloads)
        if self._closing:  # closing began while the caller prepared its payloads: the worker may be gone
            raise Closed("not accepting work (shutting down)")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(next(self._seq), p, self._key(p), self._cost(p), now, loop.create_future()) for p in payloads]
        for item in items:
            self._waiting[item.seq] = item
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                return list(await asyncio.gather(*(item.future for item in items)))
        except TimeoutError:
            self._drop(items)
            raise DeadlineExceeded(f"not served within {timeout:.3f} s") from None
        except BaseException:
            self._drop(items)
            raise

    def _drop(self, items: list[_Item[T, R]]) -> None:
        for item in items:
            self._waiting.pop(item.seq, None)
            item.future.cancel()  # a no-op when done; results of items already running are discarded

    async def _work(self) -> None:
        while True:
            if len(self._running) >= self.policy.workers:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not self._waiting:
                if self._closing:
                    if self._running:
                        await asyncio.wait(self._running)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            free = self.policy.workers - len(self._running)  # >= 1
            share = math.ceil(len(self._waiting) / free)
            batch = self._take(min(self.policy.max_batch_size, share if share >= self.policy.min_batch_size else 1))
            self._report(batch)
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _report(self, batch: list[_Item[T, R]]) -> None:
        if self._observe is None:
            return
        now = time.monotonic()
        padded = len(batch) * max(i.cost for i in batch)
        stats = BatchStats(batch[0].key, len(batch), padded, [now - i.enqueued for i in batch], sum(i.cost for i in batch))
        try:
            self._observe(stats)
        except Exception:  # a metrics bug must never stop the worker
            logger.exception("batch observer failed")

    def _take(self, limit: int) -> list[_Item[T, R]]:
        """Remove and return the next batch of at most `limit` items of the oldest item's key (see the module docstring)."""
        anchor = next(iter(self._waiting.values()))
        same = [it for it in self._waiting.values() if it.key == anchor.key]  # oldest first
        if len(same) <= limit and self._fits(same, len(same) * max(it.cost for it in same)):
            chosen = same
        elif limit == 1:
            chosen = [anchor]
        else:
            chosen = self._grow(same, self._overdue(same, limit), limit)
        now = time.monotonic()
        for item in chosen:
            del self._waiting[item.seq]
        batch_wait = sum(now - it.enqueued for it in chosen) / len(chosen)
        self._mean_wait += _WAIT_SMOOTHING * (batch_wait - self._mean_wait)
        return chosen

    def _overdue(self, same: list[_Item[T, R]], limit: int) -> list[_Item[T, R]]:
        """The oldest item plus, oldest first, the overdue ones (module docstring), within the cost budget."""
        chosen = [same[0]]
        if self._max_age is None:
            return chosen
        cutoff = time.monotonic() - max(self._max_age, self.policy.queue_age_factor * self._mean_wait)
        top = same[0].cost
        for item in same[1:]:
            if len(chosen) >= limit or item.enqueued > cutoff:
                break
            if (len(chosen) + 1) * max(top, item.cost) <= self.policy.max_batch_tokens:
                chosen.append(item)
                top = max(top, item.cost)
        return chosen

    def _fits(self, items: list[_Item[T, R]], padded: int) -> bool:
        return padded <= self.policy.max_batch_tokens and padded <= self.policy.max_batch_padding * sum(it.cost for it in items)

    def _grow(self, same: list[_Item[T, R]], seed: list[_Item[T, R]], limit: int) -> list[_Item[T, R]]:
        """`seed` plus the waiting items closest in cost to it, while the batch stays within budget and max_padding."""
        taken = {it.seq for it in seed}
        rest = sorted((it for it in same if it.seq not in taken), key=lambda it: (it.cost, it.seq))
        low, high = min(it.cost for it in seed), max(it.cost for it in seed)
        lo = hi = next((i for i, it in enumerate(rest) if it.cost >= low), len(rest))  # rest[:lo] cheaper, rest[hi:] not yet taken
        while hi < len(rest) and rest[hi].cost <= high:  # items inside the seed's cost range pad nothing extra
            hi += 1
        inside = rest[lo:hi]
        n, real = len(seed), sum(it.cost for it in seed)
        chosen = list(seed)
        for item in inside:  # cheapest padding first: those closest to the top cost
            if n >= limit or not self._fits_with(n + 1, high, real + item.cost):
                continue
            chosen.append(item)
            n, real = n + 1, real + item.cost
        lo_i, hi_i = lo - 1, hi
        while n < limit:
            # Padding each choice adds: a cheaper item pads up to `high`; a costlier one raises all n rows.
            left = rest[lo_i] if lo_i >= 0 else None
            right = rest[hi_i] if hi_i < len(rest) else None
            left_waste = high - left.cost if left is not None else None
            right_waste = n * (right.cost - high) if right is not None else None
            if right is not None and (left_waste is None or right_waste < left_waste):  # type: ignore[operator]
                if not self._fits_with(n + 1, right.cost, real + right.cost):
                    break
                chosen.append(right)
                high, hi_i = right.cost, hi_i + 1
                n, real = n + 1, real + right.cost
            elif left is not None:
                if not self._fits_with(n + 1, high, real + left.cost):
                    break
                chosen.append(left)
                lo_i -= 1
                n, real = n + 1, real + left.cost
            else:
                break
        return chosen

    def _fits_with(self, n: int, top: int, real: int) -> bool:
        padded = n * top
        return padded <= self.policy.max_batch_tokens and padded <= self.policy.max_batch_padding * real

    async def _run(self, batch: list[_Item[T, R]]) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._process, [it.payload for it in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"process returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            if len(batch) > 1:  # isolate the culprit: one bad item must not fail its batch-mates
                for item in batch:
                    await self._run([item])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
