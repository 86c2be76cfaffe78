"""app/grpc_server.py: the KServe/Triton GRPCInferenceService and grpc.health.v1 beside HTTP, same service, limits and drain."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install -e '.[grpc]')")
pb = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tritonclient[grpc] is not installed (pip install -e '.[grpc]')")
pytest.importorskip("grpc_health", reason="grpcio-health-checking is not installed (pip install -e '.[grpc]')")

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402

from app import batcher  # noqa: E402
from tests.conftest import ServeFactory  # noqa: E402
from tests.live_server import free_port, running_server  # noqa: E402

pytestmark = pytest.mark.anyio

MODEL = "tiny-test-model"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def infer_request(texts: list[str], **fields: Any) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return pb.ModelInferRequest(**{"model_name": MODEL, "inputs": [tensor], **fields})


@pytest.fixture
def grpc_app(serve: ServeFactory) -> Callable[..., Any]:
    """`async with grpc_app(**settings) as (stub, health, app)`: an app in-process with its gRPC server on a free port."""

    @asynccontextmanager
    async def open_app(**overrides: Any) -> AsyncIterator[tuple[Any, Any, Any]]:
        port = free_port()
        async with (
            serve(grpc_port=port, host="127.0.0.1", **overrides) as (_, app),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield pb_grpc.GRPCInferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel), app

    return open_app


async def test_health_readiness_and_metadata(grpc_app: Callable[..., Any]) -> None:
    async with grpc_app() as (stub, health, _):
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        per_service = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        live = await stub.ServerLive(pb.ServerLiveRequest())
        ready = await stub.ServerReady(pb.ServerReadyRequest())
        model_ready = await stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="0.0.1"))
        server = await stub.ServerMetadata(pb.ServerMetadataRequest())
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version="9.9"))
    assert overall.status == per_service.status == SERVING
    assert live.live and ready.ready and model_ready.ready
    assert server.name == "sentiment-service" and list(server.extensions) == ["binary_tensor_data"]
    assert (metadata.name, list(metadata.versions), metadata.inputs[0].datatype) == (MODEL, ["0.0.1"], "BYTES")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "9.9" in unknown.value.details()


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (infer_request(["good", "  "]), "element 1: text must not be empty"),
        (infer_request(["a", "b"], model_name="other"), "unknown model 'other'"),
        (pb.ModelInferRequest(model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(name="text", datatype="FP32", shape=[1])]), "BYTES"),
        (infer_request(["a"], raw_input_contents=[b"\x05\x00\x00\x00ab"]), "length prefix says 5 bytes"),
        (infer_request(["a"], raw_input_contents=[b"x", b"y"]), "raw_input_contents has 2 entries for 1 inputs"),
        (infer_request(["a", "b", "c"]), "3 items, at most 2"),
        (infer_request(["a"], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]), "unknown output 'logits'"),
    ],
    ids=["blank", "unknown-model", "datatype", "prefix-past-end", "raw-count", "too-many", "unknown-output"],
)  # fmt: skip
async def test_bad_requests_get_a_status_naming_the_problem(grpc_app: Callable[..., Any], request_: Any, expected: str) -> None:
    async with grpc_app(max_items_per_request=2) as (stub, _, _):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ModelInfer(request_)
    assert error.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert expected in error.value.details()


async def test_non_utf8_and_oversized_messages(grpc_app: Callable[..., Any]) -> None:
    bad = infer_request(["x"])
    bad.inputs[0].contents.bytes_contents[0] = b"\xff"
    async with grpc_app(max_body_bytes=2000) as (stub, _, _):
        with pytest.raises(grpc.aio.AioRpcError) as utf8:
            await stub.ModelInfer(bad)
        with pytest.raises(grpc.aio.AioRpcError) as large:
            await stub.ModelInfer(infer_request(["x" * 5000]))
    assert utf8.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not valid UTF-8" in utf8.value.details()
    assert large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_deadline_is_the_timeout_and_overload_says_when_to_retry(
    grpc_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float | None] = []
    async with grpc_app() as (stub, _, app):
        queue = app.state.service._batcher
        real = queue.submit

        async def watched(jobs: list[Any], timeout: float | None = None, **kwargs: Any) -> Any:
            seen.append(timeout)
            return await real(jobs, timeout, **kwargs)

        monkeypatch.setattr(queue, "submit", watched)
        await stub.ModelInfer(infer_request(["fine"]), timeout=2.0)
        await stub.ModelInfer(infer_request(["fine"]))

        def full(n: int) -> None:
            raise batcher.QueueFull("queue full: 1024 texts waiting")

        monkeypatch.setattr(queue, "reserve", full)
        with pytest.raises(grpc.aio.AioRpcError) as overloaded:
            await stub.ModelInfer(infer_request(["fine"]))
    # the call's deadline, less what has passed; gRPC sends the remaining time in its grpc-timeout header rounded *up*
    # to the unit it picks, so the server may see a few ms more than the client's 2.0 s (2.008 seen on a loaded machine)
    assert seen[0] is not None and 1.5 < seen[0] <= 2.05
    assert seen[1] is not None and 29.5 < seen[1] <= 30.0  # no deadline: the server's request_timeout_ms, less what has passed
    assert overloaded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in overloaded.value.details()
    assert ("retry-after", "1") in tuple(overloaded.value.trailing_metadata())


async def test_the_api_key_applies_to_infer(grpc_app: Callable[..., Any]) -> None:
    async with grpc_app(api_key="s3cret") as (stub, _, _):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ModelInfer(infer_request(["fine"]))
        allowed = await stub.ModelInfer(infer_request(["fine"]), metadata=(("authorization", "Bearer s3cret"),))
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(allowed.raw_output_contents[0]) == 4


def test_sigterm_turns_health_not_serving_serves_through_the_delay_then_exits(tiny_model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    with running_server(tiny_model_path, tmp_path, SENTIMENT_GRPC_PORT=str(port), SENTIMENT_DRAIN_DELAY_S="1.5") as (process, _, log):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health, stub = health_pb2_grpc.HealthStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        assert len(stub.ModelInfer(infer_request(["still served"]), timeout=5).raw_output_contents[0]) == 4
        assert process.wait(timeout=30) == 0, log.read_text()
        with pytest.raises(grpc.RpcError):
            stub.ServerLive(pb.ServerLiveRequest(), timeout=1)
        channel.close()
