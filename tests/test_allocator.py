"""The malloc tuning: at most 2 glibc arenas however many threads allocate, shown in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import running_server

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


JEMALLOC = next(
    (p for p in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2") if os.path.exists(p)), None
)

# 200 MiB in 2 KiB blocks from the heap, all freed but the last (which pins the heap's top, so free() alone cannot
# shrink it): RSS before and after trim().
TRIM = """
import sys
from app import allocator
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
blocks = [bytearray(2048) for _ in range(100_000)]
pin = bytearray(2048)
del blocks
before = rss()
released = allocator.trim()
print(released, before, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_trim_gives_freed_heap_back_to_the_os() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, check=True, env=environ)
    released, before, after = out.stdout.split()
    assert released == "True"
    assert float(before) - float(after) > 100, f"RSS {before} -> {after} MiB"


@pytest.mark.skipif(JEMALLOC is None, reason="libjemalloc2 not installed (apt-get install libjemalloc2)")
def test_under_jemalloc_glibc_tuning_and_trimming_stand_aside() -> None:
    code = "from app import allocator; print(allocator.jemalloc(), allocator.tune(), allocator.trim())"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "LD_PRELOAD": ""})
    preloaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "LD_PRELOAD": str(JEMALLOC)}
    )
    assert plain.stdout.split()[:2] == ["False", "True"]
    assert preloaded.stdout.split() == ["True", "False", "False"]


def test_idle_trim_is_due_once_per_idle_period() -> None:
    from app.allocator import IdleTrim

    trim = IdleTrim(idle_s=1.0)
    assert not trim.due(activity=0, busy=False, now=0.0)  # first sight: counts as activity
    assert not trim.due(activity=5, busy=False, now=0.5)  # requests were served
    assert not trim.due(activity=5, busy=False, now=1.4)  # idle for 0.9 s only
    assert trim.due(activity=5, busy=False, now=1.6)  # idle for 1.1 s: trim
    assert not trim.due(activity=5, busy=False, now=9.0)  # once per idle period
    assert not trim.due(activity=5, busy=True, now=9.5)  # work in progress: a new period begins
    assert not trim.due(activity=5, busy=False, now=10.0)
    assert trim.due(activity=5, busy=False, now=10.6)


def test_the_server_trims_once_idle_and_keeps_serving(tiny_model_path: Path, tmp_path: Path) -> None:
    env = {"SENTIMENT_MALLOC_TRIM_IDLE_MS": "300", "SENTIMENT_LOG_LEVEL": "debug", "SENTIMENT_PROCESSES": "1"}  # trims are per process
    with running_server(tiny_model_path, tmp_path, **env) as (_, port, log):
        for _ in range(3):
            assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["a fine film"]}).status_code == 200
            time.sleep(1.0)  # idle: one trim per pause
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["a fine film"]}).status_code == 200
        trims = [line for line in log.read_text().splitlines() if "idle malloc_trim" in line]
    assert 3 <= len(trims) <= 5, trims  # one per pause, plus start-up and readiness polling at most; never twice in one pause
