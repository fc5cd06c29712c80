"""The deployment files in deploy/ are checked statically, offline and without binaries.

- The Kustomize base and overlay are rendered by a small loader here (no kustomize is
  installed): it follows `resources`, and applies `namespace`, `images`, `replicas` and
  strategic-merge `patches` of plain maps (including `$patch: delete`), the only
  features our kustomizations use; any other field fails the test rather than being
  silently ignored.
- Every rendered document is validated against the Kubernetes OpenAPI schemas bundled
  with `kubernetes-validate`, strictly (unknown fields are errors).
- Every workload has probes, requests and limits, and an autoscaler; the codec server
  exists and no pod can reach it.
- Every variable a manifest sets (Kubernetes, compose, Dockerfile) is one the code reads:
  a `Settings` alias from services/common/config.py, or one of the few variables the
  codec server reads itself. Every `*_FILE` setting points into a mounted Secret or
  ConfigMap that holds that file, and every metrics port is the one the code computes.
- The compose file parses; its build context, Dockerfile and secret files exist; every
  process shares a network with what it calls, and only the worker and Temporal's own
  tools share one with Temporal (as the NetworkPolicy on Temporal's frontend admits only
  the worker and operators' CLI pods of ours).
- The Dockerfile copies every package, installs with the lock, runs as non-root, and
  checks that every module the manifests run imports.

The checks are functions that return problems, so the tests also show that they catch
a broken manifest (`test_checks_catch_*`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.common.auth import TokenVerifier
from services.common.config import Settings
from services.common.metrics import metrics_port
from workers.codec import load_keyring

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE, PRODUCTION = K8S / "base", K8S / "overlays" / "production"
KUSTOMIZATIONS = [BASE, PRODUCTION]
OPERATIONS = ROOT / "docs" / "operations.md"
# Native gRPC probes are GA from 1.27; also check the newest schemas bundled offline.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
IMAGE = "mineaction/reintegration"
GRPC_SERVICES = {"eligibility": 50051, "lending": 50052, "assistance": 50053}
# Workload -> the process name services/common/metrics.py knows it by (None: no metrics).
WORKLOADS: dict[str, str | None] = {
    "eligibility": "eligibility",
    "lending": "lending",
    "assistance": "assistance",
    "worker": "worker",
    "codec-server": None,
}
CODEC_PORT = 8234
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
# Set in the image for Python itself, not for our code.
PYTHON_VARIABLES = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}

Doc = dict[str, Any]


# --- what the code reads -----------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every variable Settings reads, by alias: the one place the code reads its
    environment, so the manifests cannot drift from it."""
    return {field.alias or name.upper() for name, field in Settings.model_fields.items()}


KNOWN = settings_variables()


def test_settings_variables_come_from_the_code() -> None:
    assert {"DATABASE_URL", "PAYLOAD_KEYS_FILE", "AUTH_JWKS_FILE", "METRICS_HOST"} <= KNOWN
    assert {"CODEC_SERVER_CORS_ORIGINS", "CODEC_SERVER_TOKEN"} <= KNOWN
    assert "NOT_A_SETTING" not in KNOWN


