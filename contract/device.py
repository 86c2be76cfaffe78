"""Where inference runs: the device, its precision, and how many batches run at once on how many torch threads.

Shared by the service's runner and bulk scoring, so `--threads/--workers` and
`--precision` mean the same in both and one measurement decides the defaults for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")  # the model's routes (training/model.py); "auto" resolves to one of them
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of CPUs with native bf16 dot products
CPUINFO = Path("/proc/cpuinfo")
MAX_AUTO_WORKERS = 4  # beyond this, more threads per batch rather than more batches (untested past 2 cores)

# oneDNN compiles and keeps one LSTM primitive per input shape (batch x length), up to 1,024 by default. Length-
# homogeneous batching makes thousands of shapes, so that cache was the service's RSS creep under overload: with
# jemalloc, 323 MiB at ready -> 594 after 8 rounds of 256 clients, 564 after 30 s idle; capped at 8, 335 after idle
# at the same throughput (`python -m bench.memory`, docs/benchmarks.md). Compiling a primitive again costs far less
# than a batch's forward.
KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
KERNEL_CACHE_CAPACITY = 8


class DeviceUnavailable(Exception):
    """The configured device cannot be used (e.g. `cuda` on a machine without a GPU)."""


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """How many batches run at once (`workers`) and with how many torch intra-op threads each."""

    workers: int
    torch_threads: int  # 0 = leave torch's default


def cap_kernel_cache(capacity: int = KERNEL_CACHE_CAPACITY) -> str:
    """Cap oneDNN's primitive cache unless the operator set it; -> the value in force.

    oneDNN reads the variable when it builds its first primitive, so this works after `import torch` and must run
    before the first forward (the serve and score CLIs call it before loading the model).
    """
    return os.environ.setdefault(KERNEL_CACHE_ENV, str(capacity))


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_threads(device: torch.device, workers: int = 0, torch_threads: int = 0, cores: int | None = None) -> ThreadPlan:
    """Resolve the `0 = auto` settings.

    On CPU one batch per core, each on one intra-op thread, measured 1.4x the
    throughput of one batch over two threads on the 2-core dev box (the LSTM is
    a chain of small matmuls that parallelises poorly). On CUDA one worker: the
    GPU is the bottleneck and one stream keeps its order simple.
    """
    cores = cores if cores is not None else available_cores()
    if device.type != "cpu":
        return ThreadPlan(workers or 1, torch_threads)
    workers = workers or max(1, min(cores, MAX_AUTO_WORKERS))
    return ThreadPlan(workers, torch_threads or max(1, cores // workers))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device 'cuda' requested but CUDA is not available (use device cpu or auto: SENTIMENT_DEVICE, --device)")
    return torch.device(name)


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, arm64
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here: AVX512-BF16 or AMX on CPU, bf16 tensor cores on CUDA (not emulation).

    torch.backends.cpu.get_cpu_capability() stops at "AVX512", which does not say bf16, hence the flags.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_flags() & BF16_CPU_FLAGS)


def resolve_precision(name: str, device: torch.device) -> str:
    """ "auto" -> "bf16" where the device has native bf16, else "fp32"; "fp32"/"bf16" are kept (bf16 runs anywhere, slowly
    without hardware support)."""
    if name == "auto":
        return "bf16" if has_native_bf16(device) else "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"precision must be auto, {' or '.join(PRECISIONS)}, not {name!r}")
    return name
