"""Settings: defaults, SENTIMENT_* parsing, model path resolution, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import app
from app.config import MODEL_FILE, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("SENTIMENT_")]:
        monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.device) == ("0.0.0.0", 8000, "auto")
    assert (settings.max_batch_size, settings.max_queue, settings.max_items_per_request) == (64, 1024, 256)
    assert settings.api_key is None and settings.cors_origins == [] and settings.access_log is False
    assert settings.precision == "auto"  # bf16 where the hardware has it (contract.device.resolve_precision)


def test_every_field_documents_why_it_exists() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 20, name


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_MAX_BATCH_SIZE", "1")
    monkeypatch.setenv("SENTIMENT_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("SENTIMENT_API_KEY", "hunter2")
    monkeypatch.setenv("SENTIMENT_DEVICE", "cpu")
    monkeypatch.setenv("SENTIMENT_PRECISION", "bf16")
    settings = Settings()
    assert settings.max_batch_size == 1 and settings.device == "cpu" and settings.precision == "bf16"
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


def test_an_empty_api_key_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SENTIMENT_DEVICE", "tpu"),
        ("SENTIMENT_PRECISION", "fp16"),
        ("SENTIMENT_MAX_BATCH_SIZE", "0"),
        ("SENTIMENT_PORT", "70000"),
        ("SENTIMENT_MAX_ITEMS_PER_REQUEST", "2000"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_model_path_prefers_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / MODEL_FILE).parent.mkdir(parents=True)
    (tmp_path / MODEL_FILE).touch()
    monkeypatch.chdir(tmp_path)
    assert Settings().model_path == tmp_path / MODEL_FILE


def test_model_path_falls_back_to_the_repository_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().model_path == Path(app.__file__).resolve().parents[1] / MODEL_FILE


def test_model_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_MODEL_PATH", str(tmp_path / "m.pt"))
    assert Settings().model_path == tmp_path / "m.pt"
