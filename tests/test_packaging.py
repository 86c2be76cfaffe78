"""Packaging: Dockerfile, docker-compose.yml, .dockerignore, deploy/kubernetes.yaml, README quickstart, .ci/run.

The container files are checked statically here (parsed, then cross-checked
against the repository, pyproject.toml and the service's Settings), so a
mistake shows without a container engine; tests/test_container.py builds and
runs the image for real where one is available. The health probe they all share is then run for real, as
a subprocess, against a real `sentiment-serve` process serving a tiny model.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENV_PREFIX = "SENTIMENT_"
DEFAULT_MODEL_PATH = "models/sentiment.pt"


# --------------------------------------------------------------------------------------------------
# Dockerfile parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage (a new stage at each FROM); ARGs before the first FROM form stage 0's prelude."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue  # blank line, comment or parser directive
        if current and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        logical.append((current + line).strip())
        current = ""
    if current.strip():
        logical.append(current.strip())
    stages: list[list[Instruction]] = [[]]
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM" and any(i.keyword == "FROM" for i in stages[-1]):
            stages.append([])
        stages[-1].append(instruction)
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on the shell form."""
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"not exec form: {args}"
    assert all(isinstance(a, str) for a in parsed), args
    return parsed


def healthcheck_command(stage: list[Instruction]) -> list[str]:
    (check,) = [i for i in stage if i.keyword == "HEALTHCHECK"]
    options, cmd, rest = check.args.partition("CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {check.args}"
    assert all(o.startswith("--") for o in options.split()), options
    return exec_form(rest)


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in stage:
        if i.keyword == "ENV":
            for item in shlex.split(i.args):
                key, sep, value = item.partition("=")
                assert sep, f"use ENV KEY=VALUE, not the legacy form: {i.args}"
                env[key] = value
    return env


def args_of(stages: list[list[Instruction]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for stage in stages:
        for i in stage:
            if i.keyword == "ARG":
                name, _, default = i.args.partition("=")
                out[name] = default.strip('"')
    return out


# --------------------------------------------------------------------------------------------------
# .dockerignore


def dockerignore_patterns() -> list[tuple[str, bool]]:
    """(pattern, negated) in file order, normalised like Docker does (no leading ./ or /)."""
    out = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().removeprefix("./").lstrip("/").rstrip("/")
        out.append((pattern, negated))
    return out


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: `*` and `?` stay within one path segment, `**` spans any number."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str) -> bool:
    """Whether `path` (relative to the context) is left out of the build context: it or a parent matches; the last match wins."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern, negated in dockerignore_patterns():
        if any(pattern_regex(pattern).match(c) for c in candidates):
            ignored = not negated
    return ignored


# --------------------------------------------------------------------------------------------------
# The service's settings (skipped until app/config.py exists)


def settings_class():
    if not (ROOT / "app" / "config.py").exists():
        pytest.skip("app/config.py does not exist yet")
    return importlib.import_module("app.config").Settings


def settings_fields() -> dict[str, object]:
    """Settings field name -> default."""
    return {name: field.default for name, field in settings_class().model_fields.items()}


def settings_env_names() -> set[str]:
    cls = settings_class()
    prefix = cls.model_config.get("env_prefix", "")
    assert prefix.upper() == ENV_PREFIX
    return {f"{ENV_PREFIX}{name.upper()}" for name in cls.model_fields}


# --------------------------------------------------------------------------------------------------
# Files


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def kube() -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()) if d]


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text()


def quickstart_commands(readme: str) -> list[str]:
    """The shell commands in the README's Quickstart section, one per ```bash block line (comments dropped)."""
    match = re.search(r"^## Quickstart\b.*?(?=^## )", readme, re.S | re.M)
    assert match, "README has no '## Quickstart' section"
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", match.group(0), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


# ==================================================================================================
# Dockerfile


def test_dockerfile_is_multi_stage_on_python_311_slim(stages: list[list[Instruction]]) -> None:
    assert len(stages) >= 2
    base = args_of(stages).get("PYTHON_IMAGE")
    for stage in stages:
        source = next(i for i in stage if i.keyword == "FROM").args.split()[0]
        assert source.replace("${PYTHON_IMAGE}", base or "") == "python:3.11-slim"
    assert any("--from=" in i.args for i in stages[-1] if i.keyword == "COPY"), "the runtime stage copies the builder's venv"


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context(stages: list[list[Instruction]]) -> None:
    copies = [i for stage in stages for i in stage if i.keyword in {"COPY", "ADD"} and "--from=" not in i.args]
    assert copies
    for copy in copies:
        words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
        *sources, _dest = words
        for source in sources:
            assert (ROOT / source).exists(), f"{copy.keyword} {copy.args}: {source} is not in the repository"
            assert not dockerignored(source), f"{source} is COPYed but .dockerignore leaves it out of the build context"


def test_dockerfile_copies_every_top_level_package_before_installing(stages: list[list[Instruction]]) -> None:
    """`pip install .` fails in the image when a package listed in pyproject.toml was not COPYed in."""
    copied = {
        shlex.split(i.args)[0].rstrip("/")
        for stage in stages
        for i in stage
        if i.keyword == "COPY" and "--from=" not in i.args and len(shlex.split(i.args)) == 2
    }
    top_level = {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}
    assert top_level <= copied, f"packages not copied into the build: {sorted(top_level - copied)}"


def test_dockerfile_installs_cpu_torch_at_the_pyproject_pin_and_the_package_non_editable(stages: list[list[Instruction]]) -> None:
    args = args_of(stages)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pins = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"torch\b", d)]
    assert pins == [f"torch=={args['TORCH_VERSION']}"], "Dockerfile TORCH_VERSION must equal pyproject's torch pin"
    runs = " ".join(i.args for stage in stages for i in stage if i.keyword == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}"' in runs and "torch==${TORCH_VERSION}" in runs
    installs = re.findall(r"pip install (.*)", runs)
    assert not any(re.search(r"(^|\s)(-e|--editable)\s", cmd) for cmd in installs), "the image installs the package non-editable"


def test_dockerfile_runs_as_non_root_user(final: list[Instruction]) -> None:
    keywords = [i.keyword for i in final]
    assert "USER" in keywords, "the runtime stage sets USER"
    user_index = max(n for n, k in enumerate(keywords) if k == "USER")
    assert user_index < keywords.index("CMD")
    user = final[user_index].args.split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric UID lets Kubernetes' runAsNonRoot verify it"


def test_dockerfile_serves_the_baked_model_from_workdir(final: list[Instruction]) -> None:
    workdir = [i.args for i in final if i.keyword == "WORKDIR"][-1]
    copies_models = [i for i in final if i.keyword == "COPY" and shlex.split(i.args)[0].rstrip("/") == "models"]
    assert copies_models, "the runtime stage bakes in models/"
    assert env_of(final)[f"{ENV_PREFIX}MODEL_PATH"] == f"{workdir}/{DEFAULT_MODEL_PATH}"


def test_settings_default_model_path_resolves_from_the_image_workdir(
    final: list[Instruction], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even without SENTIMENT_MODEL_PATH, a server started in the image's WORKDIR finds the baked model."""
    settings = settings_class()
    workdir = tmp_path / [i.args for i in final if i.keyword == "WORKDIR"][-1].lstrip("/")
    (workdir / DEFAULT_MODEL_PATH).parent.mkdir(parents=True)
    (workdir / DEFAULT_MODEL_PATH).touch()
    monkeypatch.chdir(workdir)
    monkeypatch.delenv(f"{ENV_PREFIX}MODEL_PATH", raising=False)
    assert Path(settings().model_path).resolve() == (workdir / DEFAULT_MODEL_PATH).resolve()


def test_dockerfile_exposes_8000_and_it_is_the_settings_default_port(final: list[Instruction]) -> None:
    assert [i.args for i in final if i.keyword == "EXPOSE"] == ["8000", "8001"]
    assert settings_fields()["port"] == 8000
    assert "SENTIMENT_GRPC_PORT=8001" in [i.args for i in final if i.keyword == "ENV"]  # gRPC on, on the exposed port


def test_dockerfile_healthcheck_probes_readiness_with_python(final: list[Instruction]) -> None:
    command = healthcheck_command(final)
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/health/ready" in command[2]


def test_dockerfile_cmd_is_exec_form_sentiment_serve_on_8000(final: list[Instruction]) -> None:
    assert [i.args for i in final if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    assert not [i for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i for i in final if i.keyword == "CMD"]
    argv = exec_form(cmd.args)  # exec form: the server is PID 1 and gets SIGTERM itself
    assert argv == ["sentiment-serve", "--host", "0.0.0.0", "--port", "8000"]
    assert argv[0] in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_point_at_importable_callables(script: str) -> None:
    module, _, attr = PYPROJECT["project"]["scripts"][script].partition(":")
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        pytest.skip(f"{module} does not exist yet")
    assert callable(getattr(importlib.import_module(module), attr))


def test_setuptools_lists_every_package_and_the_static_files() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("app", "contract", "scoring", "training")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
    assert "static/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["app"]


def test_dockerignore_keeps_venv_data_git_and_caches_out() -> None:
    for path in (".venv", "data", "data/aclImdb.tar.gz", ".git", ".pytest_cache", "app/__pycache__", "tests", "aclImdb"):
        assert dockerignored(path), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "app/main.py", "contract", "training", "models/sentiment.pt"):
        assert not dockerignored(path), f"{path} is needed in the build context"


# ==================================================================================================
# docker-compose.yml


def test_compose_services_and_profiles(compose: dict) -> None:
    services = compose["services"]
    assert "profiles" not in services["api"], "`docker compose up` starts the CPU api"
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert services["train"]["profiles"] == ["train"]


def test_compose_builds_with_dockerfile_args(compose: dict, stages: list[list[Instruction]]) -> None:
    declared = set(args_of(stages))
    for name, service in compose["services"].items():
        assert service["build"]["context"] == ".", name
        assert set(service["build"].get("args", {})) <= declared, f"{name} passes a build arg the Dockerfile does not declare"
    dockerfile = args_of(stages)
    for name in ("api", "train"):
        args = compose["services"][name]["build"]["args"]
        for arg in ("TORCH_INDEX_URL", "PYTHON_IMAGE"):  # overridable from the environment (mirrors, air gaps), same defaults
            assert args[arg] == f"${{{arg}:-{dockerfile[arg]}}}", (name, arg)
    gpu = compose["services"]["api-gpu"]["build"]["args"]
    assert gpu["PYTHON_IMAGE"] == f"${{PYTHON_IMAGE:-{dockerfile['PYTHON_IMAGE']}}}"
    assert gpu["TORCH_INDEX_URL"].startswith("${") and "download.pytorch.org/whl/cpu" not in gpu["TORCH_INDEX_URL"]


def test_compose_api_publishes_the_settings_default_port(compose: dict) -> None:
    port = settings_fields()["port"]
    assert compose["services"]["api"]["ports"] == [f"${{API_PORT:-{port}}}:{port}", "${API_GRPC_PORT:-9001}:8001"]
    assert compose["services"]["api-gpu"]["ports"][0].endswith(f":{port}")
    assert compose["services"]["api-gpu"]["ports"][1].endswith(":8001")  # the image's SENTIMENT_GRPC_PORT


def test_compose_healthchecks_are_the_dockerfile_probe(compose: dict, final: list[Instruction]) -> None:
    for name in ("api", "api-gpu"):
        check = compose["services"][name]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert check["test"][1:] == healthcheck_command(final), name
        assert "/health/ready" in check["test"][-1]


def test_compose_gpu_service_reserves_an_nvidia_gpu(compose: dict) -> None:
    devices = compose["services"]["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_compose_train_mounts_data_and_models_and_runs_sentiment_train(compose: dict, final: list[Instruction]) -> None:
    train = compose["services"]["train"]
    assert train["build"]["args"]["EXTRAS"] == "train"
    (data,) = [v for v in train["volumes"] if ":/data:" in v]
    assert data == "${IMDB_DATA_DIR:-./data}:/data:ro"  # where users have it, not the dev machines' ../shared
    workdir = [i.args for i in final if i.keyword == "WORKDIR"][-1]
    assert f"./models:{workdir}/models" in train["volumes"]  # where the default --out models/sentiment.pt lands
    assert train["working_dir"] == workdir
    assert train["command"][:3] == ["sentiment-train", "--data", "/data/${IMDB_DATA_FILE:-aclImdb_v1.tar.gz}"]
    assert train["command"][0] in PYPROJECT["project"]["scripts"]


def test_every_sentiment_variable_in_deploy_files_is_a_setting(compose: dict, kube: list[dict], final: list[Instruction]) -> None:
    known = settings_env_names()
    used = {k for k in env_of(final) if k.startswith(ENV_PREFIX)}
    for service in compose["services"].values():
        used |= {k for k in service.get("environment", {}) if k.startswith(ENV_PREFIX)}
    for doc in kube:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            used |= {e["name"] for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)}
    assert used, "the deploy files set SENTIMENT_MODEL_PATH at least"
    assert used <= known, f"not settings of the service: {sorted(used - known)}"


# ==================================================================================================
# Kubernetes


def test_kubernetes_deployment_probes_security_and_service(kube: list[dict], final: list[Instruction]) -> None:
    kinds = {d["kind"]: d for d in kube}
    assert set(kinds) == {"Deployment", "Service"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 10
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = [i.args for i in final if i.keyword == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == uid
    (container,) = pod["containers"]
    port, grpc_port = container["ports"]
    assert port["containerPort"] == 8000
    assert grpc_port == {"name": "grpc", "containerPort": 8001}
    assert container["readinessProbe"]["grpc"] == {"port": 8001}  # grpc.health.v1, the same readiness as /health/ready
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": port["name"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert kinds["Service"]["spec"]["selector"] == labels
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= settings_env_names(), "every variable the manifest sets is a real setting"
    threads = int(env.get("SENTIMENT_MODEL_WORKERS", 0)) * int(env.get("SENTIMENT_TORCH_THREADS", 0))
    assert 0 < threads <= float(container["resources"]["requests"]["cpu"]), "the auto plan sees the node's cores: pin it to the request"


# ==================================================================================================
# README and CI


def test_readme_has_exactly_two_quickstart_commands(readme: str) -> None:
    serve, test = quickstart_commands(readme)
    assert serve.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install ")
    assert serve.endswith("&& sentiment-serve")
    assert test.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'")
    assert test.endswith("&& pytest")


def test_ci_runs_the_readme_test_command_verbatim(readme: str) -> None:
    _serve, test = quickstart_commands(readme)
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")][-1] == test, (
        "the README's test command must be .ci/run's last line"
    )


def test_ci_script_is_strict_executable_bash() -> None:
    path = ROOT / ".ci" / "run"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in [line.strip() for line in text.splitlines()[:10]]
    assert os.access(path, os.X_OK)
    assert "chromium chromium-driver" in text
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_readme_configuration_table_lists_every_setting_with_its_default(readme: str) -> None:
    rows = dict(re.findall(r"^\| `(SENTIMENT_\w+)` \| (.*?) \|", readme, re.M))
    assert set(rows) == settings_env_names(), "README's configuration table and app/config.py Settings differ"
    for name, default in settings_fields().items():
        if isinstance(default, bool):
            assert rows[f"{ENV_PREFIX}{name.upper()}"] == f"`{str(default).lower()}`", name
        elif isinstance(default, int | float | str):
            assert rows[f"{ENV_PREFIX}{name.upper()}"] == f"`{default}`", name


def test_grace_periods_outlast_the_shutdown_drain(compose: dict, kube: list[dict]) -> None:
    """The orchestrator must not SIGKILL before the server's own drain ends: grace > drain delay + shutdown timeout."""
    drain = settings_fields()["drain_delay_s"] + settings_fields()["shutdown_timeout_s"]
    for name in ("api", "api-gpu"):
        assert compose["services"][name]["stop_signal"] == "SIGTERM"
        grace = compose["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > drain, name
    (deployment,) = [d for d in kube if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


# ==================================================================================================
# The probe, for real


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class Server:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_command() -> list[str]:
    """The installed console script when there is one (it is what the image runs), else the same entry point."""
    script = Path(sys.executable).with_name("sentiment-serve")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from app.main import cli; sys.argv[0] = 'sentiment-serve'; sys.exit(cli())"]


def start_server(model: Path) -> Iterator[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= {f"{ENV_PREFIX}MODEL_PATH": str(model), f"{ENV_PREFIX}DEVICE": "cpu", f"{ENV_PREFIX}TORCH_THREADS": "1"}
    process = subprocess.Popen(
        [*serve_command(), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(process, port)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"sentiment-serve exited {process.returncode}:\n{process.stdout.read()}")
            try:
                if get_status(server.url + "/health/ready") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("sentiment-serve did not become ready within 90 s")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[Server]:
    yield from start_server(tiny_model_path)


def probe_argv(final: list[Instruction], port: int) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, aimed at `port`, run by this interpreter."""
    command = healthcheck_command(final)
    assert command[0] == "python"
    return [sys.executable, *[arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in command[1:]]]


def test_healthcheck_command_passes_against_a_ready_server(server: Server, final: list[Instruction]) -> None:
    result = subprocess.run(probe_argv(final, server.port), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_healthcheck_command_fails_when_nothing_listens(final: list[Instruction]) -> None:
    result = subprocess.run(probe_argv(final, free_port()), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0


def test_probe_paths_of_every_deploy_file_are_live_routes(
    server: Server, compose: dict, kube: list[dict], final: list[Instruction]
) -> None:
    paths = set(re.findall(r"127\.0\.0\.1:8000(/[\w/]+)", " ".join(healthcheck_command(final))))
    for service in compose["services"].values():
        if "healthcheck" in service:
            paths |= set(re.findall(r"127\.0\.0\.1:8000(/[\w/]+)", " ".join(service["healthcheck"]["test"])))
    for doc in kube:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
            paths |= {probe["httpGet"]["path"] for probe in probes if "httpGet" in probe}
    assert paths == {"/health/ready", "/health/live"}
    for path in sorted(paths):
        assert get_status(server.url + path) == 200, path


def test_server_stops_promptly_on_sigterm(tiny_model_path: Path) -> None:
    """What STOPSIGNAL SIGTERM + exec-form CMD rely on: the server itself exits cleanly on SIGTERM."""
    servers = start_server(tiny_model_path)
    server = next(servers)
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=15)
    finally:
        servers.close()
    assert code == 0


def readme_api_section(readme: str) -> str:
    match = re.search(r"^## Using the API\b.*?(?=^## )", readme, re.S | re.M)
    assert match, "README has no '## Using the API' section"
    return match.group(0)


def test_readme_curl_examples_work_against_a_real_server(server: Server, readme: str) -> None:
    served = json.loads(urllib.request.urlopen(server.url + "/model", timeout=5).read())["name"]
    commands = [shlex.split(line, comments=True) for line in readme_api_section(readme).splitlines() if line.startswith("curl ")]
    assert len(commands) >= 5
    for argv in commands:
        assert argv[:2] == ["curl", "-s"], argv
        url = argv[2]
        assert url.startswith("localhost:8000/"), url
        path = url.removeprefix("localhost:8000").replace("/v2/models/imdb-bilstm", f"/v2/models/{served}")
        options = dict(zip(argv[3::2], argv[4::2], strict=True))
        body = options.get("-d")
        request = urllib.request.Request(
            server.url + path, data=body.encode() if body else None, headers={"Content-Type": "application/json"} if body else {}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, " ".join(argv)
            answer = json.loads(response.read())
        if path == "/predict":
            sent = json.loads(body)
            assert len(answer["predictions"]) == len(sent.get("texts", [None]))
            assert all(p["label"] in {"positive", "negative"} for p in answer["predictions"])
            assert (answer["predictions"][0]["explanation"] is not None) == sent.get("explain", False)
        elif path.endswith("/infer"):
            assert answer["outputs"][0]["name"] == "p_positive" and len(answer["outputs"][0]["data"]) == 2


def test_readme_httpx_example_runs_against_a_real_server(server: Server, readme: str) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", readme_api_section(readme), re.S)
    assert "http://localhost:8000" in code
    result = subprocess.run(
        [sys.executable, "-c", code.replace("http://localhost:8000", server.url)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 2 and all(line.split()[0] in {"positive", "negative"} for line in lines), result.stdout
