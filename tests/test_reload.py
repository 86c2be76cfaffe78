"""Reloading the model without a restart (issue 32): /admin/reload in-process, SIGHUP under load in a real server."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests import tiny_model
from tests.conftest import ServeFactory
from tests.live_server import running_server

ADMIN = {"Authorization": "Bearer adm1n"}


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model again, saved as another version (what a new release would be)."""
    return tiny_model.build(tmp_path_factory.mktemp("v2") / "tiny-v2.pt", version="0.0.2")


def reloads(metrics_text: str, result: str) -> float:
    line = next(line for line in metrics_text.splitlines() if line.startswith(f'sentiment_model_reloads_total{{result="{result}"}}'))
    return float(line.split()[-1])


@pytest.mark.anyio
async def test_the_admin_route_exists_only_with_an_admin_key_and_needs_it(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        absent = await client.post("/admin/reload", headers=ADMIN)
    async with serve(admin_key="adm1n") as (client, _):
        missing = await client.post("/admin/reload")
        wrong = await client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        api_key_is_not_it = await client.post("/admin/reload", headers={"Authorization": "Basic adm1n"})
    assert absent.status_code == 404
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
    assert api_key_is_not_it.status_code == 401


@pytest.mark.anyio
async def test_a_reload_serves_the_new_file_and_a_bad_file_changes_nothing(
    serve: ServeFactory, tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    async with serve(admin_key="adm1n", model_path=path, load=True) as (client, _):
        before = (await client.get("/model")).json()
        shutil.copy(second_model, path)
        reloaded = await client.post("/admin/reload", headers=ADMIN)
        after = (await client.get("/model")).json()
        answer = (await client.post("/predict", json={"text": "great"})).json()
        oip = (await client.get("/v2/models/tiny-test-model")).json()
        path.write_bytes(b"not a model at all")
        refused = await client.post("/admin/reload", headers=ADMIN)
        still = (await client.get("/model")).json()
        ready = await client.get("/health/ready")
        served = await client.post("/predict", json={"text": "great"})
        metrics = (await client.get("/metrics")).text
    assert (before["version"], reloaded.status_code) == ("0.0.1", 200)
    assert reloaded.json()["version"] == after["version"] == answer["model_version"] == "0.0.2" and oip["versions"] == ["0.0.2"]
    assert after["loaded_at"] > before["loaded_at"] and after["file_sha256"] != before["file_sha256"]
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "reload_failed"
    assert still == after, "a file that fails never replaces the good one"
    assert ready.status_code == 200 and served.status_code == 200 and served.json()["model_version"] == "0.0.2"
    assert (reloads(metrics, "ok"), reloads(metrics, "error")) == (1, 1)
    assert 'sentiment_model_info{device="cpu",name="tiny-test-model",version="0.0.2"} 1.0' in metrics
    assert 'version="0.0.1"' not in metrics.split("sentiment_model_info", 1)[1].split("# HELP", 1)[0]


def forwards(metrics_text: str, kind: str, precision: str) -> float:
    prefix = f'sentiment_forward_seconds_count{{kind="{kind}",precision="{precision}"}}'
    return sum(float(line.split()[-1]) for line in metrics_text.splitlines() if line.startswith(prefix))


@pytest.mark.anyio
async def test_a_reload_loads_the_configured_precision_and_golden_checks_that_route(
    serve: ServeFactory, tmp_path: Path, tiny_model_path: Path, second_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    async with serve(admin_key="adm1n", model_path=path, load=True, precision="bf16") as (client, _):
        before = (await client.get("/metrics")).text
        shutil.copy(second_model, path)
        with caplog.at_level("INFO", logger="app"):
            reloaded = await client.post("/admin/reload", headers=ADMIN)
        after = (await client.get("/model")).json()
        metrics = (await client.get("/metrics")).text
    assert reloaded.status_code == 200 and (after["version"], after["precision"]) == ("0.0.2", "bf16")
    assert "0.0.2" in caplog.text and "in bf16, was" in caplog.text
    # Nothing ran between the two scrapes but the new model's golden check: two plain batches in bf16, one explained in fp32.
    assert forwards(metrics, "predict", "bf16") == forwards(before, "predict", "bf16") + 2
    assert forwards(metrics, "explain", "fp32") == forwards(before, "explain", "fp32") + 1
    assert forwards(metrics, "predict", "fp32") == 0


@pytest.mark.anyio
async def test_the_old_model_is_freed_after_the_swap(serve: ServeFactory, tmp_path: Path, tiny_model_path: Path) -> None:
    import gc
    import weakref

    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    async with serve(admin_key="adm1n", model_path=path, load=True) as (client, app):
        await client.post("/predict", json={"texts": ["great", "awful film"]})
        old = weakref.ref(app.state.service.model)
        assert (await client.post("/admin/reload", headers=ADMIN)).status_code == 200
        await client.post("/predict", json={"text": "great"})
        gc.collect()
        assert old() is None, gc.get_referrers(old()) if old() is not None else ""


@pytest.mark.slow
def test_sighup_under_load_reloads_without_a_failed_request_and_a_bad_file_leaves_serving_intact(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    # One process: /model's loaded_at is that process's (tests/test_process_group.py reloads a group).
    with running_server(path, tmp_path, SENTIMENT_MODEL_WORKERS="2", SENTIMENT_PROCESSES="1") as (process, port, log):
        base = f"http://127.0.0.1:{port}"
        statuses, versions, loaded = asyncio.run(_load_while_reloading(base, process.pid, path, [second_model, tiny_model_path]))
        text = httpx.get(f"{base}/metrics").text
        assert set(statuses) == {200}, f"{len(statuses)} answers, not 200: {[s for s in statuses if s != 200][:5]}\n{log.read_text()}"
        assert len(statuses) > 100 and versions == {"0.0.1", "0.0.2"}
        assert len(set(loaded)) == 3, loaded
        assert reloads(text, "ok") == 2 and reloads(text, "error") == 0

        path.write_bytes(b"\x00garbage, not a TorchScript archive")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while reloads(httpx.get(f"{base}/metrics").text, "error") < 1:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert process.poll() is None
        assert httpx.get(f"{base}/health/ready").status_code == 200
        served = httpx.post(f"{base}/predict", json={"text": "a wonderful film"})
        assert served.status_code == 200 and served.json()["model_version"] == "0.0.1"
        assert httpx.get(f"{base}/model").json()["loaded_at"] == loaded[-1]
        text = httpx.get(f"{base}/metrics").text
        assert reloads(text, "ok") == 2 and reloads(text, "error") == 1
        assert "model reload from" in log.read_text()


async def _load_while_reloading(base: str, pid: int, path: Path, files: list[Path]) -> tuple[list[int], set[str], list[str]]:
    """32 clients post /predict without pause while each of `files` is copied over `path` and the server gets SIGHUP."""
    import os

    statuses: list[int] = []
    versions: set[str] = set()
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient, i: int) -> None:
        while not stop.is_set():
            r = await http.post("/predict", json={"texts": [f"review {i}: a wonderful film", "dull and boring"]})
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.add(r.json()["model_version"])

    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        loaded = [(await http.get("/model")).json()["loaded_at"]]
        clients = [asyncio.create_task(client(http, i)) for i in range(32)]
        for new in files:
            await asyncio.sleep(1.0)
            shutil.copy(new, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)  # atomic, as a volume update or `mv` is
            os.kill(pid, signal.SIGHUP)
            deadline = time.monotonic() + 30
            while (now := (await http.get("/model")).json()["loaded_at"]) == loaded[-1]:
                assert time.monotonic() < deadline, "the reload never happened"
                await asyncio.sleep(0.05)
            loaded.append(now)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
    return statuses, versions, loaded
