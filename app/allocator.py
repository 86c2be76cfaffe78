"""glibc malloc tuning, applied once by `sentiment-serve` before the model allocates anything.

Why: every forward pass allocates and frees tens of MB of LSTM activations,
sized by the batch. By default glibc raises its mmap threshold to the size of
the largest block freed so far (up to 32 MiB), so from then on such buffers
come from the heap, and a heap cannot shrink below its highest live block: RSS
climbs in steps under steady load and never comes back (docs/benchmarks.md,
soak). A fixed threshold keeps big buffers on mmap, returned to the OS on free;
two arenas bound the fragmentation across the worker and encoding threads.
An operator's own MALLOC_* environment variables win; elsewhere than glibc
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed instead of rising
ARENA_MAX = 2


def tune() -> bool:
    """Fix glibc's mmap threshold and cap its arenas; True if applied."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        logger.info("MALLOC_* set in the environment: malloc left as configured there")
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
