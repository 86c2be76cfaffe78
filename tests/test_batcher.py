"""The micro-batcher on its own, with fake process functions (no torch, no HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence

import pytest

from app.batcher import Batcher, BatchPolicy, BatchStats, Closed, DeadlineExceeded, QueueFull

pytestmark = pytest.mark.anyio


class Worker:
    """A process function that records its batches and can hold the worker on a gate."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, items: list[str]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if "block" in items:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot process {self.fail_on!r}")
        return [item.upper() for item in items]


# No padding cap, no age rule, one worker: each test turns on what it is about.
NEUTRAL = {"workers": 1, "min_batch_size": 1, "max_batch_padding": float("inf"), "max_queue_age_ms": 0, "queue_age_factor": 0.0}


def policy(**fields: object) -> BatchPolicy:
    return BatchPolicy(**{**NEUTRAL, **fields})  # type: ignore[arg-type]


def make(worker: Worker, **kwargs: object) -> Batcher[str, str]:
    """A batcher for `worker`; BatchPolicy fields and Batcher keywords (cost, key, observe) both go in `kwargs`."""
    fields: dict[str, object] = {"max_batch_size": 8, "max_batch_tokens": 10_000, "max_queue": 64}
    options: dict[str, object] = {"cost": len}
    for name, value in kwargs.items():
        (fields if name in BatchPolicy.__dataclass_fields__ else options)[name] = value
    return Batcher(worker, policy(**fields), **options)  # type: ignore[arg-type]


async def until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.002)


async def hold_worker(batcher: Batcher[str, str], worker: Worker) -> asyncio.Task[list[str]]:
    """Occupy the worker with a 'block' item until worker.gate is set."""
    worker.gate.clear()
    task = asyncio.create_task(batcher.submit(["block"]))
    await until(lambda: ["block"] in worker.batches)
    return task


async def test_a_lone_item_runs_at_once_on_one_dedicated_thread() -> None:
    worker = Worker()
    batcher = make(worker)
    batcher.start()
    started = time.monotonic()
    assert await batcher.submit(["abc"]) == ["ABC"]
    assert time.monotonic() - started < 1.0
    assert await batcher.submit(["de", "f"]) == ["DE", "F"]
    await batcher.close()
    assert worker.batches == [["abc"], ["de", "f"]]
    assert len(worker.threads) == 1 and threading.current_thread().name not in worker.threads


async def test_concurrent_submissions_merge_while_the_worker_is_busy_and_keep_order() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=64)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    requests = [[f"r{i}a", f"r{i}b"] for i in range(10)]
    tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
    await until(lambda: batcher.depth == 20)
    worker.gate.set()
    results = await asyncio.gather(*tasks)
    assert results == [[t.upper() for t in r] for r in requests]
    assert await blocker == ["BLOCK"]
    assert len(worker.batches) == 2, "the 10 waiting requests share one batch"
    await batcher.close()


async def test_a_second_worker_serves_while_the_first_is_busy() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=64, workers=2)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    assert await asyncio.wait_for(batcher.submit(["a", "b"]), 5) == ["A", "B"], "served while the first worker is held"
    assert not blocker.done()
    worker.gate.set()
    assert await blocker == ["BLOCK"]
    await batcher.close()
    assert len(worker.threads) == 2


async def test_the_waiting_items_are_split_over_the_free_workers() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=64, workers=2)
    batcher.start()
    texts = [f"t{i}" for i in range(10)]
    assert await batcher.submit(texts) == [t.upper() for t in texts]  # all 10 wait before either worker takes any
    await batcher.close()
    assert [len(b) for b in worker.batches] == [5, 5], "10 waiting items, 2 free workers: 5 each"


async def test_batches_respect_item_and_cost_limits() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=3, max_batch_tokens=8)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    texts = ["aa", "bb", "cc", "dd", "eeee", "ffff", "g"]
    task = asyncio.create_task(batcher.submit(texts))
    await until(lambda: batcher.depth == len(texts))
    worker.gate.set()
    assert await task == [t.upper() for t in texts]
    await blocker
    for batch in worker.batches[1:]:
        assert len(batch) <= 3
        assert len(batch) * max(map(len, batch)) <= 8
    assert sorted(t for b in worker.batches[1:] for t in b) == sorted(texts)
    await batcher.close()


async def test_a_batch_takes_the_oldest_item_and_its_closest_lengths() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=3)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    texts = ["x" * 5, "y" * 100, "z" * 6, "w" * 101, "v" * 7, "u" * 99]
    tasks = [asyncio.create_task(batcher.submit([t])) for t in texts]
    await until(lambda: batcher.depth == len(texts))
    worker.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [sorted(map(len, b)) for b in worker.batches[1:]] == [[5, 6, 7], [99, 100, 101]]
    await batcher.close()


