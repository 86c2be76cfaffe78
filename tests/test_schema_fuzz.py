"""The OpenAPI schema says exactly what the server accepts: `schemathesis run --checks all` against a real server, 0 failures.

As a new user would run it: the CLI against a live `sentiment-serve` (tiny real model), every check (server
errors, response conformance, positive data accepted, negative data rejected, auth, missing headers, ...),
every phase (examples, coverage, fuzzing, stateful), bounded examples, a fixed seed; once without an API key
(no security scheme may be declared) and once with one (the key given to schemathesis, which also checks that
requests without it or with a wrong one are refused). tests/schemathesis.toml holds the two exceptions, with why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app
from tests.live_server import running_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = "40"
SEED = "20261202"


def _schemathesis() -> list[str]:
    script = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return [script]


def test_the_bearer_scheme_is_declared_only_with_an_api_key() -> None:
    plain = create_app(Settings(model_path=Path("unused.pt"))).openapi()
    keyed = create_app(Settings(model_path=Path("unused.pt"), api_key="k")).openapi()
    assert "securitySchemes" not in plain.get("components", {})
    assert not [op for path in plain["paths"].values() for op in path.values() if "security" in op]
    assert keyed["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "description": "`Authorization: Bearer <SENTIMENT_API_KEY>`.", "scheme": "bearer"}
    }
    assert keyed["paths"]["/predict"]["post"]["security"] == [{"HTTPBearer": []}]
    predict = plain["components"]["schemas"]["PredictRequest"]
    assert predict["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}] and predict["additionalProperties"] is False


@pytest.mark.parametrize("api_key", [None, "fuzz-key"], ids=["no-api-key", "api-key"])
def test_schemathesis_checks_all_finds_nothing(tiny_model_path: Path, tmp_path: Path, api_key: str | None) -> None:
    command = _schemathesis()
    env = {"SENTIMENT_API_KEY": api_key} if api_key else {}
    with running_server(tiny_model_path, tmp_path, **env) as (_, port, log):
        auth = ["--header", f"Authorization: Bearer {api_key}"] if api_key else []
        run = subprocess.run(
            [*command, "--config-file", str(CONFIG), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
             "--max-examples", MAX_EXAMPLES, "--seed", SEED, "--no-shrink", "--generation-database", "none", *auth],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        )  # fmt: skip
        output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:] + "\n--- server log ---\n" + log.read_text()[-2000:]
    assert "No issues found" in output
