"""The browser demo page at GET /: served offline (no CDN), and it really works in a headless Chromium.

The in-process tests need nothing but the app. The browser tests start the
real server (`sentiment-serve`) on a tiny model and drive Debian's chromium
with Selenium; they skip, saying why, where chromium/chromedriver are missing.
To refresh the README's screenshot with the shipped model:
    DEMO_MODEL=models/sentiment.pt DEMO_SCREENSHOT=docs/demo.png pytest tests/test_demo_page.py -k highlights
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "app" / "static"
EXTERNAL_URL = re.compile(r"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)  # http(s):// or protocol-relative //host.tld


# ---------------------------------------------------------------- in process: the page and its assets


class _Page(HTMLParser):
    """Collects ids, tags with attributes, links and asset references."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: dict[str, tuple[str, dict[str, str | None]]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("id"):
            self.elements[str(attributes["id"])] = (tag, attributes)

    def hrefs(self) -> list[str]:
        return [str(a["href"]) for t, a in self.tags if t == "a" and a.get("href")]

    def assets(self) -> list[str]:
        return [str(a[k]) for t, a in self.tags for k in ("src", "href") if t in ("script", "link", "img") and a.get(k)]


@pytest.fixture(scope="module")
def page_client() -> Iterator[TestClient]:
    # No `with`: the lifespan (model loading) does not run; the page needs no model.
    client = TestClient(create_app(Settings(model_path=ROOT / "models" / "sentiment.pt")))
    yield client
    client.close()


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_index_serves_the_form_and_links(page_client: TestClient) -> None:
    response = page_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = parse(response.text)
    assert page.elements["form"][0] == "form"
    assert page.elements["text"][0] == "textarea"
    assert any(t == "label" and a.get("for") == "text" for t, a in page.tags), "the text box has no <label>"
    assert page.elements["submit"][0] == "button" and page.elements["submit"][1].get("type") == "submit"
    examples = [a for t, a in page.tags if t == "button" and "example" in str(a.get("class", "")).split()]
    assert len(examples) >= 3 and all(a.get("data-text") for a in examples), "expected clickable example reviews"
    for needed in ("result", "label", "bar", "highlight", "latency"):
        assert needed in page.elements, f"no #{needed} in the page"
    assert page.elements["error"][1].get("role") == "alert", "errors must be announced to screen readers"
    assert "/docs" in page.hrefs() and "/model" in page.hrefs()


def test_index_is_offline_and_locked_down(page_client: TestClient) -> None:
    response = page_client.get("/")
    page = parse(response.text)
    assets = page.assets()
    assert assets, "the page references no script/stylesheet"
    texts = {"/": response.text}
    for ref in assets:
        if ref.startswith("data:"):
            continue
        assert ref.startswith("/") and not ref.startswith("//"), f"asset {ref!r} is not served by this service"
        asset = page_client.get(ref)
        assert asset.status_code == 200, ref
        assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "text/css"), ref
        texts[ref] = asset.text
    assert any(ref.endswith(".js") for ref in assets) and any(ref.endswith(".css") for ref in assets)
    for name, text in texts.items():
        assert not EXTERNAL_URL.search(text), f"{name} refers to an external URL: {EXTERNAL_URL.search(text)}"
        assert "@import" not in text, f"{name} imports other stylesheets"
    # The browser enforces it too: nothing from other origins, no inline script.
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert all(a.get("src") for t, a in page.tags if t == "script"), "inline <script> (the CSP would block it)"
    handlers = [(t, k) for t, a in page.tags for k in a if k.startswith("on")]
    assert not handlers, f"inline event handlers (the CSP would block them): {handlers}"