# --- Kustomize ---------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def merge(target: Doc, patch: Doc) -> None:
    """Strategic merge for plain maps; lists in a patch are refused (not needed here)."""
    for key, value in patch.items():
        assert not isinstance(value, list), f"list in a patch is not supported: {key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def key_of(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def render(directory: Path) -> list[Doc]:
    """A minimal `kustomize build` for the fields our kustomizations use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    assert not unsupported, f"{directory}: the test's loader does not support {unsupported}"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        docs += render(path) if path.is_dir() else load_yaml_documents(path)
    by_key = {key_of(doc): doc for doc in docs}
    assert len(by_key) == len(docs), f"{directory}: duplicate resources"
    for entry in kustomization.get("patches", []):
        patches = load_yaml_documents(directory / entry["path"])
        assert len(patches) == 1, f"{entry['path']}: one patch per file"
        patch = dict(patches[0])
        assert key_of(patch) in by_key, f"{entry['path']} patches no resource"
        if patch.pop("$patch", None) == "delete":
            docs.remove(by_key.pop(key_of(patch)))
        else:
            merge(by_key[key_of(patch)], patch)
    for entry in kustomization.get("replicas", []):
        assert ("Deployment", entry["name"]) in by_key, f"replicas: no Deployment {entry}"
        by_key["Deployment", entry["name"]]["spec"]["replicas"] = entry["count"]
    for doc in docs:
        if "namespace" in kustomization and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
        for container in containers(doc):
            for image in kustomization.get("images", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    name = image.get("newName", name)
                    tag = str(image.get("newTag", tag))
                    container["image"] = f"{name}:{tag}"
    return docs


def containers(doc: Doc) -> Iterator[Doc]:
    if doc["kind"] == "Deployment":
        yield from doc["spec"]["template"]["spec"]["containers"]


def deployments(docs: list[Doc]) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(cast(Path, request.param))


# The base on the oldest and the newest version; the overlay, on the newest (each check
# reloads the schemas, which is what takes the time).
@pytest.mark.parametrize(
    ("directory", "versions"),
    [(BASE, KUBERNETES_VERSIONS), (PRODUCTION, KUBERNETES_VERSIONS[-1:])],
    ids=["base", "production"],
)
def test_every_document_is_valid_kubernetes(directory: Path, versions: list[str]) -> None:
    for doc in render(directory):
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = "/".join(str(part) for part in error.path)
                pytest.fail(f"{key_of(doc)} on {version}: {where}: {error.message}")


def workload_problems(docs: list[Doc]) -> list[str]:
    """Probes, resources, image, autoscaler and metrics of every workload."""
    problems = []
    found = deployments(docs)
    if set(found) != set(WORKLOADS):
        problems.append(f"Deployments {sorted(found)}, expected {sorted(WORKLOADS)}")
    autoscaled = {
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in docs
        if doc["kind"] == "HorizontalPodAutoscaler" and doc["apiVersion"] == "autoscaling/v2"
    }
    problems += [f"{name}: no HorizontalPodAutoscaler" for name in set(found) - autoscaled]
    for name, deployment in found.items():
        template = deployment["spec"]["template"]
        for container in containers(deployment):
            where = f"{name}/{container['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
            if name in GRPC_SERVICES:  # native probes on grpc.health.v1
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = container.get(probe, {}).get("grpc", {}).get("port")
                    if port != GRPC_SERVICES[name]:
                        problems.append(f"{where}: {probe} is not gRPC health on its port")
            if name == "codec-server":
                for probe in ("readinessProbe", "livenessProbe"):
                    if container.get(probe, {}).get("httpGet", {}).get("path") != "/health":
                        problems.append(f"{where}: {probe} is not GET /health")
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})):
                    problems.append(f"{where}: no cpu and memory {kind}")
            if not container["image"].split(":")[0].endswith(IMAGE):
                problems.append(f"{where}: image {container['image']}")
            process = WORKLOADS.get(name)
            if process is not None:
                problems += metrics_problems(where, template, container, process, docs)
    return problems


def container_environment(container: Doc, docs: list[Doc]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps (envFrom) and `env` values."""
    by_key = {key_of(doc): doc for doc in docs}
    environment: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            source = by_key.get(("ConfigMap", ref["configMapRef"]["name"]), {})
            environment |= source.get("data", {})
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
    return environment


def metrics_problems(
    where: str, template: Doc, container: Doc, process: str, docs: list[Doc]
) -> list[str]:
    """The pod is annotated for Prometheus with the port the process serves metrics on,
    computed by the code from the container's own settings, on every interface."""
    environment = container_environment(container, docs)
    settings = Settings(**cast(dict[str, Any], environment))
    port = metrics_port(settings, process)
    annotations = template["metadata"].get("annotations", {})
    problems = []
    if settings.metrics_host != "0.0.0.0":
        problems.append(f"{where}: METRICS_HOST is {settings.metrics_host}, not 0.0.0.0")
    if port == 0:
        problems.append(f"{where}: metrics turned off")
    if annotations.get("prometheus.io/scrape") != "true":
        problems.append(f"{where}: no prometheus.io/scrape annotation")
    if annotations.get("prometheus.io/port") != str(port):
        problems.append(f"{where}: prometheus.io/port is not {port}")
    if annotations.get("prometheus.io/path") != "/metrics":
        problems.append(f"{where}: prometheus.io/path is not /metrics")
    declared = {p["containerPort"] for p in container.get("ports", []) if p["name"] == "metrics"}
    if declared != {port}:
        problems.append(f"{where}: containerPort 'metrics' is not {port}")
    return problems


