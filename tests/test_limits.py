"""Limits, errors, overload and auth: every client mistake is a 4xx JSON naming the problem, never a 5xx."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from fastapi import FastAPI

from app import runner as runner_module
from app.runner import Runner
from tests.conftest import ServeFactory

pytestmark = pytest.mark.anyio


class Gate:
    """Patches Runner.run_batch so the test decides when the model may proceed (and what it does)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.armed = threading.Event()
        self.batches: list[list[int]] = []  # token count of each job, per forward pass
        self.hook: Callable[[list[runner_module.Job]], None] = lambda jobs: None

    @contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
        run_batch = Runner.run_batch

        def gated(runner: Runner, jobs: list[runner_module.Job]) -> list[runner_module.Output]:
            if self.armed.is_set():
                self.batches.append([len(j.ids) for j in jobs])
                assert self.open.wait(10), "test gate never opened"
                self.hook(jobs)
            return run_batch(runner, jobs)

        monkeypatch.setattr(Runner, "run_batch", gated)
        try:
            yield self
        finally:
            self.open.set()


async def wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(2500):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never became true")


@asynccontextmanager
async def model_held(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch, **settings: object
) -> AsyncIterator[tuple[Gate, httpx.AsyncClient, FastAPI, asyncio.Task[httpx.Response]]]:
    """A served app with one model worker, busy with one request ("great") until `gate.open` is set."""
    with Gate().installed(monkeypatch) as gate:
        async with serve(model_workers=1, **settings) as (client, app):
            gate.armed.set()
            running = asyncio.create_task(client.post("/predict", json={"text": "great"}))
            await wait_for(lambda: bool(gate.batches))
            yield gate, client, app, running


def error_of(response: object) -> dict[str, str]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    return body["error"]


LIMITS = {"max_items_per_request": 3, "max_text_chars": 50, "max_body_bytes": 1000}


@pytest.mark.parametrize(
    ("body", "status", "type_", "expected"),
    [
        ({"texts": ["a", "b", "c", "d"]}, 422, "invalid_input", "texts: 4 items, at most 3"),
        ({"texts": ["fine", "x" * 60]}, 422, "invalid_input", "texts.1: 60 characters, at most 50"),
        ({"text": "x" * 51}, 422, "invalid_input", "text: 51 characters"),
        ({"text": ""}, 422, "invalid_input", "text: text must not be empty"),
        ({"text": " \n\t "}, 422, "invalid_input", "text: text must not be empty"),
        ({"texts": ["ok", ""]}, 422, "invalid_input", "texts.1: text must not be empty"),
        ({"texts": []}, 422, "invalid_input", "texts: List should have at least 1 item"),
        ({}, 422, "invalid_input", "exactly one of `text` or `texts`"),
        ({"text": "a", "texts": ["b"]}, 422, "invalid_input", "exactly one of `text` or `texts`"),
        ({"text": 5}, 422, "invalid_input", "text: Input should be a valid string"),
        ({"texts": "abc"}, 422, "invalid_input", "texts: Input should be a valid list"),
        ({"texts": [1]}, 422, "invalid_input", "texts.0: Input should be a valid string"),
        ({"text": "ok", "explain": "yes"}, 422, "invalid_input", "explain: Input should be a valid boolean"),
        ({"txt": "typo"}, 422, "invalid_input", "txt: Extra inputs are not permitted"),
        (["a list"], 422, "invalid_input", "body: Input should be a valid dictionary"),
        ({"text": "x" * 2000}, 413, "payload_too_large", "exceeds the limit of 1000 bytes"),
    ],
)
async def test_invalid_bodies_get_4xx_naming_the_problem(serve: ServeFactory, body: object, status: int, type_: str, expected: str) -> None:
    async with serve(**LIMITS) as (client, _):
        response = await client.post("/predict", json=body)
    assert response.status_code == status
    error = error_of(response)
    assert error["type"] == type_ and expected in error["message"], error


