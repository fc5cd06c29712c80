"""The deployment files in deploy/ are checked statically, offline and without binaries.

- The Kustomize base and overlays are rendered by a small loader here (no kustomize is
  installed): it follows `resources`, and applies `namespace`, `images`, `replicas` and
  strategic-merge `patches` of plain maps, the only features our kustomizations use; any
  other field fails the test rather than being silently ignored.
- Every rendered document is validated against the Kubernetes OpenAPI schemas bundled
  with `kubernetes-validate`, strictly (unknown fields are errors).
- Probes and resources are required on every container, an autoscaler on every workload.
- The compose file's services have an image, and our processes' variables are settings.
- The Dockerfile's COPY sources exist.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.common.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "production"]
# Native gRPC probes are GA from 1.27; also check the newest schemas bundled offline.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
IMAGE = "mineaction/reintegration"
WORKLOADS = {"eligibility": 50051, "lending": 50052, "assistance": 50053, "worker": None}
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}

Doc = dict[str, Any]


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
        for patch in load_yaml_documents(directory / entry["path"]):
            assert key_of(patch) in by_key, f"{entry['path']} patches no resource"
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


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(cast(Path, request.param))


# The base on the oldest and the newest version; the overlay, on the newest (each check
# reloads the schemas, which is what takes the time).
@pytest.mark.parametrize(
    ("directory", "versions"),
    [(KUSTOMIZATIONS[0], KUBERNETES_VERSIONS), (KUSTOMIZATIONS[1], KUBERNETES_VERSIONS[-1:])],
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


def test_workloads_have_probes_resources_and_an_autoscaler(rendered: list[Doc]) -> None:
    deployments = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "Deployment"}
    assert set(deployments) == set(WORKLOADS)
    autoscaled = {
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in rendered
        if doc["kind"] == "HorizontalPodAutoscaler" and doc["apiVersion"] == "autoscaling/v2"
    }
    assert autoscaled == set(WORKLOADS)
    for name, deployment in deployments.items():
        for container in containers(deployment):
            where = f"{name}/{container['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{where}: no {probe}"
            port = WORKLOADS[name]
            if port is not None:  # a gRPC service: native probes on grpc.health.v1
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert container[probe]["grpc"]["port"] == port, f"{where}: {probe}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            assert container["image"].split(":")[0].endswith(IMAGE), where
            names = {
                ref["configMapRef"]["name"] for ref in container["envFrom"] if "configMapRef" in ref
            }
            assert names, f"{where}: settings come from a ConfigMap"
            secrets = {
                ref["secretRef"]["name"] for ref in container["envFrom"] if "secretRef" in ref
            }
            assert secrets, f"{where}: DATABASE_URL comes from a Secret"


def settings_variables() -> set[str]:
    return {field.alias or name.upper() for name, field in Settings.model_fields.items()}


def test_configuration_names_only_real_settings(rendered: list[Doc]) -> None:
    known = settings_variables()
    for doc in rendered:
        if doc["kind"] in ("ConfigMap", "Secret"):
            data = doc.get("data", {}) | doc.get("stringData", {})
            assert set(data) <= known, f"{key_of(doc)}: {set(data) - known}"
            if doc["kind"] == "ConfigMap":
                assert "DATABASE_URL" not in data, "the database URL belongs in a Secret"
        for container in containers(doc):
            names = {variable["name"] for variable in container.get("env", [])}
            assert names <= known, f"{key_of(doc)}: {names - known}"


def test_production_overlay_pins_the_image_and_raises_the_floor() -> None:
    docs = render(K8S / "overlays" / "production")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "mineaction", key_of(doc)
        for container in containers(doc):
            assert re.fullmatch(r"\S+/mineaction/reintegration:\d+\.\d+\.\d+", container["image"])
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert 3 <= doc["spec"]["minReplicas"] < doc["spec"]["maxReplicas"], key_of(doc)


def compose() -> Doc:
    return cast(Doc, yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_services_have_an_image_and_only_real_settings() -> None:
    services: dict[str, Doc] = compose()["services"]
    known = settings_variables()
    ours = {name for name, service in services.items() if "build" in service}
    assert ours == set(WORKLOADS)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if name in ours:
            environment = service["environment"]
            assert isinstance(environment, dict), name
            assert set(environment) <= known, f"{name}: {set(environment) - known}"
            assert {"DATABASE_URL", "TEMPORAL_ADDRESS"} <= set(environment), name
            assert service["deploy"]["replicas"] >= 2, name
            assert "healthcheck" in service, name
    for name, port in WORKLOADS.items():
        if port is None:
            continue
        own = f"{name.upper()}_ADDRESS"
        assert services[name]["environment"][own] == f"0.0.0.0:{port}"  # it listens here
        assert services["worker"]["environment"][own].endswith(f"{name}:{port}")  # called


def test_compose_runs_temporal_on_postgresql_and_registers_the_attributes() -> None:
    services: dict[str, Doc] = compose()["services"]
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] in services
    script = " ".join(services["temporal-search-attributes"]["command"])
    for attribute in (
        "Stage=Keyword",
        "DistrictCode=Keyword",
        "LoanStatus=Keyword",
        "DaysPastDue=Int",
        "ProgrammeYear=Int",
    ):
        assert attribute in script
    assert "temporal-ui" in services


def dockerfile_instructions() -> Iterator[tuple[str, list[str]]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            yield instruction.upper(), shlex.split(rest)


def test_dockerfile_copy_sources_exist() -> None:
    copies = 0
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or any(arg.startswith("--from") for arg in args):
            continue
        sources = [arg for arg in args[:-1] if not arg.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
            copies += 1
    assert copies >= 5


def test_dockerfile_runs_as_non_root_and_installs_with_the_lock() -> None:
    instructions = list(dockerfile_instructions())
    run = " ".join(" ".join(args) for instruction, args in instructions if instruction == "RUN")
    assert "pip install -c requirements.lock ." in run
    users = [args[0] for instruction, args in instructions if instruction == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    exposed = {arg for instruction, args in instructions if instruction == "EXPOSE" for arg in args}
    assert {"50051", "50052", "50053"} <= exposed