def test_workloads_have_probes_resources_autoscalers_and_metrics(rendered: list[Doc]) -> None:
    assert workload_problems(rendered) == []


def configuration_problems(docs: list[Doc]) -> list[str]:
    """Only real settings; secrets never in a ConfigMap; each *_FILE in a mounted file."""
    problems = []
    by_key = {key_of(doc): doc for doc in docs}
    env_sources: set[tuple[str, str]] = set()
    for deployment in deployments(docs).values():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in containers(deployment):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            for ref in container.get("envFrom", []):
                kind = "ConfigMap" if "configMapRef" in ref else "Secret"
                env_sources.add((kind, ref.get("configMapRef", ref.get("secretRef"))["name"]))
            names = {variable["name"] for variable in container.get("env", [])}
            problems += [f"{where}: {name} is not a setting" for name in sorted(names - KNOWN)]
            if "SERVICE_TOKEN" in names or "PAYLOAD_KEYS" in names:
                problems.append(f"{where}: secrets go in files, not the environment")
            mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
            for name, value in container_environment(container, docs).items():
                if name.endswith("_FILE"):
                    problems += file_problems(where, name, value, mounts, volumes, by_key)
    for kind, name in sorted(env_sources):
        doc = by_key.get((kind, name))
        if doc is None:
            continue  # created by the operator (see test_production_*)
        data = doc.get("data", {}) | doc.get("stringData", {})
        problems += [f"{kind} {name}: {key} is not a setting" for key in set(data) - KNOWN]
        if kind == "ConfigMap":
            for secret in ("DATABASE_URL", "SERVICE_TOKEN", "CODEC_SERVER_TOKEN"):
                if secret in data:
                    problems.append(f"ConfigMap {name}: {secret} belongs in a Secret")
    return problems


def file_problems(
    where: str,
    name: str,
    value: str,
    mounts: dict[str, Doc],
    volumes: dict[str, Doc],
    by_key: dict[tuple[str, str], Doc],
) -> list[str]:
    """A *_FILE setting names a file of a mounted, read-only Secret or ConfigMap, whose
    key is that file (or, once the operator creates it, will be)."""
    path = Path(value)
    mount = mounts.get(str(path.parent))
    if mount is None:
        return [f"{where}: {name}={value} is in no mounted volume"]
    if not mount.get("readOnly") or "subPath" in mount:
        return [f"{where}: {name}: mount it read-only, without subPath (updates reach it)"]
    volume = volumes[mount["name"]]
    if "secret" in volume:
        kind, source = "Secret", volume["secret"]["secretName"]
    elif "configMap" in volume:
        kind, source = "ConfigMap", volume["configMap"]["name"]
    else:
        return [f"{where}: {name}: {mount['name']} is neither a Secret nor a ConfigMap"]
    doc = by_key.get((kind, source))
    if doc is not None and path.name not in doc.get("data", {}) | doc.get("stringData", {}):
        return [f"{where}: {name}: {kind} {source} has no key {path.name}"]
    return []


def test_configuration_names_only_real_settings_and_mounted_files(rendered: list[Doc]) -> None:
    assert configuration_problems(rendered) == []


