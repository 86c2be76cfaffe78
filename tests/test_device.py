"""contract/device.py's precision: which route `auto` picks on which hardware (CPU flags and CUDA mocked both ways)."""

from __future__ import annotations

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
