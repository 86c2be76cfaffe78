"""The model file format: round trip, and every way a file can be refused."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest
import torch

from contract import artifact
from contract.artifact import ArtifactError
from contract.manifest import Manifest
from contract.predictor import pad_batch
from tests import tiny_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build(tmp_path_factory.mktemp("artifact") / "tiny.pt")


def _resave(src: Path, dst: Path, manifest: str | None = None, vocab: str | None = None, tamper: bool = False) -> Path:
    extra = {artifact.MANIFEST_FILE: "", artifact.VOCAB_FILE: ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    if tamper:
        with torch.no_grad():
            module.head.bias.add_(0.5)
    files = {artifact.MANIFEST_FILE: manifest or extra[artifact.MANIFEST_FILE], artifact.VOCAB_FILE: vocab or extra[artifact.VOCAB_FILE]}
    torch.jit.save(module, str(dst), _extra_files=files)
    return dst


def test_round_trip_carries_vocab_manifest_and_hashes(model_file: Path) -> None:
    loaded = artifact.load(model_file)
    assert loaded.manifest.name == "tiny-test-model"
    assert loaded.manifest.vocab_size == len(loaded.vocab)
    assert loaded.manifest.weights_sha256 == artifact.weights_sha256(loaded.module)
    assert loaded.file_sha256 == artifact.file_sha256(model_file)
    good = float(loaded.module(*pad_batch([loaded.encoder.encode("wonderful, loved it").ids]))[0])
    bad = float(loaded.module(*pad_batch([loaded.encoder.encode("awful boring waste").ids]))[0])
    assert good > 0.5 > bad


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        artifact.load(tmp_path / "nope.pt")


def test_not_torchscript(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ArtifactError, match="not a readable TorchScript"):
        artifact.load(junk)


def test_truncated_file(model_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(ArtifactError):
        artifact.load(cut)


def test_altered_weights_are_refused(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="weights do not match"):
        artifact.load(_resave(model_file, tmp_path / "tampered.pt", tamper=True))


def test_unknown_normalizer_version_is_refused(model_file: Path, tmp_path: Path) -> None:
    manifest = dataclasses.replace(artifact.load(model_file).manifest, normalizer_version="99")
    with pytest.raises(ArtifactError, match="normalizer version '99'"):
        artifact.load(_resave(model_file, tmp_path / "future.pt", manifest=manifest.to_json()))


def test_vocab_not_matching_manifest_is_refused(model_file: Path, tmp_path: Path) -> None:
    loaded = artifact.load(model_file)
    other = loaded.vocab.to_text().replace("wonderful", "wunderbar")
    with pytest.raises(ArtifactError, match="vocabulary does not match"):
        artifact.load(_resave(model_file, tmp_path / "vocab.pt", vocab=other))


def test_plain_torchscript_without_contract_files_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), str(plain))
    with pytest.raises(ArtifactError, match="carries no manifest"):
        artifact.load(plain)


def test_manifest_json_round_trip_and_unknown_fields() -> None:
    m = Manifest("n", "1", ("negative", "positive"), 10, 5, 2, "1", metrics={"a": 1.0})
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(ValueError, match="unknown manifest fields"):
        Manifest.from_json(m.to_json().replace('"name"', '"nom"'))


def test_file_is_a_zip_with_the_contract_files(model_file: Path) -> None:
    names = zipfile.ZipFile(model_file).namelist()
    assert any(n.endswith("extra/manifest.json") for n in names)
    assert any(n.endswith("extra/vocab.txt") for n in names)


class _Legacy(torch.nn.Module):
    """A file exported before the bf16 route: a forward, no set_precision."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, 4)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.embedding(ids).sum((1, 2)))


def _fake_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str) -> None:
    from contract import device

    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: fpu avx2 {flags}\n")
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "cpuinfo")


@pytest.mark.parametrize(("flags", "expected"), [("avx512_bf16", "bf16"), ("", "fp32")])
def test_load_picks_the_route_and_auto_follows_the_cpu(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, expected: str
) -> None:
    _fake_cpu(tmp_path, monkeypatch, flags)
    assert artifact.load(model_file).precision == "fp32"  # the default stays exact
    loaded = artifact.load(model_file, precision="auto")
    assert loaded.precision == loaded.module.precision == expected
    assert artifact.weights_sha256(loaded.module) == loaded.manifest.weights_sha256  # verified the same in either route
    with pytest.raises(ArtifactError, match="precision must be auto, fp32 or bf16"):
        artifact.load(model_file, precision="int8")


def test_place_switches_precision_on_a_copy(model_file: Path) -> None:
    fp32 = artifact.load(model_file)
    x, lengths = pad_batch([fp32.encoder.encode("a wonderful film, loved it").ids, fp32.encoder.encode("dull").ids])
    bf16 = artifact.place(fp32, "cpu", "bf16")
    assert (bf16.precision, bf16.module.precision) == ("bf16", "bf16")
    assert fp32.module is not bf16.module and fp32.module.precision == "fp32"  # other holders keep their route
    with torch.inference_mode():
        assert 0 < float((bf16.module(x, lengths) - fp32.module(x, lengths)).abs().max()) < 2e-2
    assert artifact.place(bf16, "cpu", "bf16").module is bf16.module  # same route: no copy


def test_a_file_without_the_bf16_route_serves_fp32_on_auto_and_refuses_bf16(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = artifact.load(model_file)
    legacy = tmp_path / "legacy.pt"
    artifact.save(torch.jit.script(_Legacy(len(loaded.vocab))), loaded.vocab, loaded.manifest, legacy)
    _fake_cpu(tmp_path, monkeypatch, "amx_bf16")
    assert artifact.load(legacy, precision="auto").precision == "fp32"
    with pytest.raises(ArtifactError, match="no bf16 route: re-export it"):
        artifact.load(legacy, precision="bf16")