def test_secrets_reach_the_processes_that_need_them(rendered: list[Doc]) -> None:
    found = deployments(rendered)
    needs = {  # process -> settings it cannot run without
        "worker": {"DATABASE_URL", "PAYLOAD_KEYS_FILE", "SERVICE_TOKEN_FILE", "TEMPORAL_ADDRESS"},
        "codec-server": {"PAYLOAD_KEYS_FILE", "CODEC_SERVER_ADDRESS"},
        **{name: {"DATABASE_URL", "AUTH_JWKS_FILE"} for name in GRPC_SERVICES},
    }
    needs["eligibility"].add("SERVICE_TOKEN_FILE")  # it asks lending whose a loan is
    needs["assistance"].add("SERVICE_TOKEN_FILE")  # it asks eligibility if consent stands
    for name, variables in needs.items():
        container = next(containers(found[name]))
        present = set(container_environment(container, rendered))
        for ref in container.get("envFrom", []):
            if ref.get("secretRef", {}).get("name") == "mineaction-database":
                present.add("DATABASE_URL")
        assert variables <= present, f"{name}: missing {variables - present}"
    assert "CODEC_SERVER_ADDRESS" not in container_environment(
        next(containers(found["worker"])), rendered
    )


def test_checks_catch_a_missing_probe_an_unknown_variable_and_a_wrong_port() -> None:
    docs = render(BASE)
    broken = copy.deepcopy(docs)
    lending = next(containers(deployments(broken)["lending"]))
    del lending["livenessProbe"]
    lending["env"].append({"name": "LENDNG_ADDRESS", "value": "0.0.0.0:1"})
    worker = deployments(broken)["worker"]
    worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "9101"
    next(containers(worker))["env"][0]["value"] = "/etc/elsewhere/payload-keys.json"
    broken = [doc for doc in broken if key_of(doc) != ("HorizontalPodAutoscaler", "assistance")]
    problems = workload_problems(broken) + configuration_problems(broken)
    for expected in (
        "lending/lending: no livenessProbe",
        "lending/lending: LENDNG_ADDRESS is not a setting",
        "worker/worker: prometheus.io/port is not 9104",
        "worker/worker: PAYLOAD_KEYS_FILE=/etc/elsewhere/payload-keys.json is in no mounted",
        "assistance: no HorizontalPodAutoscaler",
    ):
        assert any(problem.startswith(expected) for problem in problems), (expected, problems)


