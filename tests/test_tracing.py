"""app/tracing.py: request, queue-wait and forward spans in the client's trace, links from a shared batch, nothing when off."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import tracing
from app.config import Settings
from app.main import create_app
from app.runner import Runner
from contract.artifact import Artifact

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def traceparent(trace_id: str = TRACE_ID, parent: str = "00f067aa0ba902b7") -> str:
    return f"00-{trace_id}-{parent}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(make_settings: Callable[..., Settings], tiny_artifact: Artifact, exporter: InMemorySpanExporter) -> Callable[..., Any]:
    @asynccontextmanager
    async def open_app(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = create_app(make_settings(**overrides), artifact=tiny_artifact, tracer=tracing.Tracing(provider))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client, app

    return open_app


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_predict_yields_request_queue_wait_and_forward_spans_in_the_clients_trace(
    traced: Callable[..., Any], exporter: InMemorySpanExporter
) -> None:
    async with traced(model_workers=1) as (client, _):
        response = await client.post("/predict", json={"text": "a fine film"}, headers={"traceparent": traceparent()})
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    (request,) = by_name(spans, "POST /predict")
    (wait,) = by_name(spans, "queue wait")
    (forward,) = by_name(spans, "forward")
    trace_id = int(TRACE_ID, 16)
    assert {request.context.trace_id, wait.context.trace_id, forward.context.trace_id} == {trace_id}
    assert request.parent is not None and request.parent.span_id == int("00f067aa0ba902b7", 16)  # the client's span
    assert request.attributes["http.route"] == "/predict" and request.attributes["http.response.status_code"] == 200
    assert wait.parent.span_id == request.context.span_id
    assert wait.start_time <= wait.end_time <= forward.end_time
    assert [link.context.span_id for link in wait.links] == [forward.context.span_id]
    assert [link.context.span_id for link in forward.links] == [request.context.span_id]
    attributes = forward.attributes
    assert attributes["sentiment.batch.size"] == 1 and attributes["sentiment.batch.real_tokens"] >= 1
    assert attributes["sentiment.batch.padded_tokens"] == attributes["sentiment.batch.real_tokens"]
    assert attributes["sentiment.precision"] == "fp32" and attributes["sentiment.model.version"]
    assert str(attributes["sentiment.worker"]).startswith("model-worker")
    # The answer names the server span, in the same trace.
    _, trace_id_back, span_id_back, _ = response.headers["traceparent"].split("-")
    assert trace_id_back == TRACE_ID and int(span_id_back, 16) == request.context.span_id


async def test_the_forward_span_links_to_every_request_that_shared_its_batch(
    traced: Callable[..., Any], exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_batch, gate, held = Runner.run_batch, threading.Event(), threading.Event()

    def gated(runner: Runner, jobs: list[Any]) -> Any:  # the first batch holds the one worker until both requests wait behind it
        if not held.is_set():
            held.set()
            gate.wait(10)
        return run_batch(runner, jobs)

    async with traced(model_workers=1) as (client, app):
        service = app.state.service
        monkeypatch.setattr(Runner, "run_batch", gated)  # after start: the golden check ran ungated
        blocker = asyncio.ensure_future(client.post("/predict", json={"text": "first in"}))
        while not held.is_set():
            await asyncio.sleep(0.005)
        ids = ["%032x" % (n + 1) for n in range(2)]
        posts = [
            asyncio.ensure_future(client.post("/predict", json={"text": "the same words"}, headers={"traceparent": traceparent(i)}))
            for i in ids
        ]
        while service.queue_depth < 2:
            await asyncio.sleep(0.005)
        gate.set()
        answers = await asyncio.gather(blocker, *posts)
    assert [a.status_code for a in answers] == [200, 200, 200]
    spans = exporter.get_finished_spans()
    requests = {s.context.trace_id: s for s in by_name(spans, "POST /predict") if s.context.trace_id in {int(i, 16) for i in ids}}
    assert len(requests) == 2
    shared = [f for f in by_name(spans, "forward") if f.attributes["sentiment.batch.requests"] == 2]
    assert len(shared) == 1, [f.attributes for f in by_name(spans, "forward")]
    (forward,) = shared
    assert forward.attributes["sentiment.batch.size"] == 2
    assert {link.context.span_id for link in forward.links} == {s.context.span_id for s in requests.values()}
    assert forward.context.trace_id in requests  # it lives in one of their traces (the older request's)
    for trace_id, request in requests.items():  # each request's trace has its queue wait, leading to the shared forward
        (wait,) = [w for w in by_name(spans, "queue wait") if w.context.trace_id == trace_id]
        assert wait.parent.span_id == request.context.span_id
        assert [link.context.span_id for link in wait.links] == [forward.context.span_id]


async def test_probes_are_not_traced(traced: Callable[..., Any], exporter: InMemorySpanExporter) -> None:
    async with traced() as (client, _):
        response = await client.get("/health/ready", headers={"traceparent": traceparent()})
    assert response.status_code == 200 and "traceparent" not in response.headers
    assert not exporter.get_finished_spans()


def test_the_on_off_rule() -> None:
    assert not tracing.enabled({})
    assert not tracing.enabled({"OTEL_TRACES_EXPORTER": " None "})
    assert not tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})  # an endpoint alone: still off
    assert not tracing.enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert tracing.enabled({"OTEL_TRACES_EXPORTER": "console"})


OFF_PROBE = """
import asyncio, json, sys
import httpx
from app.config import Settings
from app.main import create_app
from app.runner import Runner

async def main():
    app = create_app(Settings(model_path=sys.argv[1], device="cpu", torch_threads=1))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            response = await client.post("/predict", json={"text": "fine"}, headers={"traceparent": sys.argv[2]})
    sdk = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation")))
    print(json.dumps({"status": response.status_code, "traceparent": response.headers.get("traceparent"), "sdk": sdk}))

asyncio.run(main())
"""


@pytest.mark.parametrize("exporter_env", [None, "none"])
def test_tracing_off_imports_no_sdk_and_answers_without_traceparent(tiny_model_path: Path, exporter_env: str | None) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if exporter_env is not None:
        env["OTEL_TRACES_EXPORTER"] = exporter_env
    done = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, str(tiny_model_path), traceparent()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "traceparent": None, "sdk": []}


async def test_a_grpc_call_is_traced_from_its_metadata_and_answers_with_traceparent(
    traced: Callable[..., Any], exporter: InMemorySpanExporter
) -> None:
    grpc = pytest.importorskip("grpc", reason="the [grpc] extra is not installed")
    pb = pytest.importorskip("tritonclient.grpc.service_pb2", reason="the [grpc] extra is not installed")
    pytest.importorskip("opentelemetry.instrumentation.grpc", reason="the [otel] extra is not installed")
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from tests.live_server import free_port

    port = free_port()
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"a fine film")
    async with traced(grpc_port=port, host="127.0.0.1", model_workers=1), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="tiny-test-model", inputs=[tensor]), metadata=(("traceparent", traceparent()),)
        )
        await call
        returned = dict(await call.initial_metadata())["traceparent"]
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.name.endswith("GRPCInferenceService/ModelInfer")]
    (wait,) = by_name(spans, "queue wait")
    (forward,) = by_name(spans, "forward")
    assert {request.context.trace_id, wait.context.trace_id, forward.context.trace_id} == {int(TRACE_ID, 16)}
    assert wait.parent.span_id == request.context.span_id
    assert returned == f"00-{TRACE_ID}-{request.context.span_id:016x}-01"