@pytest.mark.parametrize(
    ("content", "headers", "status", "expected"),
    [
        (b'{"text": "unfinished', {"content-type": "application/json"}, 400, "not valid JSON"),
        (b'{"text": "caf\xe9"}', {"content-type": "application/json"}, 400, "not valid UTF-8"),
        (b"", {"content-type": "application/json"}, 422, "body: Field required"),
        (b'{"text": "hi"}', {"content-type": "text/plain"}, 422, "Content-Type: application/json"),
    ],
)
async def test_undecodable_bodies(serve: ServeFactory, content: bytes, headers: dict[str, str], status: int, expected: str) -> None:
    async with serve() as (client, _):
        response = await client.post("/predict", content=content, headers=headers)
    assert response.status_code == status
    assert expected in error_of(response)["message"]


async def test_a_streamed_body_over_the_limit_is_cut_off_without_content_length(serve: ServeFactory) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"text": "'
        for _ in range(10_000):  # would be 10 MB; the server stops reading after ~1 kB
            sent += 1
            yield b"x" * 1000
        yield b'"}'

    async with serve(max_body_bytes=4000) as (client, _):
        response = await client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "exceeds the limit of 4000 bytes" in error_of(response)["message"]
    assert sent < 100


async def test_unknown_routes_and_methods_are_json_errors(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        missing = await client.get("/nope")
        wrong_method = await client.get("/predict")
    assert missing.status_code == 404 and error_of(missing)["type"] == "not_found"
    assert wrong_method.status_code == 405 and error_of(wrong_method)["type"] == "method_not_allowed"


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
async def test_a_bad_deadline_header_is_422(serve: ServeFactory, value: str) -> None:
    async with serve() as (client, _):
        response = await client.post("/predict", json={"text": "great"}, headers={"X-Request-Timeout-Ms": value})
    assert response.status_code == 422 and "X-Request-Timeout-Ms" in error_of(response)["message"]


async def test_api_key_guards_predict_only(serve: ServeFactory) -> None:
    async with serve(api_key="s3cret") as (client, _):
        missing = await client.post("/predict", json={"text": "great"})
        wrong = await client.post("/predict", json={"text": "great"}, headers={"Authorization": "Bearer nope"})
        basic = await client.post("/predict", json={"text": "great"}, headers={"Authorization": "Basic s3cret"})
        right = await client.post("/predict", json={"text": "great"}, headers={"Authorization": "Bearer s3cret"})
        open_paths = [await client.get(p) for p in ("/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json", "/model")]
    for denied in (missing, wrong, basic):
        assert denied.status_code == 401 and error_of(denied)["type"] == "unauthorized"
        assert denied.headers["WWW-Authenticate"] == "Bearer"
    assert "invalid API key" in error_of(wrong)["message"]
    assert right.status_code == 200
    assert [r.status_code for r in open_paths] == [200] * len(open_paths)


async def test_a_full_queue_answers_503_with_retry_after_at_once(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async with model_held(serve, monkeypatch, max_queue=2, max_items_per_request=2) as (
        gate,
        client,
        app,
        running,
    ):  # one gated worker holds all
        queued = asyncio.create_task(client.post("/predict", json={"texts": ["good", "bad"]}))
        await wait_for(lambda: app.state.service.queue_depth == 2)
        refused = await client.post("/predict", json={"text": "one more"})
        refused_oip = await client.post(
            "/v2/models/tiny-test-model/infer", json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
        )
        gate.open.set()
        assert (await running).status_code == 200 and (await queued).status_code == 200
        rejected = app.state.metrics.registry.get_sample_value("sentiment_rejected_total", {"reason": "overloaded"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert error_of(refused)["type"] == "overloaded"
    assert refused_oip.status_code == 503 and "queue" in refused_oip.json()["error"]
    assert rejected == 2


async def test_requests_past_the_in_flight_limit_get_503_unread_while_probes_still_answer(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with model_held(serve, monkeypatch, max_in_flight=1) as (gate, client, app, running):
        refused = await client.post("/predict", json={"text": "one more"})
        live = await client.get("/health/live")
        gate.open.set()
        assert (await running).status_code == 200
        after = await client.post("/predict", json={"text": "after"})
        rejected = app.state.metrics.registry.get_sample_value("sentiment_rejected_total", {"reason": "overloaded"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert error_of(refused)["type"] == "overloaded" and "in flight" in error_of(refused)["message"]
    assert live.status_code == 200 and after.status_code == 200, "probes pass the limit; the slot is freed after the answer"
    assert rejected == 1


async def test_a_client_that_leaves_has_its_queued_text_dropped(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async with model_held(serve, monkeypatch) as (gate, _client, app, running):
        body = json.dumps({"text": "great " * 7}).encode()
        messages: list[dict[str, object]] = [{"type": "http.request", "body": body, "more_body": False}]
        gone = asyncio.Event()

        async def receive() -> dict[str, object]:  # the body, then nothing until the client disconnects
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        leaving = asyncio.create_task(app(scope, receive, send))
        await wait_for(lambda: app.state.service.queue_depth == 1)
        gone.set()
        await asyncio.wait_for(leaving, 5)
        depth = app.state.service.queue_depth
        gate.open.set()
        assert (await running).status_code == 200, "the other client is served as usual"
        closed = app.state.metrics.registry.get_sample_value("sentiment_rejected_total", {"reason": "client_closed"})
    assert depth == 0 and sent == [], "dropped from the queue at once; nothing sent to a closed connection"
    assert all(7 not in batch for batch in gate.batches), "the text of the client that left never reached the model"
    assert closed == 1


async def test_a_missed_deadline_is_504_and_the_text_never_reaches_the_model(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async with model_held(serve, monkeypatch) as (gate, client, app, running):
        late = await client.post("/predict", json={"text": "great " * 7}, headers={"X-Request-Timeout-Ms": "50"})
        depth_after = app.state.service.queue_depth
        gate.open.set()
        assert (await running).status_code == 200
    assert late.status_code == 504 and error_of(late)["type"] == "deadline_exceeded"
    assert depth_after == 0
    assert all(7 not in batch for batch in gate.batches), "the expired text was dropped from the queue"


async def test_the_server_default_deadline_applies_without_a_header(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    with Gate().installed(monkeypatch) as gate:
        async with serve(request_timeout_ms=50, model_workers=1) as (client, _):
            gate.armed.set()
            response = await client.post("/predict", json={"text": "great"})
            gate.open.set()
    assert response.status_code == 504


async def test_a_failing_text_fails_alone_and_bugs_are_opaque_500s(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode_on_three_tokens(jobs: list[runner_module.Job]) -> None:
        if any(len(j.ids) == 3 for j in jobs):
            raise RuntimeError("secret internal detail")

    gate = Gate()
    gate.hook = explode_on_three_tokens
    with gate.installed(monkeypatch):
        async with serve(model_workers=1, min_batch_size=1) as (client, _):
            gate.armed.set()
            first = asyncio.create_task(client.post("/predict", json={"text": "great"}))
            await wait_for(lambda: bool(gate.batches))
            good = asyncio.create_task(client.post("/predict", json={"text": "great film"}))
            bad = asyncio.create_task(client.post("/predict", json={"text": "a bad film"}, headers={"X-Request-ID": "req-bad"}))
            await asyncio.sleep(0.05)
            gate.open.set()
            responses = await asyncio.gather(first, good, bad)
    assert [r.status_code for r in responses] == [200, 200, 500]
    failed = responses[2]
    assert error_of(failed)["type"] == "internal_error" and "secret" not in failed.text
    assert failed.headers["X-Request-ID"] == "req-bad" and "req-bad" in error_of(failed)["message"]
    assert [2, 3] in gate.batches or [3, 2] in gate.batches, "the good and the bad text shared a batch first"
