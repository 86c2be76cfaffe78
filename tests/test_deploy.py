"""Deploy manifests (every YAML file under deploy/): valid Kubernetes objects, offline, that agree with the app.

Core kinds are validated against the Kubernetes OpenAPI schemas that kubernetes-validate ships (strict: an unknown
or misspelt field fails), for the oldest release the manifests need (1.27: gRPC probes GA) and the newest bundled.
KServe's InferenceService is a CRD, absent from those schemas: its pod part (the predictor's inlined PodSpec fields)
is validated as a core Pod, and its KServe fields are checked here explicitly. Ports, probes and SENTIMENT_*
variables are checked against the app itself (its Settings class, the routes of a real app, the image's Dockerfile
and docker-compose.yml), so nothing here repeats a list the app owns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from app.config import Settings
from app.metrics import Metrics
from app.routes import health
from tests.test_packaging import env_of, exec_form, parse_dockerfile, settings_env_names

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())
ENV_PREFIX = "SENTIMENT_"

KSERVE_API = "serving.kserve.io/v1beta1"
# The predictor's own fields (KServe's ComponentExtensionSpec, pkg/apis/serving/v1beta1/component.go) that these
# manifests use; everything else in the predictor is the inlined core PodSpec, validated by the schema.
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
KSERVE_RAW_MODES = {"RawDeployment", "Standard"}  # Serverless (Knative) allows one container port only
KSERVE_CONTAINER = "kserve-container"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in documents(path):
            yield path, doc


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in all_documents() if doc["kind"] == kind]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod a manifest runs: a workload's template, or an InferenceService predictor's PodSpec fields."""
    if doc["apiVersion"] == KSERVE_API and doc["kind"] == "InferenceService":
        return {k: v for k, v in doc["spec"]["predictor"].items() if k not in KSERVE_PREDICTOR_FIELDS}
    return doc.get("spec", {}).get("template", {}).get("spec")


def pods() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.relative_to(ROOT)}:{doc['kind']}", spec) for path, doc in all_documents() if (spec := pod_spec(doc))]


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """What the image runs: its HTTP port (CMD --port), its environment and its EXPOSEd ports."""
    final = parse_dockerfile((ROOT / "Dockerfile").read_text())[-1]
    (cmd,) = [exec_form(i.args) for i in final if i.keyword == "CMD"]
    exposed = {int(port.split("/")[0]) for i in final if i.keyword == "EXPOSE" for port in i.args.split()}
    return {"http_port": int(cmd[cmd.index("--port") + 1]), "env": env_of(final), "exposed": exposed}


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the service would build from this environment (values validated as the server does)."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return Settings()
    except ValidationError as exc:
        pytest.fail(f"the service would refuse this environment: {exc}")


# ==================================================================================================
# Schemas


def test_deploy_holds_the_expected_manifests() -> None:
    kinds = {doc["kind"] for _, doc in all_documents()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        if doc["apiVersion"] == KSERVE_API:
            # A CRD: its pod part is a core PodSpec; the KServe fields are checked in test_inferenceservice_*.
            doc = {"apiVersion": "v1", "kind": "Pod", "metadata": doc["metadata"], "spec": pod_spec(doc)}
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message} (Kubernetes {exc.version})")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{exc.message}: a new custom resource needs its own check here")


def test_a_bad_manifest_fails_validation() -> None:
    """The validator is strict: a misspelt field and a wrong type are caught (so the test above can fail)."""
    (deployment,) = of_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for bad in ({**container, "readinessProbes": {}}, {**container, "ports": [{"containerPort": "8000"}]}):
        broken = {**deployment, "spec": {**deployment["spec"], "template": {"spec": {"containers": [bad]}}}}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# ==================================================================================================
# Pods against the app: ports, probes, variables


