"""The image, built and run for real with podman (or docker), and the compose `api` service brought up.

Marked `container`; every test skips, saying why, where no container engine works
(a `docker` CLI without a daemon counts as none). The build arguments come from
the environment, with the Dockerfile's defaults:

- `PYTHON_IMAGE` and `TORCH_INDEX_URL`, both required (the Dockerfile's defaults are
  `python:3.11-slim` and the CPU torch index): tests never touch the network unasked.
  On machines without Docker Hub, `../shared/tools/container-setup` prints local
  stand-ins for both; `.ci/run` exports them. Unset, or where the base image cannot
  be pulled or the index does not answer, the tests skip, saying so.
- `CONTAINER_ENGINE` picks the engine (default: podman, else docker; `none` skips these tests).

The image is built once per session (`sentiment-service:test`, with host
networking so a local index on 127.0.0.1 is reachable); the build time is printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from app.config import Settings
from tests.live_server import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
TAG = "sentiment-service:test"
READY_WITHIN_S = 30.0
# Texts whose labels no reasonable sentiment model gets wrong (not the start-up golden check's own pair).
GOLDEN = [
    (
        "One of the best films I have seen in years. The cast is superb, the script is witty and moving, and I loved every minute of it.",
        "positive",
    ),
    ("What a waste of two hours. The plot is a boring mess, the dialogue is awful and the acting is terrible. Avoid.", "negative"),
    ("A beautiful, brilliant and touching masterpiece. Wonderful performances all round.", "positive"),
    ("Dull, boring and awful: the worst film of the year, a complete waste of time.", "negative"),
]


def build_args() -> dict[str, str]:
    return {
        "PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE", "python:3.11-slim"),
        "TORCH_INDEX_URL": os.environ.get("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu"),
    }


def compose_grace_s() -> float:
    grace = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["stop_grace_period"]
    assert grace.endswith("s")
    return float(grace[:-1])


def find_engine() -> tuple[str | None, str]:
    """(engine, why not) — an engine whose `info` answers, or None and the reason."""
    wanted = os.environ.get("CONTAINER_ENGINE")
    if wanted == "none":
        return None, "container tests turned off (CONTAINER_ENGINE=none: .ci/run sets it when container-setup cannot run)"
    tried = []
    for name in [wanted] if wanted else ["podman", "docker"]:
        if shutil.which(name) is None:
            tried.append(f"{name}: not installed")
            continue
        probe = subprocess.run([name, "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return name, ""
        tried.append(f"{name}: `{name} info` failed ({(probe.stderr.strip().splitlines() or ['?'])[-1][:120]})")
    return None, "no working container engine (" + "; ".join(tried) + "); on these machines run ../shared/tools/container-setup"


def run(*command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def engine() -> str:
    name, why = find_engine()
    if name is None:
        pytest.skip(why)
    return name


def unreachable_build_inputs(engine: str) -> str | None:
    """Why the build cannot start here (base image not pullable, torch index not answering), or None.

    An environment without registry access is a reason to skip, not a failure of the image. The build
    needs registries, so it runs only when both build arguments are given explicitly: plain `pytest`
    never reaches for Docker Hub or download.pytorch.org on its own."""
    if missing := [key for key in ("PYTHON_IMAGE", "TORCH_INDEX_URL") if not os.environ.get(key)]:
        return (
            f"{' and '.join(missing)} not set (the build needs a base image and a torch index; set them, e.g. to the Dockerfile's defaults)"
        )
    args = build_args()
    base = args["PYTHON_IMAGE"]
    if run(engine, "image", "inspect", base, check=False).returncode != 0:
        pulled = run(engine, "pull", base, timeout=300, check=False)
        if pulled.returncode != 0:
            return f"base image {base} is not available ({(pulled.stderr.strip().splitlines() or ['?'])[-1][:120]})"
    index = args["TORCH_INDEX_URL"].rstrip("/") + "/torch/"
    try:
        httpx.get(index, timeout=10, follow_redirects=True).raise_for_status()
    except httpx.HTTPError as exc:
        return f"torch index {index} does not answer ({type(exc).__name__})"
    return None


@pytest.fixture(scope="session")
def image(engine: str) -> str:
    if why := unreachable_build_inputs(engine):
        pytest.skip(f"{why}; on machines without Docker Hub run ../shared/tools/container-setup and export what it prints")
    command = [engine, "build", "--network", "host", "-t", TAG, "-f", str(ROOT / "Dockerfile")]
    if engine == "podman":
        command += ["--format", "docker"]  # podman's default OCI format drops HEALTHCHECK
    for key, value in build_args().items():
        command += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    result = subprocess.run([*command, str(ROOT)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(
            f"{engine} build failed with {build_args()}; without Docker Hub and download.pytorch.org, run "
            f"../shared/tools/container-setup and export the PYTHON_IMAGE and TORCH_INDEX_URL it prints.\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    size = run(engine, "image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip()
    print(f"\n{engine} build of {TAG}: {time.monotonic() - started:.1f} s, image size {int(size) / 1e6:.0f} MB")
    return TAG


@dataclass
class Container:
    engine: str
    id: str
    port: int
    ready_s: float

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self, template: str) -> str:
        return run(self.engine, "inspect", "--format", template, self.id).stdout.strip()

    def logs(self) -> str:
        result = run(self.engine, "logs", self.id, check=False)
        return result.stdout + result.stderr


def wait_ready(engine: str, cid: str, base: str, started: float, timeout: float = 90.0) -> float:
    """Seconds from `started` until /health/ready answers 200; fails if the container exits first."""
    while True:
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        state = run(engine, "inspect", "--format", "{{.State.Status}}", cid, check=False).stdout.strip()
        logs = run(engine, "logs", cid, check=False)
        assert state == "running", f"container {state}:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        assert time.monotonic() - started < timeout, f"not ready after {timeout} s:\n{logs.stderr[-3000:]}"
        time.sleep(0.1)


@contextlib.contextmanager
def container(engine: str, image: str, *options: str) -> Iterator[Container]:
    port = free_port()
    started = time.monotonic()
    cid = run(engine, "run", "-d", "-p", f"127.0.0.1:{port}:8000", *options, image).stdout.strip()
    try:
        yield Container(engine, cid, port, wait_ready(engine, cid, f"http://127.0.0.1:{port}", started))
    finally:
        run(engine, "rm", "-f", "-t", "0", cid, check=False)


@pytest.fixture(scope="module")
def served(engine: str, image: str) -> Iterator[Container]:
    with container(engine, image) as running:
        yield running


def assert_golden(base: str) -> None:
    reply = httpx.post(f"{base}/predict", json={"texts": [text for text, _ in GOLDEN]}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert [p["label"] for p in reply.json()["predictions"]] == [label for _, label in GOLDEN]


def test_ready_within_30_s_serving_the_committed_model(served: Container) -> None:
    print(f"\ncontainer ready in {served.ready_s:.1f} s")
    assert served.ready_s <= READY_WITHIN_S, f"ready after {served.ready_s:.1f} s"
    info = httpx.get(f"{served.base}/model", timeout=10).json()
    assert info["file_sha256"] == hashlib.sha256((ROOT / "models" / "sentiment.pt").read_bytes()).hexdigest()


def test_runs_as_uid_10001_not_root(served: Container) -> None:
    assert run(served.engine, "exec", served.id, "id", "-u").stdout.strip() == "10001"
    status = run(served.engine, "exec", served.id, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4, "the server (PID 1) must not run as root"


def test_golden_texts_get_their_labels(served: Container) -> None:
    assert_golden(served.base)


def test_image_healthcheck_reports_healthy(served: Container) -> None:
    if served.engine == "podman":
        result = run("podman", "healthcheck", "run", served.id, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    deadline = time.monotonic() + 60  # docker runs the first check after --interval (15 s)
    while (health := served.inspect("{{.State.Health.Status}}")) != "healthy":
        assert health == "starting" and time.monotonic() < deadline, health
        time.sleep(1)


def test_read_only_root_filesystem_and_sigterm_exits_0_well_inside_the_grace_period(engine: str, image: str) -> None:
    grace = compose_grace_s()
    drain_delay = Settings.model_fields["drain_delay_s"].default
    with container(engine, image, "--read-only", "--tmpfs", "/tmp") as ro:
        assert ro.ready_s <= READY_WITHIN_S, f"ready after {ro.ready_s:.1f} s"
        assert run(engine, "exec", ro.id, "touch", "/srv/sentiment/x", check=False).returncode != 0, "the root filesystem is writable"
        assert_golden(ro.base)
        started = time.monotonic()
        run(engine, "stop", "-t", str(int(grace)), ro.id, timeout=grace + 30)
        took = time.monotonic() - started
        code = ro.inspect("{{.State.ExitCode}}")
        logs = ro.logs()
    print(f"\nread-only container: ready in {ro.ready_s:.1f} s; podman stop -> exit {code} in {took:.1f} s (grace {grace:.0f} s)")
    assert code == "0", f"exit code {code} after SIGTERM:\n{logs[-3000:]}"
    assert drain_delay <= took < grace / 2, f"stopped in {took:.1f} s; drain delay {drain_delay} s, grace period {grace} s"


def compose_command(engine: str) -> list[str] | None:
    if engine == "podman":
        return ["podman-compose"] if shutil.which("podman-compose") else None
    return ["docker", "compose"] if run("docker", "compose", "version", check=False).returncode == 0 else None


def test_compose_api_service_builds_and_gets_ready(engine: str, image: str) -> None:
    compose = compose_command(engine)
    if compose is None:
        pytest.skip(f"no compose tool for {engine} (podman-compose or the docker compose plugin)")
    project = f"sentiment-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # BUILDAH_FORMAT: podman's default OCI image format would drop the HEALTHCHECK.
    env = {**os.environ, **build_args(), "API_PORT": str(port), "COMPOSE_PROJECT_NAME": project, "BUILDAH_FORMAT": "docker"}
    # Host networking for the build only, so a local index on 127.0.0.1 is reachable; the service keeps compose's network.
    build_network = ["--podman-build-args=--network host"] if engine == "podman" else []
    base = [*compose, "-p", project, "-f", str(ROOT / "docker-compose.yml")]
    started = time.monotonic()
    try:
        built = subprocess.run([*base, *build_network, "build", "api"], capture_output=True, text=True, env=env, timeout=1800)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        up = subprocess.run([*base, "up", "-d", "api"], capture_output=True, text=True, env=env, timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        deadline = time.monotonic() + 90
        while True:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1)
                if reply.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run([*base, "logs", "api"], capture_output=True, text=True, env=env)
                pytest.fail(f"compose api not ready after 90 s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(0.2)
        print(f"\ncompose build + up + ready: {time.monotonic() - started:.1f} s")
        assert_golden(f"http://127.0.0.1:{port}")
    finally:
        subprocess.run([*base, "down", "-t", "40"], capture_output=True, env=env, timeout=120)
