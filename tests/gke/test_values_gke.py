"""The chart rendered with deploy/gke/values-gke.yaml: GPU scheduling, GKE storage, LoadBalancer.

The rendered LLMDeployments go through the operator's own pure builders, so the test sees the pod
template the cluster would get: the L4 node selector, the GPU limit and the GPU taint toleration.
"""

from __future__ import annotations

import subprocess
from typing import Any

import jsonschema
import pytest
import yaml
from relais_operator.resources import build_workload
from relais_operator.settings import OperatorSettings
from relais_operator.spec import LLMDeployment

from tests.gke.conftest import GKE_DIR, REPO_ROOT, tool

VALUES = GKE_DIR / "values-gke.yaml"
CHART = REPO_ROOT / "charts" / "relais"
NAMESPACE = "relais"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = tool("helm")
    if binary is None:
        pytest.fail("helm is not installed (make install puts it into .venv/bin)")
    return subprocess.run(
        [binary, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    result = helm("template", "relais", str(CHART), "--namespace", NAMESPACE, "-f", str(VALUES))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="module")
def models(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = of_kind(rendered, "LLMDeployment")
    assert found, "values-gke.yaml must render at least one LLMDeployment"
    return found


def test_lint_passes_with_gke_values() -> None:
    result = helm("lint", str(CHART), "-f", str(VALUES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_models_schedule_on_the_l4_pool(models: list[dict[str, Any]]) -> None:
    for body in models:
        llm = LLMDeployment.from_body(body)
        pod = build_workload(llm, OperatorSettings())["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
        (server,) = pod["containers"]
        assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]


def test_model_cache_uses_a_gke_storage_class(models: list[dict[str, Any]]) -> None:
    for body in models:
        assert body["metadata"]["namespace"] == NAMESPACE
        storage = body["spec"]["storage"]
        assert storage == {
            "storageClassName": "premium-rwo",
            "size": "50Gi",
            "accessMode": "ReadWriteOnce",
        }
        workload = build_workload(LLMDeployment.from_body(body), OperatorSettings())
        (claim,) = workload["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == "premium-rwo"


def test_example_model_is_qwen_on_ollama(models: list[dict[str, Any]]) -> None:
    spec = models[0]["spec"]
    assert (spec["engine"], spec["model"]) == ("ollama", "qwen2.5:7b-instruct")
    assert spec["gpu"] == {"count": 1, "type": "nvidia-l4"}


def test_models_match_the_crd_schema(models: list[dict[str, Any]]) -> None:
    crd = yaml.safe_load((REPO_ROOT / "manifests" / "crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for body in models:
        jsonschema.validate(body["spec"], spec_schema)


def test_gateway_is_behind_a_load_balancer(rendered: list[dict[str, Any]]) -> None:
    services = [
        svc
        for svc in of_kind(rendered, "Service")
        if svc["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"
    ]
    assert [svc["spec"]["type"] for svc in services] == ["LoadBalancer"]


def test_api_keys_come_from_the_secret_create_api_key_makes(
    rendered: list[dict[str, Any]],
) -> None:
    script = (GKE_DIR / "create-api-key.sh").read_text()
    assert "API_KEY_SECRET=${API_KEY_SECRET:-relais-api-keys}" in script
    assert yaml.safe_load(VALUES.read_text())["auth"] == {"existingSecret": "relais-api-keys"}
    secret_names = {
        volume["secret"]["secretName"]
        for deployment in of_kind(rendered, "Deployment")
        for volume in deployment["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in volume
    }
    assert "relais-api-keys" in secret_names
    assert not [s for s in of_kind(rendered, "Secret") if "auth.yaml" in s.get("stringData", {})]
