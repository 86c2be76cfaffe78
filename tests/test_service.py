"""The lifecycle object: readiness with its reason, the drain delay, listeners stopped before the runner closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from app.config import Settings
from app.metrics import Metrics
from app.service import GOLDEN_FAILED, NOT_LOADED, READY, SHUTTING_DOWN, Service
from contract.artifact import Artifact

pytestmark = pytest.mark.anyio


async def test_readiness_follows_the_lifecycle_with_a_reason(make_settings: Callable[..., Settings], tiny_artifact: Artifact) -> None:
    service = Service(make_settings(drain_delay_s=0.3), Metrics(), tiny_artifact)
    assert service.ready() == (False, NOT_LOADED)
    await service.start()
    assert service.ready() == (True, READY)
    drained: list[float] = []
    service.on_drain(lambda: drained.append(time.monotonic()))
    began = time.monotonic()
    service.begin_drain()
    assert service.draining and service.ready() == (False, SHUTTING_DOWN)
    assert drained and drained[0] - began < 0.05, "drain callbacks run at once"
    assert service.accepting, "requests are still served during the drain delay"
    await service.drain_delay_passed()
    assert time.monotonic() - began >= 0.29
    await service.stop()
    assert not service.accepting and service.ready() == (False, SHUTTING_DOWN)
    await service.start()  # a restarted lifespan serves again
    assert service.ready() == (True, READY)
    await service.stop()


async def test_listeners_stop_after_the_delay_and_before_the_runner_closes(
    make_settings: Callable[..., Settings], tiny_artifact: Artifact
) -> None:
    service = Service(make_settings(drain_delay_s=0.2), Metrics(), tiny_artifact)
    await service.start()
    events: list[tuple[str, float, bool]] = []

    async def stop_grpc() -> None:
        events.append(("stop called", time.monotonic(), service.accepting))
        await asyncio.sleep(0.1)  # finishing its in-flight calls, which still reach the model
        await service.predict(["still served while the other server drains"])
        events.append(("stopped", time.monotonic(), service.accepting))

    service.add_listener(stop_grpc)
    began = time.monotonic()
    service.begin_drain()
    service.begin_drain(delay=0)  # idempotent: the first delay stands
    await asyncio.sleep(0.1)
    assert events == [], "listeners keep serving during the drain delay"
    await service.drain_delay_passed()
    await service.stop()
    assert [e[0] for e in events] == ["stop called", "stopped"]
    assert events[0][1] - began >= 0.19 and events[0][2] and events[1][2], "the runner was open until the listener stopped"
    assert not service.accepting


async def test_stop_without_a_signal_does_not_wait_for_the_delay(make_settings: Callable[..., Settings], tiny_artifact: Artifact) -> None:
    service = Service(make_settings(drain_delay_s=30), Metrics(), tiny_artifact)
    await service.start()
    service.begin_drain()
    began = time.monotonic()
    await service.stop()  # the lifespan ended: the HTTP server is already done
    assert time.monotonic() - began < 5


async def test_a_model_failing_the_golden_check_is_never_ready(
    make_settings: Callable[..., Settings], tiny_artifact: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import service as service_module

    monkeypatch.setattr(service_module, "golden_check", lambda runner: False)
    service = Service(make_settings(), Metrics(), tiny_artifact)
    await service.start()
    assert service.ready() == (False, GOLDEN_FAILED)
    await service.stop()


def test_metrics_imports_nothing_from_app() -> None:
    import ast
    from pathlib import Path

    import app.metrics

    tree = ast.parse(Path(app.metrics.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m == "app" or m.startswith("app.")}, imported
