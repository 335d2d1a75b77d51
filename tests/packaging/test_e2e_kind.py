"""End to end on a real cluster (deploy/kind/e2e.sh makes a kind one): helm install the chart,
apply the CPU-only example, wait Ready, chat through the gateway with the openai client, delete
the LLMDeployment and check its model-cache PVC was retained.

Marked `cluster`: runs only when the current kube context answers, and only on a kind context
(`kind-*`) unless RELAIS_E2E=1 says another cluster may be used (it installs cluster-wide RBAC and
the CRD); skipped with the reason otherwise. Images: RELAIS_OPERATOR_IMAGE and
RELAIS_GATEWAY_IMAGE (default relais-*:dev), which the cluster must already have (e2e.sh loads
them into kind).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from tests.packaging.conftest import CHART, ROOT, find_tool, run
from tests.packaging.test_images import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu-kind.yaml"
READY_TIMEOUT = "30m"  # a CPU node pulls the engine image and the model first


def kubectl_or_skip() -> str:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (make install provides it)")
    probe = subprocess.run(
        [kubectl, "version", "--request-timeout=10s", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(
            f"no reachable Kubernetes cluster (current kube context): {probe.stderr.strip()[:200]}"
        )
    return kubectl


def image_values(component: str) -> list[str]:
    ref = os.environ.get(f"RELAIS_{component.upper()}_IMAGE", f"relais-{component}:dev")
    repository, _, tag = ref.rpartition(":")
    return [
        "--set", f"{component}.image.repository={repository}",
        "--set", f"{component}.image.tag={tag}",
        "--set", f"{component}.image.pullPolicy=IfNotPresent",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def release() -> Iterator[dict[str, str]]:
    """The chart installed in a fresh namespace, with one API key; uninstalled afterwards."""
    kubectl = kubectl_or_skip()
    helm = find_tool("helm") or pytest.skip("helm is not installed (make install provides it)")
    namespace = f"relais-e2e-{secrets.token_hex(3)}"
    key = f"sk-e2e-{secrets.token_hex(16)}"
    run(
        helm, "install", "relais", str(CHART), "--namespace", namespace, "--create-namespace",
        *image_values("operator"), *image_values("gateway"),
        "--set", "gateway.replicas=1", "--set", "auth.keys[0].name=e2e",
        "--set", f"auth.keys[0].key={key}", "--wait", "--timeout", "10m",
        timeout=900,
    )  # fmt: skip
    try:
        yield {"kubectl": kubectl, "namespace": namespace, "key": key}
    finally:
        run(
            helm,
            "uninstall",
            "relais",
            "--namespace",
            namespace,
            "--wait",
            check=False,
            timeout=600,
        )
        run(kubectl, "delete", "namespace", namespace, "--wait=false", check=False)


def apply_example(kubectl: str, namespace: str) -> dict[str, Any]:
    model: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    model["metadata"]["namespace"] = namespace
    run(kubectl, "apply", "-f", "-", input=yaml.safe_dump(model))
    return model


def port_forward(kubectl: str, namespace: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [kubectl, "-n", namespace, "port-forward", "svc/relais-gateway", f"{port}:80"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5):
                return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    pytest.fail("kubectl port-forward to the gateway did not come up")


def retained_claims(kubectl: str, namespace: str, name: str) -> list[str]:
    out = run(
        kubectl,
        "-n",
        namespace,
        "get",
        "pvc",
        "-l",
        f"relais.dev/llmdeployment={name}",
        "-o",
        "json",
    ).stdout
    return [item["metadata"]["name"] for item in json.loads(out)["items"]]


def test_install_serve_delete_retain(release: dict[str, str]) -> None:
    kubectl, namespace = release["kubectl"], release["namespace"]
    model = apply_example(kubectl, namespace)
    name = model["metadata"]["name"]
    run(
        kubectl, "-n", namespace, "wait", f"llmd/{name}", "--for=condition=Ready",
        f"--timeout={READY_TIMEOUT}", timeout=3000,
    )  # fmt: skip

    proc, url = port_forward(kubectl, namespace)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=release["key"], timeout=300)
        served = model["spec"].get("servedModelName", model["spec"]["model"])
        assert served in [m.id for m in client.models.list().data]
        answer = client.chat.completions.create(
            model=served, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
        )
        assert answer.choices[0].message.content
    finally:
        proc.kill()

    claims = retained_claims(kubectl, namespace, name)
    assert claims, "the model cache PVC should exist while the model runs"
    run(
        kubectl,
        "-n",
        namespace,
        "delete",
        f"llmd/{name}",
        "--wait=true",
        "--timeout=5m",
        timeout=600,
    )
    run(
        kubectl, "-n", namespace, "wait", "statefulset", "-l", f"relais.dev/llmdeployment={name}",
        "--for=delete", "--timeout=5m", timeout=600, check=False,
    )  # fmt: skip
    assert retained_claims(kubectl, namespace, name) == claims
