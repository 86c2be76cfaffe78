"""Several serving processes on one port (app/process_group.py): to clients and operators, still one service."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from app import process_group
from app.config import Settings
from tests import tiny_model
from tests.live_server import free_port, running_server, serve_command, server_env

ADMIN = {"Authorization": "Bearer adm1n"}


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _shared_anonymous(pid: int) -> float:
    """The part of a process's anonymous memory it shares with others (copy-on-write pages of a fork): 1 - PSS / RSS."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return 1 - int(fields["Pss_Anon"].split()[0]) / int(fields["Anonymous"].split()[0])


def _fresh(base: str, path: str) -> httpx.Response:
    """One request on a new connection: the kernel picks the process by the connection's hash."""
    with httpx.Client(base_url=base, timeout=10) as http:
        return http.get(path)


def _loaded_at(base: str, n: int = 24) -> dict[int, str]:
    """pid -> when it loaded its model, for each process answering `n` new connections."""
    return {(m := _fresh(base, "/model").json())["pid"]: m["loaded_at"] for _ in range(n)}


def _metric(text: str, name: str, labels: str = "") -> list[float]:
    any_labels = r"(?:\{[^}]*\})?"
    pattern = "^" + re.escape(name) + (re.escape(labels) if labels else any_labels) + r" (\S+)$"
    return [float(v) for v in re.findall(pattern, text, re.M)]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build(tmp_path_factory.mktemp("v2") / "tiny-v2.pt", version="0.0.2")


def test_auto_is_two_processes_on_a_multicore_cpu_and_one_on_cuda() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [process_group.resolve(0, cpu, cores) for cores in (1, 2, 16)] == [1, 2, 2]
    assert process_group.resolve(0, cuda, cores=16) == 1
    assert process_group.resolve(3, cpu, cores=2) == 3 and process_group.resolve(2, cuda) == 2
    settings = Settings(max_queue=100, max_items_per_request=100, max_in_flight=7)
    shared = process_group.share(settings, 2)
    assert shared.processes == 2 and (shared.max_queue, shared.max_in_flight) == (100, 7)  # limits are per process


@pytest.mark.slow
def test_two_processes_serve_one_port_count_as_one_and_reload_together(tiny_model_path: Path, second_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    with running_server(path, tmp_path, SENTIMENT_PROCESSES="2", SENTIMENT_ADMIN_KEY="adm1n") as (process, port, log):
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: len(_loaded_at(base)) == 2, 60, "the secondary never answered")
        assert _fresh(base, "/model").json()["processes"] == 2
        before = _loaded_at(base)
        answers = [httpx.post(f"{base}/predict", json={"text": f"a wonderful film {i}"}) for i in range(30)]
        assert {a.status_code for a in answers} == {200}
        text = _fresh(base, "/metrics").text
        assert _metric(text, "sentiment_http_requests_total", '{method="POST",route="/predict",status="200"}') == [30.0]
        assert len(_metric(text, "process_resident_memory_bytes")) == 2  # one series per process

        shutil.copy(second_model, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        process.send_signal(signal.SIGHUP)  # to the primary only: it passes the signal on
        ok = '{result="ok"}'
        _wait(lambda: _metric(_fresh(base, "/metrics").text, "sentiment_model_reloads_total", ok) == [2.0], 30, log.read_text())
        versions = {_fresh(base, "/model").json()["version"] for _ in range(24)}
        after = _loaded_at(base)
        assert versions == {"0.0.2"} and after.keys() == before.keys() and all(after[p] != before[p] for p in after)

        reloaded = httpx.post(f"{base}/admin/reload", headers=ADMIN)  # one process answers, the other follows
        assert reloaded.status_code == 200
        _wait(lambda: _metric(_fresh(base, "/metrics").text, "sentiment_model_reloads_total", ok) == [4.0], 30, log.read_text())
        time.sleep(0.5)
        assert _metric(_fresh(base, "/metrics").text, "sentiment_model_reloads_total", ok) == [4.0]  # each once, no echo


@pytest.mark.slow
def test_a_dead_secondary_is_replaced_and_one_without_its_primary_drains(tiny_model_path: Path, tmp_path: Path) -> None:
    with running_server(tiny_model_path, tmp_path, SENTIMENT_PROCESSES="2", SENTIMENT_DRAIN_DELAY_S="0") as (process, port, log):
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: len(_loaded_at(base)) == 2, 60, "the secondary never answered")
        (first,) = _children(process.pid)
        assert _shared_anonymous(first) > 0.3, "a forked secondary shares the primary's imported code and model"
        os.kill(first, signal.SIGKILL)
        _wait(lambda: len(_children(process.pid)) == 1 and _children(process.pid) != [first], 30, log.read_text())
        (second,) = _children(process.pid)
        _wait(lambda: len(_loaded_at(base)) == 2, 60, "the new secondary never answered")
        assert "secondary 1 (pid" in log.read_text()
        assert _shared_anonymous(second) < 0.1, "a restart is spawned: the primary has threads by then, so no fork"

        process.kill()  # the primary dies without passing anything on
        process.wait()
        _wait(lambda: not _alive(second), 30, f"the orphaned secondary kept running\n{log.read_text()}")
        assert "the primary serving process is gone: draining" in log.read_text()


@pytest.mark.slow
def test_a_port_held_by_another_server_is_refused_not_shared(tiny_model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as other:  # another server, without SO_REUSEPORT
        other.bind(("127.0.0.1", port))
        other.listen()
        env = server_env(tiny_model_path, SENTIMENT_HOST="127.0.0.1", SENTIMENT_PROCESSES="2")
        done = subprocess.run([*serve_command(), "--port", str(port)], env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.slow
def test_a_secondary_whose_primary_died_while_it_was_loading_drains_once_started(tiny_model_path: Path, tmp_path: Path) -> None:
    """The primary is killed before its secondary has loaded the model: the secondary must not take its new parent for
    its primary and serve on, orphaned, for ever."""
    env = server_env(tiny_model_path, SENTIMENT_HOST="127.0.0.1", SENTIMENT_PROCESSES="2", SENTIMENT_DRAIN_DELAY_S="0")
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        primary = subprocess.Popen(
            [*serve_command(), "--port", str(free_port())], env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        _wait(lambda: primary.poll() is None and len(_children(primary.pid)) == 1, 60, log.read_text())
        (secondary,) = _children(primary.pid)
    finally:
        primary.kill()
        primary.wait()
    _wait(lambda: not _alive(secondary), 60, f"the secondary outlived its primary\n{log.read_text()}")
    assert "the primary serving process is gone: draining" in log.read_text()
