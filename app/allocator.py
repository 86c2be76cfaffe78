"""glibc malloc tuning, applied once by `sentiment-serve` before the model allocates anything: at most 2 arenas.

Why: glibc gives every thread that allocates while others are alive an arena
of its own (up to 8 per core), and each keeps what its thread freed. The
service's threads (event loop, model workers, encoding helpers) each free tens
of MB of activations per batch. Same build, 10-minute soaks at 70 % of
capacity: 2 arenas plateau at 481 MiB (peak 507), glibc's 16 at 511 (peak
553); both flat (-0.5 % and +0.6 %, docs/benchmarks.md).

Not done any more: a fixed mmap threshold (128 KiB; 2 MiB tried too). It
kept RSS lowest, but every batch's activations then came from fresh mmap
pages, and faulting them in cost 8-10 % throughput (back-to-back `bench.serve`
runs at 64 clients: 184 req/s vs 202 with the arena cap alone).

An operator's own MALLOC_* environment variables win; elsewhere than glibc,
and under jemalloc (preloaded with LD_PRELOAD, as the Docker image does), this
is a no-op: jemalloc has its own arenas and returns memory by itself.

Two more candidates against RSS creep under long overload (issue 30), each
behind a switch so they can be measured side by side:

- `trim()`: glibc's malloc_trim(0), which hands freed pages inside the heap
  back to the OS (free() alone only gives back the top of each arena).
  `IdleTrim` decides when: once the service has been idle for
  SENTIMENT_MALLOC_TRIM_IDLE_MS, at most once per idle period; the server runs
  it on a thread, since trimming a large heap takes milliseconds.
- jemalloc: the image installs Debian's libjemalloc2 and preloads it
  (`LD_PRELOAD=`, empty, turns it off). For a pip install:
  `apt-get install libjemalloc2` then
  `LD_PRELOAD=/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2 sentiment-serve`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENA_MAX = 2


def jemalloc() -> bool:
    """Whether jemalloc is the process's malloc (preloaded): its `mallctl` is then in the global namespace."""
    try:
        return hasattr(ctypes.CDLL(None), "mallctl")
    except OSError:
        return False


def tune() -> bool:
    """Cap glibc's arenas at ARENA_MAX; True if applied."""
    if jemalloc():
        logger.info("jemalloc is preloaded: glibc malloc tuning skipped")
        return False
    if any(name.startswith("MALLOC_") and name != "MALLOC_CONF" for name in os.environ):  # MALLOC_CONF is jemalloc's
        logger.info("MALLOC_* set in the environment: malloc left as configured there")
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(M_ARENA_MAX, ARENA_MAX))


def trim() -> bool:
    """glibc's malloc_trim(0): give freed heap pages back to the OS; True if some were. False under jemalloc or off glibc."""
    if jemalloc():
        return False
    try:
        malloc_trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    return bool(malloc_trim(0))


class IdleTrim:
    """When to trim: `idle_s` after the last activity, once, then not again until there was activity."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._activity: object = None
        self._last_activity = 0.0
        self._due = False  # there was activity since the last trim

    def due(self, activity: object, busy: bool, now: float) -> bool:
        """Called on every tick: `activity` changes with each request served, `busy` says work is in progress."""
        if busy or activity != self._activity:
            self._activity = activity
            self._last_activity = now
            self._due = True
            return False
        if self._due and now - self._last_activity >= self.idle_s:
            self._due = False
            return True
        return False