@pytest.mark.parametrize(("where", "spec"), pods(), ids=[where for where, _ in pods()])
def test_pod_ports_probes_and_variables_match_the_app(
    where: str, spec: dict[str, Any], image: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - settings_env_names()
    assert not unknown, f"{where}: not settings of the service: {sorted(unknown)}"
    settings = settings_of({**image["env"], **env}, monkeypatch)  # the image's ENV, then the manifest's
    assert settings.grpc_port is not None, f"{where}: serves no gRPC"
    serving = {image["http_port"], settings.grpc_port}

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == serving, f"{where}: container ports {ports} are not what the app listens on"
    assert set(ports.values()) == image["exposed"], f"{where}: container ports differ from the Dockerfile's EXPOSE"

    probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
    assert {"readinessProbe", "livenessProbe"} <= set(container), f"{where}: needs readiness and liveness probes"
    for probe in probes:
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            assert ports.get(port, port) == image["http_port"], f"{where}: HTTP probe on port {port}"
        else:
            assert probe["grpc"]["port"] == settings.grpc_port, f"{where}: gRPC probe on {probe['grpc']['port']}"
    # Workers x threads within the CPU request: the auto plan counts the node's cores, not the pod's share.
    threads = settings.model_workers * settings.torch_threads
    assert 0 < threads <= float(container["resources"]["requests"]["cpu"]), where
    drain = settings.drain_delay_s + settings.shutdown_timeout_s
    assert spec["terminationGracePeriodSeconds"] > drain, f"{where}: SIGKILL would cut the drain ({drain} s) short"


@pytest.mark.anyio
async def test_http_probes_are_the_apps_health_routes_and_answer_200(serve: Callable[..., Any]) -> None:
    """Against a real app (lifespan running, tiny model): readiness on the ready route, liveness/startup on the live one."""
    expected = {"readinessProbe": health.ready, "livenessProbe": health.live, "startupProbe": health.live}
    probes = {
        (name, probe["httpGet"]["path"])
        for _, spec in pods()
        for container in spec["containers"]
        for name in expected
        if "httpGet" in (probe := container.get(name, {}))
    }
    assert {name for name, _ in probes} == set(expected), "each probe kind is on HTTP somewhere (the gRPC one in kubernetes.yaml)"
    async with serve() as (client, app):
        for name, path in sorted(probes):
            route = app.url_path_for(expected[name].__name__)  # where the app mounts app/routes/health.py's handler
            assert path == route, f"{name} on {path}, not on {route}"
            assert (await client.get(path)).status_code == 200, path


def test_image_and_compose_expose_the_ports_the_app_serves(image: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(image["env"], monkeypatch)
    assert image["http_port"] == Settings.model_fields["port"].default, "CMD --port should be the documented default"
    assert image["exposed"] == {image["http_port"], settings.grpc_port}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    served = [s for s in compose["services"].values() if "ports" in s]
    assert served, "docker-compose.yml publishes no service"
    for service in served:
        container_ports = {int(str(mapping).rsplit(":", 1)[-1]) for mapping in service["ports"]}
        assert container_ports == image["exposed"], service["image"]


# ==================================================================================================
# The HorizontalPodAutoscaler


@pytest.fixture(scope="module")
def hpa() -> dict[str, Any]:
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    return hpa


def test_hpa_targets_the_deployment_which_has_cpu_requests(hpa: dict[str, Any]) -> None:
    (deployment,) = of_kind("Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; a value would reset it on every apply"
    cpu = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["target"]["type"] == "Utilization" and 0 < cpu[0]["target"]["averageUtilization"] <= 100
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["resources"]["requests"]["cpu"], "CPU utilisation is measured against the request"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_hpa_scales_down_one_draining_pod_at_a_time(hpa: dict[str, Any]) -> None:
    (deployment,) = of_kind("Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 60
    assert down.get("selectPolicy") == "Min" or len(down["policies"]) == 1
    for policy in down["policies"]:
        assert policy["type"] == "Pods" and policy["value"] == 1, policy
        assert policy["periodSeconds"] >= grace, "a second pod would be removed while the first still drains"


def test_hpa_queue_depth_note_is_a_valid_metric_the_app_exports(hpa: dict[str, Any]) -> None:
    """The commented Pods-metric stanza: valid when added to the HPA, and it names a gauge of app/metrics.py."""
    text = (DEPLOY / "hpa.yaml").read_text()
    block = re.search(r"^# queue-depth-metric-begin\n(.*?)^# queue-depth-metric-end$", text, re.S | re.M)
    assert block, "hpa.yaml lost its queue-depth note"
    stanza = yaml.safe_load("\n".join(line.removeprefix("#") for line in block.group(1).splitlines()))
    (metric,) = stanza
    with_queue = {**hpa, "spec": {**hpa["spec"], "metrics": [*hpa["spec"]["metrics"], metric]}}
    kubernetes_validate.validate(with_queue, KUBERNETES_VERSIONS[-1], strict=True)
    gauges = {family.name for family in Metrics().registry.collect() if family.type == "gauge"}
    name = metric[metric["type"].lower()]["metric"]["name"]
    assert name in gauges, f"{name} is not a gauge the service exports ({sorted(gauges)})"
    assert "queue" in name
    readme = (ROOT / "README.md").read_text()
    assert name in readme and "deploy/hpa.yaml" in readme, "README's deploy section names the HPA and the metric"


# ==================================================================================================
# The KServe InferenceService (a CRD: its own fields checked here)


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    (isvc,) = of_kind("InferenceService")
    return isvc


def test_inferenceservice_is_a_custom_container_predictor(isvc: dict[str, Any], image: dict[str, Any]) -> None:
    assert isvc["apiVersion"] == KSERVE_API
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"]), "KServe names are DNS-1035 labels"
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    assert not {"model", "pytorch", "triton", "storageUri"} & set(predictor), "the image is the server, not a runtime"
    (container,) = predictor["containers"]
    assert container["name"] == KSERVE_CONTAINER
    (deployment,) = of_kind("Deployment")
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"], "the project image"

    # KServe's Service sends port 80 to the first container port (HTTP: OIP REST), later ports as themselves; a
    # port named h2c (or grpc) gets appProtocol kubernetes.io/h2c. Two ports need raw (Standard) mode.
    http, grpc = container["ports"]
    assert http["containerPort"] == image["http_port"] and "h2c" not in http["name"] and "grpc" not in http["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert grpc["name"] == "h2c" and str(grpc["containerPort"]) == env[f"{ENV_PREFIX}GRPC_PORT"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in KSERVE_RAW_MODES


def test_inferenceservice_autoscaling_fields(isvc: dict[str, Any]) -> None:
    predictor = isvc["spec"]["predictor"]
    used = set(predictor) & KSERVE_PREDICTOR_FIELDS
    assert {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"} <= used
    assert all(isinstance(predictor[k], int) for k in ("minReplicas", "maxReplicas", "scaleTarget"))
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in {"cpu", "memory"}, "raw mode scales through an HPA: cpu or memory"
    assert 0 < predictor["scaleTarget"] <= 100, "a utilisation percentage"
    (container,) = predictor["containers"]
    assert container["resources"]["requests"][predictor["scaleMetric"]], "utilisation is measured against the request"
