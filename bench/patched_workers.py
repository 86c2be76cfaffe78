"""Experiment, not the service: `sentiment-serve` with N model worker threads instead of one.

    BENCH_MODEL_WORKERS=2 SENTIMENT_TORCH_THREADS=1 python -m bench.patched_workers --host 127.0.0.1 --port 8000

It patches app.batcher.Batcher in this process only (app/ is untouched) so that up to N batches run at once,
each on its own thread with one torch intra-op thread, and the waiting texts are split evenly over the free
workers. It exists to measure the change proposed in docs/benchmarks.md; bench.serve runs it as target
`workers2` when asked (`--targets service,workers2`).
"""

from __future__ import annotations

import asyncio
import math
import os
from concurrent.futures import ThreadPoolExecutor

from app import batcher as batcher_module
from app.main import cli

WORKERS = int(os.environ.get("BENCH_MODEL_WORKERS", "2"))


def _start(self) -> None:
    if self._task is not None:
        raise RuntimeError("batcher already started")
    self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=self._thread_name)
    self._slots = asyncio.Semaphore(WORKERS)
    self._free = WORKERS
    self._running = set()
    self._task = asyncio.get_running_loop().create_task(self._work(), name=self._thread_name)


async def _work(self) -> None:
    while True:
        if not self._waiting:
            if self._closing:
                if self._running:
                    await asyncio.gather(*self._running, return_exceptions=True)
                return
            self._wakeup.clear()
            await self._wakeup.wait()
            continue
        await self._slots.acquire()
        if not self._waiting:
            self._slots.release()
            continue
        # Split what is waiting evenly over the workers free now (this one included).
        configured = self.max_batch_size
        free = self._free
        self.max_batch_size = max(1, min(configured, math.ceil(len(self._waiting) / max(free, 1))))
        try:
            batch = self._take()
        finally:
            self.max_batch_size = configured
        self._report(batch)
        self._free -= 1
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)

        def done(t: asyncio.Task[None], self=self) -> None:
            self._running.discard(t)
            self._free += 1
            self._slots.release()

        task.add_done_callback(done)


batcher_module.Batcher.start = _start  # type: ignore[method-assign]
batcher_module.Batcher._work = _work  # type: ignore[method-assign]

if __name__ == "__main__":
    cli()