def test_the_codec_server_runs_and_no_pod_can_reach_it(rendered: list[Doc]) -> None:
    by_key = {key_of(doc): doc for doc in rendered}
    container = next(containers(by_key["Deployment", "codec-server"]))
    assert container["command"] == ["python", "-m", "workers.codec_server"]
    environment = container_environment(container, rendered)
    assert environment["CODEC_SERVER_ADDRESS"] == f"0.0.0.0:{CODEC_PORT}"
    assert "http://127.0.0.1:8080" in environment["CODEC_SERVER_CORS_ORIGINS"].split(",")
    token = next(v for v in container["env"] if v["name"] == "CODEC_SERVER_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True
    service = by_key["Service", "codec-server"]
    assert service["spec"]["ports"][0]["port"] == CODEC_PORT
    policy = by_key["NetworkPolicy", "codec-server"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "codec-server"}
    assert policy["policyTypes"] == ["Ingress"] and policy["ingress"] == []


def test_only_the_worker_and_operators_pods_reach_temporals_frontend(
    rendered: list[Doc],
) -> None:
    """The policy selects the frontend's pods by the labels Temporal's chart gives them,
    admits the worker's pods by their own labels, and no gRPC service's."""
    policy = yaml.safe_load((K8S / "temporal-network-policy.yaml").read_text())
    kubernetes_validate.validate(policy, KUBERNETES_VERSIONS[-1], strict=True)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "frontend"
    assert spec["policyTypes"] == ["Ingress"]
    admitted = [
        (peer.get("namespaceSelector"), peer["podSelector"]["matchLabels"])
        for rule in spec["ingress"]
        for peer in rule.get("from", [])
        if peer.get("podSelector", {}).get("matchLabels")
    ]
    ours = {"kubernetes.io/metadata.name": "mineaction"}
    assert all(namespace == {"matchLabels": ours} for namespace, _ in admitted)

    def admits(labels: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for _, selector in admitted)

    for name, deployment in deployments(rendered).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert admits(labels) == (name == "worker"), name
    assert admits({"mineaction.org/temporal-client": "true"})  # an operator's CLI pod
    # Anyone else: the metrics port only.
    open_rules = [rule for rule in spec["ingress"] if "from" not in rule]
    assert [port["port"] for rule in open_rules for port in rule["ports"]] == [9090]


def test_temporal_helm_values_point_the_web_ui_at_the_codec_server() -> None:
    values = yaml.safe_load((K8S / "temporal-values.yaml").read_text())
    env = {item["name"]: item["value"] for item in values["web"]["additionalEnv"]}
    assert env["TEMPORAL_CODEC_ENDPOINT"] == f"http://127.0.0.1:{CODEC_PORT}"
    # Watching only: decisions go through the CLI's token checks, not the UI's buttons.
    assert env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"
    persistence = values["server"]["config"]["persistence"]
    for store in ("default", "visibility"):
        assert persistence[store]["sql"]["driver"] == "postgres12", store
    assert not any(values[part]["enabled"] for part in ("cassandra", "elasticsearch", "mysql"))
    settings = yaml.safe_load((BASE / "configmap.yaml").read_text())["data"]
    assert settings["TEMPORAL_ADDRESS"].startswith("temporal-frontend.temporal.svc")


def operator_created() -> set[tuple[str, str]]:
    """The Secrets and ConfigMaps docs/operations.md tells the operator to create."""
    text = OPERATIONS.read_text()
    found = re.findall(
        r"kubectl -n mineaction create (secret generic|configmap) ([a-z0-9-]+)", text
    )
    return {("Secret" if kind.startswith("secret") else "ConfigMap", name) for kind, name in found}


def referenced_sources(docs: list[Doc]) -> set[tuple[str, str]]:
    refs = set()
    for deployment in deployments(docs).values():
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                refs.add(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                refs.add(("ConfigMap", volume["configMap"]["name"]))
        for container in containers(deployment):
            for ref in container.get("envFrom", []):
                if "secretRef" in ref:
                    refs.add(("Secret", ref["secretRef"]["name"]))
                if "configMapRef" in ref:
                    refs.add(("ConfigMap", ref["configMapRef"]["name"]))
    return refs


def test_production_overlay_pins_the_image_raises_the_floor_and_leaves_secrets_alone() -> None:
    docs = render(PRODUCTION)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "mineaction", key_of(doc)
        for container in containers(doc):
            assert re.fullmatch(r"\S+/mineaction/reintegration:\d+\.\d+\.\d+", container["image"])
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert 2 <= doc["spec"]["minReplicas"] < doc["spec"]["maxReplicas"], key_of(doc)
            if doc["metadata"]["name"] in GRPC_SERVICES or doc["metadata"]["name"] == "worker":
                assert doc["spec"]["minReplicas"] >= 3, key_of(doc)
    # Applying the overlay never overwrites the real keys with the base's placeholders.
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    rendered_keys = {key_of(doc) for doc in docs}
    missing = referenced_sources(docs) - rendered_keys
    assert missing == {
        ("Secret", "mineaction-database"),
        ("Secret", "mineaction-payload-keys"),
        ("Secret", "mineaction-service-token"),
        ("ConfigMap", "mineaction-jwks"),
    }
    # ...and docs/operations.md tells the operator how to create each one.
    assert missing <= operator_created(), missing - operator_created()


def test_base_placeholders_fail_closed() -> None:
    by_key = {key_of(doc): doc for doc in render(BASE)}
    keyring = by_key["Secret", "mineaction-payload-keys"]["stringData"]["payload-keys.json"]
    assert "CHANGE-ME" in keyring  # not a keyring: the worker and codec server refuse it
    jwks = by_key["ConfigMap", "mineaction-jwks"]["data"]["jwks.json"]
    assert '"kid": "placeholder-replace-me"' in jwks


# --- compose -----------------------------------------------------------------------------


def compose() -> Doc:
    return cast(Doc, yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


# Who may share a network with Temporal: its own tools, its store, and the worker. A
# journey's updates are relayed to the services under the worker's identity, so no gRPC
# service, nor the codec server, may reach Temporal (docs/security.md).
TEMPORAL_NEIGHBOURS = {"worker", "temporal-ui", "temporal-search-attributes", "postgresql"}
# Who must reach whom: a caller and what it calls share a network.
CALLS = {
    **{name: {"postgresql"} for name in GRPC_SERVICES},
    "worker": {"postgresql", "temporal", *GRPC_SERVICES},
    "temporal": {"postgresql"},
    "temporal-ui": {"temporal"},
    "temporal-search-attributes": {"temporal"},
}


def network_problems(document: Doc) -> list[str]:
    services: dict[str, Doc] = document["services"]
    declared = set(document.get("networks") or {})
    networks = {name: set(service.get("networks", [])) for name, service in services.items()}
    problems = [
        f"{name}: network {network} is not declared"
        for name, joined in networks.items()
        for network in sorted(joined - declared)
    ]
    problems += [f"{name}: on no network of its own" for name, n in networks.items() if not n]
    temporal = networks.get("temporal", set())
    problems += [
        f"{name}: reaches temporal"
        for name, joined in networks.items()
        if name != "temporal" and joined & temporal and name not in TEMPORAL_NEIGHBOURS
    ]
    problems += [
        f"{caller}: cannot reach {callee}"
        for caller, callees in CALLS.items()
        for callee in sorted(callees)
        if caller in services and not networks[caller] & networks.get(callee, set())
    ]
    return problems


def compose_problems(document: Doc) -> list[str]:
    problems = network_problems(document)
    services: dict[str, Doc] = document["services"]
    ours = {name for name, service in services.items() if "build" in service}
    if ours != set(WORKLOADS):
        problems.append(f"built services {sorted(ours)}, expected {sorted(WORKLOADS)}")
    secrets: dict[str, Doc] = document.get("secrets", {})
    for name, secret in secrets.items():
        if not (DEPLOY / secret["file"]).parent.is_dir():
            problems.append(f"secret {name}: no folder for {secret['file']}")
    for name, service in services.items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            if not (context / service["build"]["dockerfile"]).is_file():
                problems.append(f"{name}: no Dockerfile {service['build']['dockerfile']}")
        elif not re.fullmatch(r"(postgres|temporalio/[a-z-]+):[\w.-]+", service["image"]):
            problems.append(f"{name}: {service['image']} is not an official, pinned image")
        needs_check = name in ours or name in ("postgresql", "temporal")
        if needs_check and "test" not in service.get("healthcheck", {}):
            problems.append(f"{name}: no healthcheck")
        if name not in ours:
            continue
        environment = service["environment"]
        unknown = set(environment) - KNOWN
        problems += [f"{name}: {variable} is not a setting" for variable in sorted(unknown)]
        mounted = set(service.get("secrets", []))
        problems += [f"{name}: secret {s} is not declared" for s in sorted(mounted - set(secrets))]
        for variable, value in environment.items():
            if variable.endswith("_FILE") and value.removeprefix("/run/secrets/") not in mounted:
                problems.append(f"{name}: {variable}={value} is not a mounted secret")
        process = WORKLOADS[name]
        if process is not None:
            settings = Settings(**environment)
            port = metrics_port(settings, process)
            if settings.metrics_host != "0.0.0.0" or port == 0:
                problems.append(f"{name}: metrics not served on 0.0.0.0")
            if f"127.0.0.1::{port}" not in service.get("ports", []):
                problems.append(f"{name}: metrics port {port} not published")
    return problems


def test_compose_parses_and_references_only_what_exists() -> None:
    assert compose_problems(compose()) == []


def test_checks_catch_a_broken_compose_file() -> None:
    document = compose()
    services = document["services"]
    del services["codec-server"]
    del services["lending"]["healthcheck"]
    services["worker"]["environment"]["PAYLOAD_KEY_FILE"] = "/run/secrets/payload-keys"
    services["worker"]["secrets"].remove("service-token")
    services["eligibility"]["environment"]["METRICS_HOST"] = "127.0.0.1"
    services["postgresql"]["image"] = "bitnami/postgresql:latest"
    services["lending"]["networks"] = ["app", "temporal"]
    services["assistance"]["networks"] = ["backend"]
    services["temporal-ui"]["networks"] = ["app"]
    problems = compose_problems(document)
    for expected in (
        "built services",
        "lending: no healthcheck",
        "worker: PAYLOAD_KEY_FILE is not a setting",
        "worker: SERVICE_TOKEN_FILE=/run/secrets/service-token is not a mounted secret",
        "eligibility: metrics not served on 0.0.0.0",
        "postgresql: bitnami/postgresql:latest is not an official",
        "lending: reaches temporal",
        "assistance: network backend is not declared",
        "assistance: cannot reach postgresql",
        "worker: cannot reach assistance",
        "temporal-ui: cannot reach temporal",
    ):
        assert any(problem.startswith(expected) for problem in problems), (expected, problems)


def test_compose_runs_the_cluster_on_one_host() -> None:
    document = compose()
    services: dict[str, Doc] = document["services"]
    temporal = services["temporal"]["environment"]
    assert temporal["DB"] == "postgres12"
    assert temporal["POSTGRES_SEEDS"] in services
    script = " ".join(services["temporal-search-attributes"]["command"])
    for attribute in (
        "Stage=Keyword",
        "DistrictCode=Keyword",
        "LoanStatus=Keyword",
        "DaysPastDue=Int",
        "ProgrammeYear=Int",
    ):
        assert attribute in script
    for name in (*GRPC_SERVICES, "worker"):
        environment = services[name]["environment"]
        assert {"DATABASE_URL", "TEMPORAL_ADDRESS"} <= set(environment), name
        assert services[name]["deploy"]["replicas"] >= 2, name
    for name in ("eligibility", "assistance", "worker"):  # their own token, for calls out
        assert services[name]["environment"]["SERVICE_TOKEN_FILE"] == "/run/secrets/service-token"
    for name, port in GRPC_SERVICES.items():
        own = f"{name.upper()}_ADDRESS"
        assert services[name]["environment"][own] == f"0.0.0.0:{port}"  # it listens here
        assert services["worker"]["environment"][own].endswith(f"{name}:{port}")  # called
    # The Web UI's codec endpoint is the codec server as the host's browser reaches it,
    # and the codec server lets the UI's page call it.
    codec = services["codec-server"]
    assert codec["command"] == ["python", "-m", "workers.codec_server"]
    endpoint = services["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"]
    assert endpoint == f"http://127.0.0.1:{CODEC_PORT}"
    assert f"127.0.0.1:{CODEC_PORT}:{CODEC_PORT}" in codec["ports"]
    assert codec["environment"]["CODEC_SERVER_ADDRESS"] == f"0.0.0.0:{CODEC_PORT}"
    ui_port = services["temporal-ui"]["ports"][0].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{ui_port}" in codec["environment"]["CODEC_SERVER_CORS_ORIGINS"]
    assert codec["environment"]["PAYLOAD_KEYS_FILE"] == "/run/secrets/payload-keys"
    assert services["worker"]["environment"]["PAYLOAD_KEYS_FILE"] == "/run/secrets/payload-keys"


def load_init_secrets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("init_secrets", DEPLOY / "init_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_init_secrets_writes_what_compose_mounts(tmp_path: Path) -> None:
    init = load_init_secrets()
    lines = init.init_secrets(tmp_path)
    assert not any("BEGIN" in line or '"k":' in line for line in lines)  # no key material
    files = {Path(s["file"]).name for s in compose()["secrets"].values()}
    assert files == {init.JWKS, init.SERVICE_TOKEN, init.PAYLOAD_KEYS}
    for name in (init.SIGNING_KEY, init.SERVICE_TOKEN, init.OPERATOR_TOKEN, init.PAYLOAD_KEYS):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    verifier = TokenVerifier(tmp_path / init.JWKS, issuer="mineaction", audience="mineaction-api")
    service = verifier.verify((tmp_path / init.SERVICE_TOKEN).read_text().strip())
    assert service.roles == frozenset({"service"})
    operator = verifier.verify((tmp_path / init.OPERATOR_TOKEN).read_text().strip())
    assert "loan_officer" in operator.roles
    active = load_keyring(tmp_path / init.PAYLOAD_KEYS).active
    init.init_secrets(tmp_path)  # again: the keys are kept, the tokens re-minted
    assert load_keyring(tmp_path / init.PAYLOAD_KEYS).active == active
    verifier.verify((tmp_path / init.SERVICE_TOKEN).read_text().strip())


# --- the Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, list[str]]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            if rest.lstrip().startswith("["):  # exec form: a JSON array
                yield instruction.upper(), [str(arg) for arg in json.loads(rest)]
            else:
                yield instruction.upper(), shlex.split(rest, comments=True)


def test_dockerfile_copies_every_package_and_only_what_exists() -> None:
    copied = set()
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or any(arg.startswith("--from") for arg in args):
            continue
        for source in [arg for arg in args[:-1] if not arg.startswith("--")]:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
            copied.add(source.split("/")[0])
    # Every top-level folder setuptools packages (pyproject.toml) is in the image.
    pyproject = (ROOT / "pyproject.toml").read_text()
    where = re.search(r"where = \[(.*)\]", pyproject)
    include = re.search(r"include = \[(.*)\]", pyproject)
    assert where and include
    packages = {name.strip(' "').rstrip("*") for name in include.group(1).split(",")}
    folders = {name.strip(' "') for name in where.group(1).split(",")} - {"."}
    top_level = {p for p in packages if (ROOT / p).is_dir()} | folders
    assert top_level <= copied, f"not copied into the image: {top_level - copied}"
    assert {"cli", "gen", "services", "workers", "pyproject.toml", "requirements.lock"} <= copied


def modules_run_by_manifests() -> set[str]:
    """Every `python -m MODULE` a compose service or a Kubernetes container runs."""
    commands = [s.get("command", []) for s in compose()["services"].values() if "build" in s]
    for directory in KUSTOMIZATIONS:
        commands += [c["command"] for doc in render(directory) for c in containers(doc)]
    return {command[2] for command in commands if command[:2] == ["python", "-m"]}


def test_dockerfile_runs_as_non_root_installs_with_the_lock_and_checks_entry_points() -> None:
    instructions = list(dockerfile_instructions())
    run = " ".join(" ".join(args) for instruction, args in instructions if instruction == "RUN")
    assert "pip install -c requirements.lock ." in run
    users = [args[0] for instruction, args in instructions if instruction == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    exposed = {arg for instruction, args in instructions if instruction == "EXPOSE" for arg in args}
    assert {"50051", "50052", "50053", str(CODEC_PORT), "9101", "9102", "9103", "9104"} <= exposed
    modules = modules_run_by_manifests()
    assert modules == {
        "services.eligibility",
        "services.lending",
        "services.assistance",
        "workers",
        "workers.codec_server",
    }
    for module in modules:
        path = ROOT / module.replace(".", "/")
        assert (path / "__main__.py").is_file() or path.with_suffix(".py").is_file(), module
        imported = f"{module}.__main__" if (path / "__main__.py").is_file() else module
        assert imported in run, f"the build's import check misses {imported}"
    # The probe the manifests run is copied to where they run it.
    copies = [args for instruction, args in instructions if instruction == "COPY"]
    assert ["deploy/probe.py", "/opt/mineaction/probe.py"] in copies
    cmd = next(args for instruction, args in reversed(instructions) if instruction == "CMD")
    assert cmd == ["python", "-m", "workers"]


def test_dockerfile_sets_only_real_settings_and_keeps_secrets_out() -> None:
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            names = {arg.split("=", 1)[0] for arg in args}
            assert names <= KNOWN | PYTHON_VARIABLES | {n for n in names if n.startswith("PIP_")}
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"deploy/secrets", ".state", ".venv"} <= set(ignored)
