"""The malloc tuning: at most 2 glibc arenas however many threads allocate, shown in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Eight threads allocate while all are alive (glibc gives each an arena of its own by default), then
# malloc_info's XML, which has one <heap nr=...> element per arena, is counted.
ARENAS = """
import ctypes, ctypes.util, sys, tempfile, threading
from app import allocator
applied = allocator.tune() if sys.argv[1] == "tuned" else False
barrier = threading.Barrier(8)
def work():
    held = bytearray(1 << 16)
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile("r") as out:
    fp = ctypes.c_void_p(libc.fopen(out.name.encode(), b"w"))
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(applied, out.read().count("<heap nr="))
"""


def arenas(mode: str, **env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True, env=environ)
    applied, count = out.stdout.split()
    return applied == "True", int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuning_caps_the_arenas_threads_get() -> None:
    applied, tuned = arenas("tuned")
    _, default = arenas("default")
    assert applied
    assert default > 2, f"glibc's default gave {default} arenas to 8 threads (what this module caps)"
    assert tuned <= 2, f"tuned malloc still has {tuned} arenas"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_an_operators_malloc_variables_win() -> None:
    applied, count = arenas("tuned", MALLOC_ARENA_MAX="4")
    assert not applied
    assert count == 4  # glibc read the operator's variable; tune() left it alone
