"""The Helm chart: lint, strict schema validation of every rendered object, values.schema.json,
RBAC and security contracts, and checkov with helm on PATH."""

from __future__ import annotations

import base64
import json
import pathlib
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.packaging.conftest import (
    CHART,
    ROOT,
    documents,
    helm_template,
    of_kind,
    require_tool,
    run,
)

FULL_VALUES = pathlib.Path(__file__).with_name("values-full.yaml")
GKE_VALUES = ROOT / "deploy" / "gke" / "values-gke.yaml"
OPERATOR_ARGS = ("--set", "operator.image.tag=dev")


def kubernetes_validate(tmp_path: pathlib.Path, text: str) -> str:
    """`kubernetes-validate --strict` on a rendered stream; custom resources are validated
    separately against the CRD (the tool skips kinds it has no schema for)."""
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    result = run(require_tool("kubernetes-validate"), "--strict", str(path), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Deployments by component (operator, gateway)."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in of_kind(docs, "Deployment")
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """A role's rules flattened to (apiGroup, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def triples(group: str, resources: list[str], verbs: list[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


OPERATOR_NAMESPACED_RULES = (
    triples("relais.dev", ["llmdeployments"], ["get", "list", "watch", "patch"])
    | triples("relais.dev", ["llmdeployments/status"], ["get", "patch"])
    # The autoscaler writes spec.replicas through the scale subresource (issue #8).
    | triples("relais.dev", ["llmdeployments/scale"], ["get", "patch"])
    # delete: a StatefulSet whose immutable fields changed is re-created; a download Job whose
    # model changed (its pod template is immutable) is replaced.
    | triples("apps", ["statefulsets"], ["get", "list", "watch", "create", "patch", "delete"])
    | triples("batch", ["jobs"], ["get", "list", "watch", "create", "patch", "delete"])
    | triples(
        "", ["services", "persistentvolumeclaims"], ["get", "list", "watch", "create", "patch"]
    )
    | triples("", ["pods"], ["get", "list", "watch"])
    | triples("", ["events"], ["create"])
    # The adapters' ConfigMap `<name>-adapters` of vLLM resources with spec.lora (issue #16).
    | triples("", ["configmaps"], ["get", "create", "patch"])
)
OPERATOR_CLUSTER_RULES = triples("", ["namespaces"], ["list", "watch"]) | triples(
    "apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"]
)
GATEWAY_RULES = (
    triples("relais.dev", ["llmdeployments"], ["get", "list", "watch"])
    | triples("discovery.k8s.io", ["endpointslices"], ["list", "watch"])
    # A request for a model scaled to zero asks for its first replica (issue #8).
    | triples("relais.dev", ["llmdeployments/scale"], ["patch"])
)


# ------------------------------------------------------------------ lint and schema validation


def test_helm_lint_strict() -> None:
    helm = require_tool("helm")
    run(helm, "lint", "--strict", str(CHART))
    run(helm, "lint", "--strict", str(CHART), "--values", str(FULL_VALUES))


def test_default_render_passes_strict_validation(tmp_path: pathlib.Path) -> None:
    rendered = helm_template().stdout
    out = kubernetes_validate(tmp_path, rendered)
    kinds = {d["kind"] for d in documents(rendered)}
    assert {"Deployment", "Service", "ClusterRole", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    assert out.count("passed") == len(documents(rendered))


@pytest.mark.parametrize("values", [FULL_VALUES, GKE_VALUES], ids=["full", "gke"])
def test_values_render_passes_strict_validation(
    tmp_path: pathlib.Path, values: pathlib.Path
) -> None:
    rendered = helm_template("--values", str(values)).stdout
    kubernetes_validate(tmp_path, rendered)
    docs = documents(rendered)
    assert of_kind(docs, "HorizontalPodAutoscaler")
    assert of_kind(docs, "LLMDeployment")


@pytest.mark.parametrize("values", [FULL_VALUES, GKE_VALUES], ids=["full", "gke"])
def test_rendered_llmdeployments_match_the_crd(crd: dict[str, Any], values: pathlib.Path) -> None:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]
    models = of_kind(documents(helm_template("--values", str(values)).stdout), "LLMDeployment")
    assert models
    for model in models:
        assert model["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
        jsonschema.validate(model, schema)


def test_crd_copy_is_the_source(crd: dict[str, Any]) -> None:
    copies = list((CHART / "crds").glob("*.yaml"))
    assert len(copies) == 1
    assert yaml.safe_load(copies[0].read_text()) == crd


# ------------------------------------------------------------------ values.schema.json


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "gateway.service.type=Public"], "/gateway/service/type"),
        (["--set", "gateway.service.port=70000"], "/gateway/service/port"),
        (["--set", "gateway.replicas=0"], "/gateway/replicas"),
        (["--set", "operator.image.pullPolicy=Sometimes"], "/operator/image/pullPolicy"),
        (["--set", "operator.watchNamespaces[0]=Not_A_Namespace"], "/operator/watchNamespaces/0"),
        (["--set", "operator.watchnamespaces[0]=typo"], "watchnamespaces"),
        (["--set", "auth.keys[0].name=a", "--set", "auth.keys[0].key=short"], "/auth/keys/0/key"),
        (["--set", "auth.keys[0].key=sk-0123456789abcdef"], "name"),
        (["--set", "models[0].name=x"], "spec"),
        (["--set", "gateway.autoscaling.targetCPUUtilizationPercentage=150"], "targetCPU"),
        (["--set", "gateway.resources.requests.cpu=lots"], "/gateway/resources/requests/cpu"),
        (["--set", "networkPolicy.enabled=maybe"], "/networkPolicy/enabled"),
    ],
)
def test_schema_rejects_bad_values(args: list[str], complaint: str) -> None:
    result = helm_template(*args, check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert complaint in result.stderr


def test_contradictory_auth_fails() -> None:
    result = helm_template(
        "--set", "auth.disabled=true", "--set", "auth.existingSecret=mine", check=False
    )
    assert result.returncode != 0
    assert "only one of auth.existingSecret" in result.stderr


# ------------------------------------------------------------------ contracts


def test_operator_rbac_cluster_wide() -> None:
    docs = documents(helm_template().stdout)
    (role,) = [
        r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"] == "relais-operator"
    ]
    assert rules(role) == OPERATOR_NAMESPACED_RULES | OPERATOR_CLUSTER_RULES
    deletes = {resource for _, resource, verb in rules(role) if verb == "delete"}
    assert deletes == {"statefulsets", "jobs"}  # the rest is the garbage collector's job
    (binding,) = [
        b for b in of_kind(docs, "ClusterRoleBinding") if b["roleRef"]["name"] == "relais-operator"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "relais-operator", "namespace": "relais-system"}
    ]
    # The autoscaler finds the gateways through their EndpointSlices, in the release namespace.
    (role,) = of_kind(docs, "Role")
    assert role["metadata"] == {**role["metadata"], "namespace": "relais-system"}
    assert rules(role) == triples("discovery.k8s.io", ["endpointslices"], ["list"])


def test_gateway_rbac_reads_and_scales_from_zero_only() -> None:
    docs = documents(helm_template().stdout)
    (role,) = [r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"] == "relais-gateway"]
    assert rules(role) == GATEWAY_RULES


def test_namespace_scoped_install() -> None:
    docs = documents(helm_template("--values", str(FULL_VALUES)).stdout)
    roles = {(r["metadata"]["name"], r["metadata"]["namespace"]): r for r in of_kind(docs, "Role")}
    for ns in ("team-a", "team-b"):
        assert rules(roles[("relais-operator", ns)]) == OPERATOR_NAMESPACED_RULES
        assert rules(roles[("relais-gateway", ns)]) == GATEWAY_RULES
    bindings = of_kind(docs, "RoleBinding")
    assert {(b["metadata"]["namespace"], b["subjects"][0]["namespace"]) for b in bindings} == {
        ("team-a", "relais-system"),
        ("team-b", "relais-system"),
        ("relais-system", "relais-system"),  # the autoscaler's read of the gateways' endpoints
    }
    # Only kopf's cluster-scoped reads stay in a ClusterRole; the gateway needs none.
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert rules(cluster_role) == OPERATOR_CLUSTER_RULES
    config = next(
        c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == "relais-operator"
    )
    assert config["data"]["RELAIS_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert config["data"]["RELAIS_OPERATOR_LOG_LEVEL"] == "DEBUG"
    args = container(workloads(docs)["gateway"])["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["team-a", "team-b"]


def test_restricted_pod_security_probes_and_resources() -> None:
    for deployment in workloads(documents(helm_template().stdout)).values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        main = container(deployment)
        security = main["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["runAsUser"] >= 10000
        assert {"cpu", "memory"} <= set(main["resources"]["requests"])
        assert {"cpu", "memory"} <= set(main["resources"]["limits"])
        assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "readinessProbe" in main
        assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_operator_deployment_contract() -> None:
    operator = workloads(documents(helm_template().stdout))["operator"]
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    main = container(operator)
    assert main["args"] == ["--liveness-port=8080"]
    assert main["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert main["image"] == "ghcr.io/relais-dev/relais-operator:0.1.0"
    # The adapter-agent sidecar (vLLM with spec.lora) runs the operator's own image.
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["RELAIS_OPERATOR_AGENT_IMAGE"] == main["image"]


def test_gateway_deployment_contract() -> None:
    docs = documents(helm_template().stdout)
    main = container(workloads(docs)["gateway"])
    args = main["args"]
    assert args[:2] == ["--source", "kubernetes"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--auth-file") + 1] == "/etc/relais/auth/auth.yaml"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    service = services["relais-gateway"]
    assert service["spec"]["type"] == "ClusterIP"
    # The public Service routes the API port only; /metrics is on the management port.
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_gateway_cors_and_tracing_values() -> None:
    def env(*args: str) -> dict[str, str]:
        main = container(workloads(documents(helm_template(*args).stdout))["gateway"])
        return {e["name"]: e["value"] for e in main.get("env", [])}

    default = env()
    assert "RELAIS_GATEWAY_CORS_ALLOW_ORIGINS" not in default  # CORS off
    assert not [name for name in default if name.startswith("OTEL_")]  # tracing off
    on = env(
        "--set-json", 'gateway.cors.allowOrigins=["https://a.example","https://b.example"]',
        "--set", "gateway.tracing.enabled=true",
        "--set", "gateway.tracing.endpoint=http://collector:4318",
    )  # fmt: skip
    assert on["RELAIS_GATEWAY_CORS_ALLOW_ORIGINS"] == "https://a.example,https://b.example"
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert (on["OTEL_TRACES_SAMPLER"], on["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0.1",
    )
    missing = helm_template("--set", "gateway.tracing.enabled=true", check=False)
    assert "gateway.tracing.endpoint is required" in missing.stderr


def test_config_change_restarts_pods() -> None:
    def checksums(*args: str) -> dict[str, str]:
        return {
            component: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for component, d in workloads(documents(helm_template(*args).stdout)).items()
        }

    base = checksums("--set", "auth.disabled=true")
    keyed = checksums(
        "--set", "auth.keys[0].name=a", "--set", "auth.keys[0].key=sk-0123456789abcdef"
    )
    tuned = checksums("--set", "auth.disabled=true", "--set", "operator.logLevel=DEBUG")
    assert keyed["gateway"] != base["gateway"]
    # A generated key is random in every render, yet must not restart the gateway at each upgrade.
    assert checksums()["gateway"] == checksums()["gateway"]
    assert keyed["operator"] == base["operator"]
    assert tuned["operator"] != base["operator"]


GENERATED_KEY = re.compile(r"^sk-relais-[A-Za-z0-9]{40}$")


def auth_of(*args: str) -> tuple[list[dict[str, Any]], str]:
    """The rendered Secrets and the name of the Secret the gateway mounts."""
    docs = documents(helm_template(*args).stdout)
    volumes = workloads(docs)["gateway"]["spec"]["template"]["spec"]["volumes"]
    secret_name: str = next(v for v in volumes if v["name"] == "auth")["secret"]["secretName"]
    return of_kind(docs, "Secret"), secret_name


def test_default_install_generates_one_key(tmp_path: pathlib.Path) -> None:
    from relais_gateway.config import load_auth_file  # the gateway's own parser

    keys = []
    for _ in range(2):
        (secret,), name = auth_of()
        assert secret["metadata"]["name"] == name == "relais-gateway-auth"
        assert secret["metadata"]["annotations"]["relais.dev/generated-key"] == "true"
        # Uninstall removes it with the release: no "keep" policy.
        assert "helm.sh/resource-policy" not in secret["metadata"]["annotations"]
        auth_file = tmp_path / "auth.yaml"
        auth_file.write_bytes(base64.b64decode(secret["data"]["auth.yaml"]))
        config = load_auth_file(auth_file)
        assert not config.disabled
        (key,) = config.keys
        assert key.models is None
        assert GENERATED_KEY.match(key.key.get_secret_value())
        keys.append(key.key.get_secret_value())
    # Random per install (no cluster to look up here), never a key baked into the chart.
    assert keys[0] != keys[1]
    assert keys[0] not in (CHART / "templates" / "gateway-secret.yaml").read_text()


def test_auth_values_work_as_before(tmp_path: pathlib.Path) -> None:
    from relais_gateway.config import load_auth_file

    secrets, name = auth_of("--set", "auth.existingSecret=my-keys")
    assert (secrets, name) == ([], "my-keys")
    for args in (
        ["--values", str(FULL_VALUES)],
        ["--set", "auth.disabled=true"],
    ):
        secrets, name = auth_of(*args)
        (secret,) = secrets
        assert secret["metadata"]["name"] == name == "relais-gateway-auth"
        assert "relais.dev/generated-key" not in secret["metadata"]["annotations"]
        auth_file = tmp_path / "auth.yaml"
        auth_file.write_text(secret["stringData"]["auth.yaml"])
        config = load_auth_file(auth_file)
        assert config.disabled == ("auth.disabled=true" in args)
        if not config.disabled:
            assert [k.name for k in config.keys] == ["team-a", "admin"]


def test_network_policy_selects_the_operators_model_pods() -> None:
    from relais_operator import resources
    from relais_operator.settings import OperatorSettings
    from relais_operator.spec import LLMDeployment

    llm = LLMDeployment.from_body(
        {
            "apiVersion": "relais.dev/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": "tiny", "namespace": "team-a", "uid": "u-1", "generation": 1},
            "spec": {"engine": "ollama", "model": "qwen2.5:0.5b", "gpu": {"count": 0}},
        }
    )
    workload = resources.build_workload(llm, OperatorSettings())
    pod_labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]

    docs = documents(helm_template("--values", str(FULL_VALUES)).stdout)
    policies = [
        p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "relais-models"
    ]
    assert {p["metadata"]["namespace"] for p in policies} == {
        "relais-system",
        "team-a",
        "team-b",
        "shared-models",
    }
    gateway_labels = workloads(docs)["gateway"]["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
        assert expression == {"key": resources.LABEL, "operator": "Exists"}
        assert expression["key"] in pod_labels
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        rule, agent, scrapers = policy["spec"]["ingress"]
        gateway_peer, monitoring_peer = rule["from"]
        # The operator reads the adapter-agents' reports, on their port only (issue #16).
        (operator_peer,) = agent["from"]
        assert agent["ports"] == [{"port": resources.AGENT_PORT_NAME, "protocol": "TCP"}]
        operator_labels = workloads(docs)["operator"]["spec"]["template"]["metadata"]["labels"]
        assert operator_peer["podSelector"]["matchLabels"].items() <= operator_labels.items()
        # networkPolicy.metricsIngressFrom: on the engine's port only.
        assert scrapers["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert gateway_peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "relais-system"
        }
        selected = gateway_peer["podSelector"]["matchLabels"]
        assert selected == {"app.kubernetes.io/name": "relais-gateway"}
        assert selected.items() <= gateway_labels.items()
        # Model pods themselves are not gateway pods: they cannot reach each other.
        assert not selected.items() <= pod_labels.items()
        assert "podSelector" not in monitoring_peer


def test_models_values_render_llmdeployments() -> None:
    docs = documents(helm_template("--values", str(FULL_VALUES)).stdout)
    models = {m["metadata"]["name"]: m for m in of_kind(docs, "LLMDeployment")}
    assert models["tiny"]["metadata"]["namespace"] == "team-a"
    assert models["tiny"]["spec"]["gpu"] == {"count": 0}
    assert models["gemma"]["spec"]["requestLimits"] == {
        "maxTokens": 512,
        "maxConcurrentRequests": 4,
    }


def test_pdb_only_with_spare_replicas() -> None:
    assert of_kind(documents(helm_template().stdout), "PodDisruptionBudget")
    single = documents(helm_template("--set", "gateway.replicas=1").stdout)
    assert not of_kind(single, "PodDisruptionBudget")


def test_notes_tell_how_to_reach_the_gateway() -> None:
    helm = require_tool("helm")

    def notes(*args: str) -> str:
        out = run(
            helm, "install", "relais", str(CHART), "-n", "relais-system", "--dry-run=client", *args
        ).stdout
        return out[out.index("NOTES:") :]

    assert "kubectl -n relais-system port-forward svc/relais-gateway 8000:80" in notes()
    assert "loadBalancer.ingress[0].ip" in notes("--set", "gateway.service.type=LoadBalancer")
    default = notes()
    assert "generated at first install and kept across upgrades" in default
    assert (
        "kubectl -n relais-system get secret relais-gateway-auth -o jsonpath='{.data.auth\\.yaml}'"
        in default
    )
    assert "grep -o 'sk-relais-[[:alnum:]]*'" in default
    assert "DISABLED" in notes("--set", "auth.disabled=true")
    assert "from Secret my-keys" in notes("--set", "auth.existingSecret=my-keys")


# ------------------------------------------------------------------ checkov


@pytest.mark.timeout(900)
@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_checkov_finds_nothing_unexplained(
    tmp_path: pathlib.Path, values: pathlib.Path | None
) -> None:
    checkov = require_tool("checkov")
    require_tool("helm")
    var_file = ["--var-file", str(values)] if values else []
    result = run(
        checkov, "-d", str(CHART), "--framework", "helm", "--output", "json", "--quiet", *var_file,
        timeout=800, check=False, cwd=tmp_path,
    )  # fmt: skip
    start = result.stdout.index("{")
    report: Any = json.loads(result.stdout[start:])
    reports = report if isinstance(report, list) else [report]
    summary = reports[0]["summary"]
    # checkov drops a chart silently when `helm template` fails: prove it scanned resources.
    assert summary["resource_count"] > 10, summary
    assert summary["passed"] > 100, summary
    failed = reports[0]["results"].get("failed_checks", [])
    assert summary["failed"] == 0, [(f["check_id"], f["resource"]) for f in failed]
    skipped = reports[0]["results"].get("skipped_checks", [])
    assert all(s["check_result"].get("suppress_comment") for s in skipped)
