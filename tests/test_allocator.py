"""The malloc tuning that keeps RSS flat: shown on the allocation pattern of a forward pass, in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RATCHET = """
import sys, torch
from app import allocator
applied = allocator.tune() if sys.argv[1] == "tuned" else False
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
base = rss()
a = torch.empty(2**20); a.fill_(1); del a     # 4 MiB, freed: glibc's default raises its mmap threshold past 1 MiB
xs = [torch.ones(2**18) for _ in range(100)]  # 100 x 1 MiB of activations
keep = xs[-1]; del xs                         # all freed but the last, which pins the heap's top
print(applied, rss() - base)
"""


def retained_mib(mode: str, **env: str) -> tuple[bool, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", RATCHET, mode], capture_output=True, text=True, check=True, env=environ)
    applied, mib = out.stdout.split()
    return applied == "True", float(mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuning_returns_freed_activation_memory_to_the_os() -> None:
    applied, tuned = retained_mib("tuned")
    _, default = retained_mib("default")
    assert applied
    assert default > 50, f"glibc's default kept {default:.0f} MiB (the ratchet this module exists for)"
    assert tuned < 20, f"tuned malloc kept {tuned:.0f} MiB of 100 MiB freed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_an_operators_malloc_variables_win() -> None:
    applied, _ = retained_mib("tuned", MALLOC_ARENA_MAX="4")
    assert not applied
