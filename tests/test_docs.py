"""GET /docs works offline: Swagger UI comes from an installed package, the page names no other host, and it renders."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.live_server import running_server

ROOT = Path(__file__).resolve().parents[1]
ANY_HOST = re.compile(rb"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
CSS_LOADS_ELSEWHERE = re.compile(rb"(?:url\(\s*['\"]?|@import\s+['\"])(?:https?:)?//", re.IGNORECASE)


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [str(v) for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def page_client() -> Iterator[TestClient]:
    client = TestClient(create_app(Settings(model_path=ROOT / "models" / "sentiment.pt")))  # no `with`: no model needed
    yield client
    client.close()


def test_the_docs_page_names_no_other_host_and_every_asset_it_loads_answers(page_client: TestClient) -> None:
    page = page_client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not ANY_HOST.findall(page.content), "the page must not reach any other host"
    parser = _Assets()
    parser.feed(page.text)
    assert len(parser.urls) >= 3, parser.urls  # script, stylesheet, favicon
    for url in parser.urls:
        assert not urlsplit(url).netloc, url
        asset = page_client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
        if url.endswith(".css"):  # url(...) and @import are what a stylesheet loads (SVG xmlns in data: URIs are names only)
            assert not CSS_LOADS_ELSEWHERE.findall(asset.content), "the stylesheet loads nothing from elsewhere (fonts, images)"
    assert "'/openapi.json'" in page.text and page_client.get("/openapi.json").status_code == 200
    assert '"validatorUrl": null' in page.text, "the online validator badge would call validator.swagger.io"


def test_only_the_bundle_s_own_files_are_served(page_client: TestClient) -> None:
    assert page_client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    for name in ("index.html", "..%2F..%2F__init__.py", "swagger-initializer.js", "nope.js"):
        assert page_client.get(f"/docs/assets/{name}").status_code == 404, name
    assert page_client.get("/docs/oauth2-redirect").status_code == 200
    assert page_client.get("/redoc").status_code == 404, "ReDoc would load from a CDN"
    assert not any(p.startswith("/docs") for p in page_client.get("/openapi.json").json()["paths"])


def test_the_docs_render_their_operations_in_a_browser_with_no_other_host(tiny_model_path: Path, tmp_path: Path, browser: Any) -> None:
    """Swagger UI runs (headless Chromium) and lists the API's operations, loading only from the server itself.

    To refresh docs/docs.png: DOCS_SCREENSHOT=docs/docs.png pytest tests/test_docs.py -k browser
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(tiny_model_path, tmp_path) as (_, port, _):
        base = f"http://127.0.0.1:{port}"
        browser.set_window_size(1200, 1400)
        browser.get(f"{base}/docs")
        WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
        summaries = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        shot = tmp_path / "docs.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        if target := os.environ.get("DOCS_SCREENSHOT"):
            shutil.copyfile(shot, ROOT / target)
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert {"/predict", "/health/ready", "/v2/models/{name}/infer"} <= {s.replace("\u200b", "") for s in summaries}, summaries
    assert loaded and all(urlsplit(url).netloc == f"127.0.0.1:{port}" for url in loaded), loaded
    assert not severe, f"browser console errors: {severe}"