def test_page_script_never_parses_user_text_as_html() -> None:
    script = (STATIC / "demo.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, f"demo.js uses {sink}"
    assert "textContent" in script and "createTextNode" in script


def test_only_known_static_files_are_served(page_client: TestClient) -> None:
    assert page_client.get("/static/index.html").status_code == 404
    assert page_client.get("/static/..%2Fmain.py").status_code == 404
    assert page_client.get("/static/nope.js").status_code == 404


def test_index_is_not_in_the_api_schema(page_client: TestClient) -> None:
    paths = page_client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


# ---------------------------------------------------------------- a real server and a real browser

MAX_TEXT_CHARS = 4000  # small limits on the test server, so the page's 422 and 413 paths are cheap to hit
MAX_BODY_BYTES = 8192
MIN_SHOWN = 0.06  # demo.js leaves words below this share of the largest |attribution| plain
REVIEW = "The film was great and the actors were superb, but the plot was awful."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command() -> list[str]:
    script = Path(sys.executable).with_name("sentiment-serve")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from app.main import cli; cli()"]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[str]:
    """The real `sentiment-serve` on a free port with a tiny model; yields its base URL."""
    given = os.environ.get("DEMO_MODEL")  # e.g. models/sentiment.pt, for a README screenshot of the real model
    model = ROOT / given if given else tiny_model_path
    port = _free_port()
    env = {
        **os.environ,
        "SENTIMENT_MODEL_PATH": str(model),
        "SENTIMENT_TORCH_THREADS": "1",
        "SENTIMENT_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
        "SENTIMENT_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "SENTIMENT_LOG_LEVEL": "warning",
    }
    env.pop("SENTIMENT_API_KEY", None)
    log = tmp_path_factory.mktemp("demo-log") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*_serve_command(), "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=ROOT, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within 30 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(driver: Any, condition: Any, timeout: float = 15) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _open(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/")
    # The script ran and reached /model.
    _wait(driver, lambda d: re.fullmatch(r"Model: \S+ \S+", d.find_element(By.ID, "model-info").text))


