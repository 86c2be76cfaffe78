"""Save and load the one model file: TorchScript weights + vocab.txt + manifest.json (_extra_files).

The loader verifies everything before a model may serve: the file exists and
is TorchScript, the normalizer version is one this code implements, and the
weights and vocabulary hash to what the manifest says. It also picks the
file's precision route (fp32, or bf16 where the file has one: training/model.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from contract.device import resolve_precision
from contract.manifest import FORMAT_VERSION, Manifest
from contract.text import KNOWN_NORMALIZER_VERSIONS
from contract.vocab import TextEncoder, Vocab

MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.txt"
MODEL_FILE = Path("models") / "sentiment.pt"


def default_model_path() -> Path:
    """`models/sentiment.pt` in the current directory if there, else in the checkout beside this package.

    The second case finds the shipped model whether the package is installed
    editable or run from a checkout, without depending on where it is started.
    """
    local = Path.cwd() / MODEL_FILE
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[1] / MODEL_FILE


class ArtifactError(Exception):
    """The model file is missing, damaged or incompatible; the message says which, in one line."""


@dataclass(frozen=True)
class Artifact:
    module: torch.jit.ScriptModule  # forward(ids LongTensor[B, T], lengths LongTensor[B]) -> P(positive) FloatTensor[B]
    vocab: Vocab
    manifest: Manifest
    file_sha256: str
    precision: str = "fp32"  # the route `module` runs: "fp32" or "bf16" (see `place`)

    @property
    def encoder(self) -> TextEncoder:
        return TextEncoder(self.vocab, self.manifest.max_length, self.manifest.head_length)


def weights_sha256(module: torch.nn.Module) -> str:
    """A digest of every state tensor's name, dtype, shape and bytes, independent of file layout."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(module: torch.jit.ScriptModule, vocab: Vocab, manifest: Manifest, path: Path) -> Manifest:
    """Write the model file; fills in the weight and vocabulary digests and returns the final manifest."""
    if manifest.vocab_size != len(vocab):
        raise ValueError(f"manifest vocab_size {manifest.vocab_size} != vocabulary size {len(vocab)}")
    final = dataclasses.replace(manifest, weights_sha256=weights_sha256(module), vocab_sha256=vocab.sha256())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(tmp), _extra_files={MANIFEST_FILE: final.to_json(), VOCAB_FILE: vocab.to_text()})
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half model under the real name
    return final


def has_bf16_route(module: torch.nn.Module) -> bool:
    """Whether the file's code has the bf16 route (files exported before it do not)."""
    return hasattr(module, "set_precision")


def choose_precision(module: torch.nn.Module, precision: str, device: torch.device) -> str:
    """ "auto" | "fp32" | "bf16" -> the route `module` will run on `device`; "auto" falls back to fp32 on a file without a bf16
    route, an explicit "bf16" is refused there (ArtifactError)."""
    try:
        chosen = resolve_precision(precision, device)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    if chosen == "bf16" and not has_bf16_route(module):
        if precision == "auto":
            return "fp32"
        raise ArtifactError("this model file has no bf16 route: re-export it (python -m training.export --reexport) or use precision fp32")
    return chosen


def place(loaded: Artifact, device: str | torch.device, precision: str) -> Artifact:
    """`loaded` on `device` running `precision` ("auto" | "fp32" | "bf16").

    The module moves in place (as torch's `.to` does); a different precision gets
    a copy of the module, so that other holders of `loaded` keep theirs.
    """
    device = torch.device(device)
    module = loaded.module.to(device)
    chosen = choose_precision(module, precision, device)
    if chosen != loaded.precision:
        module = copy.deepcopy(module)
    if has_bf16_route(module):
        module.set_precision(chosen)  # (re)builds the bf16 weight cache on `device`
    return dataclasses.replace(loaded, module=module, precision=chosen)


def load(path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> Artifact:
    """Load and verify a model file, then move it to `device` and pick its route: precision "fp32" (exact, the default),
    "bf16" or "auto" (`contract.device.resolve_precision`). Raises ArtifactError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    extra = {MANIFEST_FILE: "", VOCAB_FILE: ""}
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but remains the format we ship
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError variants for damaged zips
        raise ArtifactError(
            f"{path} is not a readable TorchScript model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not extra[MANIFEST_FILE] or not extra[VOCAB_FILE]:
        raise ArtifactError(f"{path} carries no {MANIFEST_FILE}/{VOCAB_FILE}; it was not exported by this project")
    try:
        manifest = Manifest.from_json(extra[MANIFEST_FILE])
        vocab = Vocab.from_text(extra[VOCAB_FILE].decode() if isinstance(extra[VOCAB_FILE], bytes) else extra[VOCAB_FILE])
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{path} has an unreadable manifest or vocabulary: {exc}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has artifact format {manifest.format_version}; this code reads format {FORMAT_VERSION}")
    if manifest.normalizer_version not in KNOWN_NORMALIZER_VERSIONS:
        raise ArtifactError(
            f"{path} needs text normalizer version {manifest.normalizer_version!r}; "
            f"this code implements {sorted(KNOWN_NORMALIZER_VERSIONS)}: upgrade the service or re-export the model"
        )
    if len(vocab) != manifest.vocab_size or vocab.sha256() != manifest.vocab_sha256:
        raise ArtifactError(f"{path}: vocabulary does not match its manifest (size or sha256)")
    if weights_sha256(module) != manifest.weights_sha256:
        raise ArtifactError(f"{path}: weights do not match the manifest sha256; the file is damaged or was altered")
    module.eval()
    for parameter in module.parameters():  # serving never trains; explain() differentiates w.r.t. inputs only
        parameter.requires_grad_(False)
    device = torch.device(device)
    module = module.to(device)
    chosen = choose_precision(module, precision, device)
    if has_bf16_route(module):
        module.set_precision(chosen)  # whatever the file was saved with, this loader picks
    return Artifact(module, vocab, manifest, file_sha256(path), chosen)
