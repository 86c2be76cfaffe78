"""app/logs.py: with SENTIMENT_LOG_FORMAT=json a real server writes only JSON lines, and a request's line names it."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import threading
from pathlib import Path

import httpx
import pytest

from app.runner import Job, Output, Runner
from tests import tiny_model
from tests.conftest import ServeFactory
from tests.live_server import running_server

OIP_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine film"]}]}


def test_json_logs_parse_line_by_line_and_a_request_line_carries_its_id_and_status(tiny_model_path: Path, tmp_path: Path) -> None:
    env = {"SENTIMENT_LOG_FORMAT": "json", "SENTIMENT_ACCESS_LOG": "true", "SENTIMENT_LOG_LEVEL": "info", "SENTIMENT_DRAIN_DELAY_S": "0"}
    with running_server(tiny_model_path, tmp_path, **env) as (process, port, log):
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "a fine film"}, headers={"X-Request-ID": "req-42"})
        assert response.status_code == 200
        bad = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": ""}, headers={"X-Request-ID": "req-43"})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "message"} <= record.keys() for record in records)
    assert any(record["logger"].startswith("uvicorn") for record in records)  # the server's own lines too
    (served,) = [r for r in records if r.get("request_id") == "req-42"]
    assert served["status"] == 200 and served["route"] == "/predict" and served["method"] == "POST"
    assert served["latency_ms"] > 0 and served["model_version"] == response.json()["model_version"]
    (refused,) = [r for r in records if r.get("request_id") == "req-43"]
    assert refused["status"] == bad.status_code == 422


@pytest.mark.anyio
async def test_the_access_line_names_the_model_that_answered_even_when_a_reload_lands_mid_request(
    serve: ServeFactory, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    second = tiny_model.build(tmp_path / "v2.pt", version="0.0.2")
    run_batch, gate, held = Runner.run_batch, threading.Event(), threading.Event()

    def gated(runner: Runner, jobs: list[Job]) -> list[Output]:  # holds the first request's batch on the old model
        if jobs[0].context is not None and not held.is_set():
            held.set()
            gate.wait(10)
        return run_batch(runner, jobs)

    caplog.set_level(logging.INFO, logger="app.access")
    async with serve(admin_key="adm1n", model_path=path, load=True, log_format="json", access_log=True, model_workers=2) as (client, _):
        monkeypatch.setattr(Runner, "run_batch", gated)
        first = asyncio.ensure_future(client.post("/predict", json={"text": "a fine film"}, headers={"X-Request-ID": "before"}))
        while not held.is_set():
            await asyncio.sleep(0.005)
        shutil.copy(second, path)  # the reload's golden check runs on the other worker
        reloaded = await client.post("/admin/reload", headers={"Authorization": "Bearer adm1n"})
        gate.set()
        old = await first
        new = await client.post("/v2/models/tiny-test-model/infer", json=OIP_BODY, headers={"X-Request-ID": "after"})
        probe = await client.get("/health/ready", headers={"X-Request-ID": "probe"})
    assert reloaded.status_code == 200 and reloaded.json()["version"] == "0.0.2"
    assert (old.json()["model_version"], new.json()["model_version"], probe.status_code) == ("0.0.1", "0.0.2", 200)
    lines = {r.request_id: r for r in caplog.records if r.name == "app.access"}
    assert lines["before"].model_version == "0.0.1", "the model that answered, not the one serving when the line is written"
    assert lines["after"].model_version == "0.0.2" and lines["after"].route == "/v2/models/{name}/infer"
    assert lines["probe"].model_version is None and lines["probe"].status == 200