def _submit(driver: Any, text: str) -> None:
    """Put `text` in the box (via JS for long texts: send_keys is slow) and press the button."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "text")
    box.clear()
    if len(text) > 300:
        driver.execute_script("arguments[0].value = arguments[1];", box, text)
    else:
        box.send_keys(text)
    driver.find_element(By.ID, "submit").click()


def _error_shown(driver: Any, *fragments: str) -> str:
    """Wait until the error box is visible and says all of `fragments`; return its text."""
    from selenium.webdriver.common.by import By

    def shown(d: Any) -> str | bool:
        box = d.find_element(By.ID, "error")
        return box.is_displayed() and all(f in box.text for f in fragments) and box.text

    try:
        return _wait(driver, shown, timeout=10)
    except Exception:
        box = driver.find_element(By.ID, "error")
        pytest.fail(f"expected an error saying {fragments}; shown={box.is_displayed()} text={box.text!r}")


def _api_predict(base: str, text: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/predict", data=json.dumps({"text": text, "explain": True}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)["predictions"][0]


def assert_bar_grows_from_the_middle(browser: Any, p_positive: float) -> None:
    """The fill starts at the bar's centre and reaches P(positive) on the scale, on the predicted side, in its colour:
    a confident negative is a long red fill to the left, not a short green one."""
    from selenium.webdriver.common.by import By

    bar = browser.find_element(By.ID, "bar")
    fill = browser.find_element(By.ID, "bar-fill")
    side = "positive" if p_positive >= 0.5 else "negative"

    def settled(_: Any) -> bool:  # the fill animates (0.3 s) to its place
        box, part = bar.rect, fill.rect
        centre, at = box["x"] + box["width"] / 2, box["x"] + p_positive * box["width"]
        near, far = (part["x"], part["x"] + part["width"]) if side == "positive" else (part["x"] + part["width"], part["x"])
        return abs(near - centre) <= 1.5 and abs(far - at) <= 1.5

    _wait(browser, settled, timeout=5)
    assert side in fill.get_attribute("class").split()
    colour = fill.value_of_css_property("background-color")
    assert colour.startswith("rgba(22, 163, 74" if side == "positive" else "rgba(220, 38, 38"), colour


def test_browser_predicts_and_highlights(demo_server: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _open(browser, demo_server)
    _submit(browser, REVIEW)
    _wait(browser, ec.visibility_of_element_located((By.ID, "result")))
    expected = _api_predict(demo_server, REVIEW)

    label = browser.find_element(By.ID, "label").text.lower()
    assert label == expected["label"]
    assert f"P(positive) = {expected['p_positive']:.3f}" in browser.find_element(By.ID, "score").text
    bar = browser.find_element(By.ID, "bar")
    assert int(bar.get_attribute("aria-valuenow")) == round(100 * expected["p_positive"])
    assert_bar_grows_from_the_middle(browser, expected["p_positive"])
    assert re.search(r"Answered in \d+ ms", browser.find_element(By.ID, "latency").text)
    assert not browser.find_element(By.ID, "error").is_displayed()

    # The highlighted copy is exactly the original text, sliced at the spans the API returned.
    highlight = browser.find_element(By.ID, "highlight")
    assert highlight.get_attribute("textContent") == REVIEW
    # Every word the API calls influential is coloured by the sign of its attribution, in order; the rest are plain.
    tokens = expected["explanation"]["tokens"]
    peak = max(abs(t["attribution"]) for t in tokens)
    wanted = [
        (REVIEW[t["start"] : t["end"]], "tok-pos" if t["attribution"] > 0 else "tok-neg")
        for t in tokens
        if abs(t["attribution"]) >= MIN_SHOWN * peak
    ]
    shown = [(span.text, span.get_attribute("class").split()[-1]) for span in highlight.find_elements(By.CSS_SELECTOR, "span.tok")]
    assert shown == wanted
    assert {"tok-pos", "tok-neg"} <= {c for _, c in shown}, "a mixed review should show both colours"

    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("DEMO_SCREENSHOT"):
        (ROOT / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ROOT / target)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"


def test_browser_example_and_markup_in_text_stay_text(demo_server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _open(browser, demo_server)
    # An example button fills the box and submits.
    example = browser.find_element(By.CSS_SELECTOR, "button.example")
    example.click()
    _wait(browser, ec.visibility_of_element_located((By.ID, "result")))
    assert browser.find_element(By.ID, "text").get_attribute("value") == example.get_attribute("data-text")

    # Markup typed by a user is shown as text, never parsed (only IMDb's <br /> becomes a line break).
    hostile = 'great <img src=x onerror="document.title=1"> <b>awful</b> film<br />the end'
    _submit(browser, hostile)
    _wait(browser, lambda d: "awful" in d.find_element(By.ID, "highlight").text)
    highlight = browser.find_element(By.ID, "highlight")
    assert not highlight.find_elements(By.TAG_NAME, "img") and not highlight.find_elements(By.TAG_NAME, "b")
    assert len(highlight.find_elements(By.TAG_NAME, "br")) == 1
    assert '<img src=x onerror="document.title=1">' in highlight.text and "<b>" in highlight.text
    assert browser.title == "Sentiment demo"


def test_browser_shows_errors(demo_server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, demo_server)
    # Empty and blank text: caught on the page, before any request.
    for blank in ("", "   \n  "):
        _submit(browser, blank)
        _error_shown(browser, "type or paste a review")
        assert browser.find_element(By.ID, "text").get_attribute("aria-invalid") == "true"
        assert not browser.find_element(By.ID, "result").is_displayed()

    # A new error replaces an older answer rather than sitting above it.
    _submit(browser, REVIEW)
    _wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    _submit(browser, "")
    _error_shown(browser, "type or paste a review")
    assert not browser.find_element(By.ID, "result").is_displayed()

    # The server's own refusals, with its message: too many characters (422), too many bytes (413).
    _submit(browser, "good " * (MAX_TEXT_CHARS // 5 + 20))
    _error_shown(browser, "could not use this text", f"at most {MAX_TEXT_CHARS}")
    _submit(browser, "good " * (MAX_BODY_BYTES // 5 + 20))
    _error_shown(browser, "too long")

    # Busy (503 + Retry-After) and network failure: a stand-in fetch, since a real overload is slow to stage.
    browser.execute_script(
        "window.fetch = () => Promise.resolve(new Response("
        "JSON.stringify({error: {type: 'overloaded', message: 'queue full'}}),"
        "{status: 503, headers: {'Content-Type': 'application/json', 'Retry-After': '3'}}));"
    )
    _submit(browser, REVIEW)
    _error_shown(browser, "busy", "in 3 s")
    browser.execute_script("window.fetch = () => Promise.reject(new TypeError('Failed to fetch'));")
    _submit(browser, REVIEW)
    _error_shown(browser, "Could not reach the server")
    assert browser.find_element(By.ID, "submit").is_enabled(), "the button must come back after an error"
