"""contract/device.py's precision: which route `auto` picks on which hardware (CPU flags and CUDA mocked both ways)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contract import device
from contract.device import cpu_flags, has_native_bf16, resolve_precision

X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbugs\t\t: spectre_v1\n"


def fake_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86.format(extra=extra) * 2)  # one block per core
    monkeypatch.setattr(device, "CPUINFO", cpuinfo)


@pytest.mark.parametrize(
    ("extra", "expected"), [("avx512_bf16 avx512_vnni", "bf16"), ("amx_tile amx_bf16", "bf16"), ("avx512_vnni", "fp32")]
)
def test_auto_on_cpu_follows_the_bf16_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str, expected: str) -> None:
    fake_cpu(tmp_path, monkeypatch, extra)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_explicit_precisions_are_kept_whatever_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu(tmp_path, monkeypatch, "")
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # honoured: slower without the hardware, still correct
    fake_cpu(tmp_path, monkeypatch, "avx512_bf16")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_flags_are_read_on_x86_and_arm_and_missing_cpuinfo_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert {"bf16", "i8mm"} <= cpu_flags(arm)
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "absent")
    assert cpu_flags() == frozenset() and not has_native_bf16(torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_asks_for_native_bf16(monkeypatch: pytest.MonkeyPatch, supported: bool, expected: str) -> None:
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert asked == [False]  # emulated bf16 (pre-Ampere GPUs) is slower than fp32: not picked


def test_the_kernel_cache_cap_is_a_default_the_operator_can_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(device.KERNEL_CACHE_ENV, raising=False)
    assert device.cap_kernel_cache() == "8" and os.environ[device.KERNEL_CACHE_ENV] == "8"
    monkeypatch.setenv(device.KERNEL_CACHE_ENV, "64")
    assert device.cap_kernel_cache() == "64"


# Many LSTM shapes (batch x length), as length-homogeneous batching makes them; RSS after, in MiB. The variable is set
# after `import torch`, as the CLIs do, so this also shows that oneDNN reads it at its first primitive, not at import.
SHAPES = """
import os, sys
import torch
os.environ.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
from contract import device
device.cap_kernel_cache(int(sys.argv[1]))
torch.set_num_threads(1)
lstm = torch.nn.LSTM(64, 64, batch_first=True).eval()
with torch.inference_mode():
    for b in (1, 2, 3, 5):
        for t in range(20, 300, 4):
            lstm(torch.randn(b, t, 64))
print(int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20)
"""


def test_the_cap_keeps_memory_from_growing_with_every_new_shape() -> None:
    def rss(capacity: int) -> float:
        env = {k: v for k, v in os.environ.items() if k != device.KERNEL_CACHE_ENV}
        out = subprocess.run([sys.executable, "-c", SHAPES, str(capacity)], capture_output=True, text=True, check=True, env=env)
        return float(out.stdout)

    uncapped, capped = rss(1024), rss(device.KERNEL_CACHE_CAPACITY)  # 280 shapes: all cached vs the last 8
    assert uncapped - capped > 30, (uncapped, capped)
