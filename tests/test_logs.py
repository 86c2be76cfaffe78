"""app/logs.py: with SENTIMENT_LOG_FORMAT=json a real server writes only JSON lines, and a request's line names it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from tests.live_server import running_server


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
