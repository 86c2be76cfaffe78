"""Shared fixtures: one tiny real model per session, and apps served in-process (lifespan included)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from contract import artifact as artifact_io
from contract.artifact import Artifact
from tests import tiny_model

# The test machine's cores are shared (training may run beside the tests): one intra-op thread
# avoids spinning threads that slow tiny forward passes down by an order of magnitude.
torch.set_num_threads(1)

ServeFactory = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient, FastAPI]]]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_model_path: Path) -> Artifact:
    return artifact_io.load(tiny_model_path, "cpu")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings for the tiny model on CPU; keyword arguments override fields. SENTIMENT_* from the shell are ignored.

    Precision fp32 unless asked: "auto" would pick bf16 on some CPUs only, and the tests compare exact probabilities.
    """
    import os

    for name in [n for n in os.environ if n.startswith("SENTIMENT_")]:
        monkeypatch.delenv(name)

    def make(**overrides: Any) -> Settings:
        return Settings(**{"model_path": tiny_model_path, "device": "cpu", "torch_threads": 1, "precision": "fp32", **overrides})

    return make


@pytest.fixture
def serve(make_settings: Callable[..., Settings], tiny_artifact: Artifact) -> ServeFactory:
    """`async with serve(**settings) as (client, app)`: an app with its lifespan running and an httpx client on it.

    The already loaded tiny artifact is reused (loading is tested on its own), so each app starts in ~0.1 s.
    """

    @asynccontextmanager
    async def open_app(*, load: bool = False, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
        app = create_app(make_settings(**overrides), artifact=None if load else tiny_artifact)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client, app

    return open_app


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian chromium driven by Selenium; skips, saying why, without chromium/chromedriver."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(
            f"headless browser test needs chromium + chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
