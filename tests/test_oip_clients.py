"""The real OIP clients against a real `sentiment-serve`: tritonclient over HTTP (JSON and binary tensors) and gRPC.

Each answer must equal /predict's for the same texts (<= 1e-6): one model, one
runner, whichever protocol carried the request. The clients are in the `test`
extra; without them these tests skip, saying which package is missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live_server import free_port, running_server

MODEL = "tiny-test-model"
TEXTS = ["A wonderful, moving film. I loved every minute of it!", "Dull, boring and awful: a complete waste of time.", "great", "héllo ☃"]


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(HTTP port, gRPC port) of one server for the module."""
    grpc_port = free_port()
    with running_server(tiny_model_path, tmp_path_factory.mktemp("clients"), SENTIMENT_GRPC_PORT=str(grpc_port)) as (_, port, _):
        yield port, grpc_port


@pytest.fixture(scope="module")
def expected(server: tuple[int, int]) -> list[float]:
    response = httpx.post(f"http://127.0.0.1:{server[0]}/predict", json={"texts": TEXTS}, timeout=10)
    assert response.status_code == 200, response.text
    return [p["p_positive"] for p in response.json()["predictions"]]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("request_output", [False, True], ids=["default-outputs", "requested-output"])
def test_tritonclient_http_infer_matches_predict(
    server: tuple[int, int], expected: list[float], binary: bool, request_output: bool
) -> None:
    http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed (pip install -e '.[test]')")
    client = http.InferenceServerClient(url=f"127.0.0.1:{server[0]}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    tensor = http.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary)
    outputs = [http.InferRequestedOutput("p_positive", binary_data=binary)] if request_output else None
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id="r1")
    values = result.as_numpy("p_positive")
    assert values.dtype == np.float32 and values.shape == (len(TEXTS),)
    assert values.tolist() == pytest.approx(expected, abs=1e-6)
    assert result.get_response()["id"] == "r1"
    binary_answer = "parameters" in result.get_output("p_positive")
    assert binary_answer == (binary or not request_output)  # tritonclient asks binary outputs by default


@pytest.fixture(scope="module")
def grpcclient(server: tuple[int, int]) -> Iterator[object]:
    grpc_client = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (pip install -e '.[test]')")
    client = grpc_client.InferenceServerClient(url=f"127.0.0.1:{server[1]}")
    yield client
    client.close()


@pytest.mark.parametrize("raw", [False, True], ids=["bytes_contents", "raw_input_contents"])
def test_tritonclient_grpc_infer_matches_predict(grpcclient: object, expected: list[float], raw: bool) -> None:
    grpc_client = pytest.importorskip("tritonclient.grpc")
    client: object = grpcclient
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)  # type: ignore[attr-defined]
    metadata = client.get_model_metadata(MODEL, as_json=True)  # type: ignore[attr-defined]
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    tensor = grpc_client.InferInput("text", [len(TEXTS)], "BYTES")
    data = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    if raw:
        tensor.set_data_from_numpy(data)  # tritonclient sends raw_input_contents
    else:
        tensor._get_tensor().contents.bytes_contents.extend(data.tolist())  # the typed field, as other clients send it
    result = client.infer(MODEL, [tensor], request_id="g1", client_timeout=10)  # type: ignore[attr-defined]
    values = result.as_numpy("p_positive")
    assert values.dtype == np.float32 and values.tolist() == pytest.approx(expected, abs=1e-6)
    assert result.get_response().id == "g1"


def test_readme_grpc_example_runs(server: tuple[int, int]) -> None:
    pytest.importorskip("tritonclient.grpc")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = re.search(r"^## gRPC and tritonclient\b.*?(?=^## )", readme, re.S | re.M)
    assert section, "README has no '## gRPC and tritonclient' section"
    (code,) = re.findall(r"```python\n(.*?)```", section.group(0), re.S)
    code = code.replace("localhost:8001", f"127.0.0.1:{server[1]}").replace('"imdb-bilstm"', f'"{MODEL}"')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    values = [float(v) for v in re.findall(r"[0-9.]+(?:e-?\d+)?", result.stdout)]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values), result.stdout