async def test_below_min_batch_size_items_run_one_by_one_and_above_it_they_batch() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=64, min_batch_size=4)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    few = [asyncio.create_task(batcher.submit([f"f{i}"])) for i in range(3)]
    await until(lambda: batcher.depth == 3)
    worker.gate.set()
    await asyncio.gather(blocker, *few)
    assert worker.batches[1:] == [["f0"], ["f1"], ["f2"]], "3 waiting < 4: one by one"
    worker.batches.clear()
    blocker = await hold_worker(batcher, worker)
    many = [asyncio.create_task(batcher.submit([f"m{i}"])) for i in range(5)]
    await until(lambda: batcher.depth == 5)
    worker.gate.set()
    await asyncio.gather(blocker, *many)
    assert sorted(worker.batches[1]) == [f"m{i}" for i in range(5)], "5 waiting >= 4: one batch"
    await batcher.close()


async def test_items_with_different_keys_never_share_a_batch() -> None:
    worker = Worker()
    key_of: dict[str, Hashable] = {"block": "a", "p1": "a", "p2": "a", "e1": "b", "e2": "b"}
    batcher = make(worker, key=key_of.__getitem__)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    tasks = [asyncio.create_task(batcher.submit([t])) for t in ("p1", "e1", "p2", "e2")]
    await until(lambda: batcher.depth == 4)
    worker.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [sorted(b) for b in worker.batches[1:]] == [["p1", "p2"], ["e1", "e2"]]
    await batcher.close()


async def test_max_batch_size_one_turns_batching_off() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=1)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    tasks = [asyncio.create_task(batcher.submit([f"t{i}", f"u{i}"])) for i in range(4)]
    await until(lambda: batcher.depth == 8)
    worker.gate.set()
    assert await asyncio.gather(*tasks) == [[f"T{i}", f"U{i}"] for i in range(4)]
    await blocker
    assert all(len(b) == 1 for b in worker.batches)
    assert len(worker.batches) == 9
    await batcher.close()


async def test_a_full_queue_refuses_at_once_and_admits_all_or_nothing() -> None:
    worker = Worker()
    batcher = make(worker, max_queue=3)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    waiting = asyncio.create_task(batcher.submit(["a", "b"]))
    await until(lambda: batcher.depth == 2)
    started = time.monotonic()
    with pytest.raises(QueueFull):
        await batcher.submit(["c", "d"])
    assert time.monotonic() - started < 0.5
    assert batcher.depth == 2, "a refused submission leaves nothing behind"
    worker.gate.set()
    assert await waiting == ["A", "B"]
    await blocker
    assert await batcher.submit(["c", "d"]) == ["C", "D"]
    await batcher.close()


async def test_a_deadline_drops_the_items_still_waiting() -> None:
    worker = Worker()
    batcher = make(worker)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(["late"], timeout=0.05)
    assert batcher.depth == 0
    worker.gate.set()
    await blocker
    await batcher.close()
    assert all("late" not in b for b in worker.batches), "an expired item never reaches the model"


async def test_a_cancelled_submission_frees_its_queue_space() -> None:
    worker = Worker()
    batcher = make(worker)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    task = asyncio.create_task(batcher.submit(["gone", "too"]))
    await until(lambda: batcher.depth == 2)
    task.cancel()  # what a client disconnect does to its request task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.depth == 0
    worker.gate.set()
    await blocker
    await batcher.close()
    assert all("gone" not in b for b in worker.batches)


async def test_one_bad_item_fails_alone() -> None:
    worker = Worker(fail_on="bad")
    batcher = make(worker)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    good = [asyncio.create_task(batcher.submit([f"ok{i}"])) for i in range(3)]
    bad = asyncio.create_task(batcher.submit(["bad"]))
    await until(lambda: batcher.depth == 4)
    worker.gate.set()
    assert await asyncio.gather(*good) == [["OK0"], ["OK1"], ["OK2"]]
    with pytest.raises(ValueError, match="bad"):
        await bad
    await blocker
    await batcher.close()


async def test_close_finishes_every_accepted_item_then_refuses_new_ones() -> None:
    worker = Worker()
    batcher = make(worker, max_batch_size=2)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    tasks = [asyncio.create_task(batcher.submit([f"t{i}"])) for i in range(5)]
    await until(lambda: batcher.depth == 5)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    assert not batcher.accepting
    with pytest.raises(Closed):
        await batcher.submit(["new"])
    worker.gate.set()
    await closing
    assert await asyncio.gather(*tasks) == [[f"T{i}"] for i in range(5)]
    await blocker


async def test_observer_sees_batch_size_padded_cost_and_waits() -> None:
    seen: list[BatchStats] = []
    worker = Worker()
    batcher = make(worker, observe=seen.append)
    batcher.start()
    blocker = await hold_worker(batcher, worker)
    task = asyncio.create_task(batcher.submit(["a", "bbb"]))
    await until(lambda: batcher.depth == 2)
    await asyncio.sleep(0.02)
    worker.gate.set()
    await asyncio.gather(blocker, task)
    await batcher.close()
    last = seen[-1]
    assert (last.size, last.padded_cost, last.real_cost) == (2, 6, 4)
    assert len(last.waits) == 2 and min(last.waits) >= 0.02


