"""The generated API key across upgrades: `helm template --dry-run=server` against a tiny fake
API server (discovery for the chart's kinds, and one Secret), so the chart's `lookup` sees what
a cluster would hold: its own generated Secret (key kept), a Secret it rendered from earlier
auth values (new key), or one made by hand (left alone)."""

from __future__ import annotations

import base64
import json
import pathlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.packaging.conftest import CHART, documents, require_tool, run

SECRET_PATH = "/api/v1/namespaces/relais-system/secrets/relais-gateway-auth"
KEPT = "keys:\n- key: sk-relais-" + "K" * 40 + "\n  name: default\n"
CORE = ["Secret", "Service", "ServiceAccount", "ConfigMap", "Namespace"]
GROUPS: dict[str, list[tuple[str, bool]]] = {
    "apps/v1": [("Deployment", True)],
    "rbac.authorization.k8s.io/v1": [
        ("ClusterRole", False), ("ClusterRoleBinding", False), ("Role", True), ("RoleBinding", True)
    ],
    "policy/v1": [("PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("NetworkPolicy", True), ("Ingress", True)],
    "autoscaling/v2": [("HorizontalPodAutoscaler", True)],
    "apiextensions.k8s.io/v1": [("CustomResourceDefinition", False)],
    "relais.dev/v1alpha1": [("LLMDeployment", True)],
}  # fmt: skip


def resources(group_version: str, kinds: list[tuple[str, bool]]) -> dict[str, Any]:
    listed = [
        {"name": f"{k.lower()}s", "singularName": k.lower(), "namespaced": ns, "kind": k,
         "verbs": ["get", "list"]}
        for k, ns in kinds
    ]  # fmt: skip
    return {"kind": "APIResourceList", "groupVersion": group_version, "resources": listed}


def discovery() -> dict[str, dict[str, Any]]:
    """Every discovery document helm asks for, by path."""
    groups = [
        {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}]}
        for gv in GROUPS
    ]
    answers: dict[str, dict[str, Any]] = {
        "/version": {"major": "1", "minor": "31", "gitVersion": "v1.31.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"]},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups},
        "/api/v1": resources("v1", [(k, True) for k in CORE]),
    }
    answers.update({f"/apis/{gv}": resources(gv, kinds) for gv, kinds in GROUPS.items()})
    return answers


@pytest.fixture
def fake_api(tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, dict[str, Any]]]:
    """A kubeconfig for the fake server, and the dict holding the Secret it serves (if any)."""
    state: dict[str, Any] = {}
    answers = discovery()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            body = state.get("secret") if path == SECRET_PATH else answers.get(path)
            data = json.dumps(body or {"kind": "Status", "code": 404, "reason": "NotFound"})
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    try:
        yield kubeconfig, state
    finally:
        server.shutdown()
        thread.join()


def stored_secret(annotations: dict[str, str]) -> dict[str, Any]:
    """The Secret as the cluster holds it, with Helm's ownership marks."""
    helm = {
        "meta.helm.sh/release-name": "relais",
        "meta.helm.sh/release-namespace": "relais-system",
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "relais-gateway-auth",
            "namespace": "relais-system",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {**helm, **annotations},
        },
        "data": {"auth.yaml": base64.b64encode(KEPT.encode()).decode()},
    }


def rendered_secrets(kubeconfig: pathlib.Path) -> list[dict[str, Any]]:
    helm = require_tool("helm")
    out = run(
        helm, "template", "relais", str(CHART), "--namespace", "relais-system",
        "--kubeconfig", str(kubeconfig), "--dry-run=server", "--disable-openapi-validation",
        timeout=120,
    ).stdout  # fmt: skip
    return [d for d in documents(out) if d["kind"] == "Secret"]


def test_upgrade_keeps_the_generated_key(fake_api: tuple[pathlib.Path, dict[str, Any]]) -> None:
    kubeconfig, state = fake_api
    state["secret"] = stored_secret({"relais.dev/generated-key": "true"})
    (secret,) = rendered_secrets(kubeconfig)
    assert base64.b64decode(secret["data"]["auth.yaml"]).decode() == KEPT


def test_secret_from_earlier_auth_values_gets_a_new_key(
    fake_api: tuple[pathlib.Path, dict[str, Any]],
) -> None:
    """E.g. auth.disabled=true before: that content must not survive as the default."""
    kubeconfig, state = fake_api
    state["secret"] = stored_secret({})
    (secret,) = rendered_secrets(kubeconfig)
    key = base64.b64decode(secret["data"]["auth.yaml"]).decode()
    assert key != KEPT
    assert "sk-relais-" in key


def test_hand_made_secret_is_left_alone(fake_api: tuple[pathlib.Path, dict[str, Any]]) -> None:
    kubeconfig, state = fake_api
    hand_made = stored_secret({})
    hand_made["metadata"] = {"name": "relais-gateway-auth", "namespace": "relais-system"}
    state["secret"] = hand_made
    assert rendered_secrets(kubeconfig) == []


def test_first_install_generates(fake_api: tuple[pathlib.Path, dict[str, Any]]) -> None:
    kubeconfig, _ = fake_api
    (secret,) = rendered_secrets(kubeconfig)
    assert secret["metadata"]["annotations"]["relais.dev/generated-key"] == "true"
