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

An operator's own MALLOC_* environment variables win; elsewhere than glibc
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENA_MAX = 2


def tune() -> bool:
    """Cap glibc's arenas at ARENA_MAX; True if applied."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        logger.info("MALLOC_* set in the environment: malloc left as configured there")
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(M_ARENA_MAX, ARENA_MAX))