async def test_results_must_match_the_batch() -> None:
    def broken(items: Sequence[str]) -> list[str]:
        return []

    batcher: Batcher[str, str] = Batcher(broken, policy(max_batch_size=4, max_batch_tokens=100, max_queue=4))
    batcher.start()
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        await batcher.submit(["x"])
    await batcher.close()


async def _batches_after_hold(batcher: Batcher[str, str], worker: Worker, texts: list[str], pause_after: int = -1) -> list[list[str]]:
    """Hold the worker, queue `texts` one request each (pausing 50 ms after index `pause_after`), release; -> batches run."""
    blocker = await hold_worker(batcher, worker)
    tasks = []
    for i, text in enumerate(texts):
        tasks.append(asyncio.create_task(batcher.submit([text])))
        await until(lambda n=i + 1: batcher.depth == n)
        if i == pause_after:
            await asyncio.sleep(0.05)
    worker.gate.set()
    await asyncio.gather(blocker, *tasks)
    return worker.batches[1:]


async def test_padding_cap_cuts_batches_of_similar_cost_instead_of_one_mixed_batch() -> None:
    texts = ["a" * 10, "b" * 2, "c" * 9, "d" * 2, "e" * 10]
    uncapped = make(Worker(), max_batch_size=64)
    uncapped.start()
    assert len(await _batches_after_hold(uncapped, uncapped._process, texts)) == 1  # type: ignore[arg-type]
    await uncapped.close()
    worker = Worker()
    capped = make(worker, max_batch_size=64, max_batch_padding=1.2)
    capped.start()
    batches = await _batches_after_hold(capped, worker, texts)
    assert [sorted(b) for b in batches] == [sorted(["a" * 10, "c" * 9, "e" * 10]), ["bb", "dd"]]  # the oldest's group first
    for batch in batches:
        assert len(batch) * max(map(len, batch)) <= 1.2 * sum(map(len, batch))
    await capped.close()


async def test_items_older_than_max_age_join_the_next_batch_despite_the_padding_cap() -> None:
    texts = ["a" * 10, "b" * 2, "c" * 10]  # "bb" waits 50 ms before "c..." arrives
    young = make(Worker(), max_batch_size=64, max_batch_padding=1.2, max_queue_age_ms=1000)
    young.start()
    assert [sorted(b) for b in await _batches_after_hold(young, young._process, texts, pause_after=1)] == [  # type: ignore[arg-type]
        ["a" * 10, "c" * 10],
        ["bb"],
    ]
    await young.close()
    worker = Worker()
    old = make(worker, max_batch_size=64, max_batch_padding=1.2, max_queue_age_ms=20)
    old.start()
    assert [sorted(b) for b in await _batches_after_hold(old, worker, texts, pause_after=1)] == [["a" * 10, "bb"], ["c" * 10]]
    await old.close()


async def test_under_sustained_waits_only_items_past_age_factor_x_the_mean_wait_are_overdue() -> None:
    """Past a long wait (overload), a fixed max_age would mark every item overdue and batch them FIFO, mixed."""
    worker = Worker()
    relative = make(worker, max_batch_size=64, max_batch_padding=1.2, max_queue_age_ms=20, queue_age_factor=2.0)
    relative.start()
    blocker = await hold_worker(relative, worker)
    backlog = asyncio.create_task(relative.submit(["x" * 5] * 4))
    await until(lambda: relative.depth == 4)
    await asyncio.sleep(1.5)  # the backlog waits 1.5 s: the mean wait is now >= ~0.13 s
    worker.gate.set()
    await asyncio.gather(blocker, backlog)
    texts = ["a" * 10, "b" * 2, "c" * 10]  # "bb" waits ~50 ms: past max_age, far below 2 x the mean wait
    batches = await _batches_after_hold(relative, worker, texts, pause_after=1)
    assert [sorted(b) for b in batches[-2:]] == [["a" * 10, "c" * 10], ["bb"]]
    await relative.close()


def test_max_padding_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_padding"):
        make(Worker(), max_batch_padding=0.9)


async def test_reserved_room_counts_until_submitted_or_released() -> None:
    """The one admission check: room reserved before the caller's own work (encoding) is held for it."""
    worker = Worker()
    batcher = make(worker, max_queue=3)
    batcher.start()
    batcher.reserve(2)
    with pytest.raises(QueueFull, match="holds 2 of 3"):
        batcher.reserve(2)  # nothing waits yet, but 2 places are promised
    assert await batcher.submit(["a", "b"], reserved=True) == ["A", "B"]
    batcher.reserve(3)  # submitted: the room is free again
    batcher.release(3)
    batcher.reserve(1)
    await batcher.close()
    with pytest.raises(Closed):
        await batcher.submit(["c"], reserved=True)  # closing began while the caller prepared its payloads
    with pytest.raises(Closed):
        batcher.reserve(1)
