"""The chart's monitoring: the gateway's management port and the metrics Services, the monitors
and rules (rendered only when enabled, checked against their CRDs' fields), the dashboards'
ConfigMaps, and the NetworkPolicy that admits the scrapers and nothing else."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jsonschema
import pytest
import yaml

from tests.packaging.conftest import CHART, ROOT, documents, helm_template, of_kind
from tests.packaging.monitoring_schemas import BY_KIND

FULL_VALUES = pathlib.Path(__file__).with_name("values-full.yaml")
GKE_VALUES = ROOT / "deploy" / "gke" / "values-gke.yaml"
MONITORING_KINDS = set(BY_KIND)
PROMETHEUS_OPERATOR = ("--set", "monitoring.prometheusOperator.enabled=true")


def render(*args: str) -> list[dict[str, Any]]:
    return documents(helm_template(*args).stdout)


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in of_kind(docs, kind)}


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = named(docs, "Deployment")[name]
    main: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return main


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(
        (CHART / "rules" / "relais.rules.yaml").read_text()
    )["groups"]
    return groups


# ------------------------------------------------------------------ rendered only when enabled


def test_default_render_has_no_monitors_rules_or_dashboards() -> None:
    docs = render()
    assert not {doc["kind"] for doc in docs} & MONITORING_KINDS
    assert not [c for c in of_kind(docs, "ConfigMap") if "dashboard" in c["metadata"]["name"]]


@pytest.mark.parametrize(
    ("args", "kinds"),
    [
        (PROMETHEUS_OPERATOR, {"ServiceMonitor", "PodMonitor", "PrometheusRule"}),
        (
            (*PROMETHEUS_OPERATOR, "--set", "monitoring.prometheusOperator.rules=false"),
            {"ServiceMonitor", "PodMonitor"},
        ),
        (
            ("--set", "monitoring.gkeManagedPrometheus.enabled=true"),
            {"PodMonitoring", "ClusterPodMonitoring", "ClusterRules"},
        ),
    ],
    ids=["prometheus-operator", "without-rules", "gke"],
)
def test_each_switch_renders_its_kinds(args: tuple[str, ...], kinds: set[str]) -> None:
    assert {doc["kind"] for doc in render(*args)} & MONITORING_KINDS == kinds


@pytest.mark.parametrize("values", [FULL_VALUES, GKE_VALUES], ids=["full", "gke"])
def test_monitoring_resources_match_their_crds(values: pathlib.Path) -> None:
    docs = [doc for doc in render("--values", str(values)) if doc["kind"] in MONITORING_KINDS]
    assert docs
    for doc in docs:
        jsonschema.validate(doc, BY_KIND[doc["kind"]])


def test_gke_values_enable_managed_prometheus() -> None:
    docs = render("--values", str(GKE_VALUES))
    kinds = {doc["kind"] for doc in docs}
    assert {"PodMonitoring", "ClusterPodMonitoring", "ClusterRules"} <= kinds
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_rules_are_the_rule_file() -> None:
    docs = render("--values", str(FULL_VALUES))
    (rule,) = of_kind(docs, "PrometheusRule")
    (cluster_rules,) = of_kind(docs, "ClusterRules")
    assert rule["spec"]["groups"] == cluster_rules["spec"]["groups"] == rule_groups()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# ------------------------------------------------------------------ the management port


def test_metrics_only_on_the_management_port() -> None:
    docs = render("--values", str(FULL_VALUES))
    gateway = container(docs, "relais-gateway")
    assert {"name": "RELAIS_GATEWAY_METRICS_PORT", "value": "9091"} in gateway["env"]
    assert {"name": "metrics", "containerPort": 9091, "protocol": "TCP"} in gateway["ports"]
    services = named(docs, "Service")
    assert [p["name"] for p in services["relais-gateway"]["spec"]["ports"]] == ["http"]
    metrics = services["relais-gateway-metrics"]["spec"]
    assert metrics["clusterIP"] == "None"
    assert metrics["ports"] == [
        {"name": "metrics", "port": 9091, "targetPort": "metrics", "protocol": "TCP"}
    ]
    (ingress,) = of_kind(docs, "Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {
                "name": "relais-gateway",
                "port": {"name": "http"},
            }


def test_the_autoscaler_reads_the_service_that_carries_the_metrics_port() -> None:
    for args, service, port in [
        ((), "relais-gateway-metrics", "metrics"),
        (("--set", "gateway.metricsPort=0"), "relais-gateway", "http"),
    ]:
        docs = render(*args)
        operator = container(docs, "relais-operator")
        (env,) = [e for e in operator["env"] if e["name"] == "RELAIS_OPERATOR_GATEWAY_SERVICE"]
        assert env["value"] == f"relais-system/{service}"
        ports = [p["name"] for p in named(docs, "Service")[service]["spec"]["ports"]]
        assert port in ports  # the autoscaler prefers "metrics", falls back to "http"


def test_monitors_follow_the_metrics_ports() -> None:
    for args, port in [((), "metrics"), (("--set", "gateway.metricsPort=0"), "http")]:
        docs = render(*PROMETHEUS_OPERATOR, *args)
        monitor = named(docs, "ServiceMonitor")["relais-gateway"]["spec"]
        assert monitor["endpoints"][0]["port"] == port
        selected = monitor["selector"]["matchLabels"]
        carriers = [
            s
            for s in of_kind(docs, "Service")
            if selected.items() <= s["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in carriers] == [
            "relais-gateway-metrics" if port == "metrics" else "relais-gateway"
        ]
    operator = named(render(*PROMETHEUS_OPERATOR), "ServiceMonitor")["relais-operator"]["spec"]
    assert operator["endpoints"][0]["port"] == "metrics"


def test_operator_metrics_port_setting() -> None:
    docs = render("--values", str(FULL_VALUES))
    config = named(docs, "ConfigMap")["relais-operator"]["data"]
    assert config["RELAIS_OPERATOR_METRICS_PORT"] == "9100"
    off = render("--set", "operator.metricsPort=0")
    assert named(off, "ConfigMap")["relais-operator"]["data"]["RELAIS_OPERATOR_METRICS_PORT"] == "0"
    assert "relais-operator-metrics" not in named(off, "Service")


def test_engine_pod_monitors_select_vllm_and_tgi_pods_only() -> None:
    from relais_operator import resources
    from relais_operator.settings import OperatorSettings
    from relais_operator.spec import LLMDeployment

    def pod_labels(engine: str, model: str) -> dict[str, str]:
        llm = LLMDeployment.from_body(
            {
                "apiVersion": "relais.dev/v1alpha1",
                "kind": "LLMDeployment",
                "metadata": {"name": "m", "namespace": "team-a", "uid": "u", "generation": 1},
                "spec": {"engine": engine, "model": model, "gpu": {"count": 0}},
            }
        )
        workload = resources.build_workload(llm, OperatorSettings())
        labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
        return labels

    docs = render("--values", str(FULL_VALUES))
    (pod_monitor,) = of_kind(docs, "PodMonitor")
    (cluster_monitoring,) = of_kind(docs, "ClusterPodMonitoring")
    for selector in (pod_monitor["spec"]["selector"], cluster_monitoring["spec"]["selector"]):
        wanted = selector["matchLabels"].items()
        assert wanted <= pod_labels("vllm", "Qwen/Qwen2.5-0.5B-Instruct").items()
        assert wanted <= pod_labels("tgi", "google/gemma-2-2b-it").items()
        assert not wanted <= pod_labels("ollama", "qwen2.5:0.5b").items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    # A namespace-scoped operator: the model namespaces only.
    assert pod_monitor["spec"]["namespaceSelector"] == {
        "matchNames": ["relais-system", "shared-models", "team-a", "team-b"]
    }
    cluster_wide = named(render(*PROMETHEUS_OPERATOR), "PodMonitor")["relais-engines"]
    assert cluster_wide["spec"]["namespaceSelector"] == {"any": True}


# ------------------------------------------------------------------ dashboards


def test_dashboards_ship_as_sidecar_configmaps() -> None:
    docs = render("--values", str(FULL_VALUES))
    maps = [c for c in of_kind(docs, "ConfigMap") if "dashboard" in c["metadata"]["name"]]
    files = {path.name: path for path in (CHART / "dashboards").glob("*.json")}
    assert len(maps) == len(files) == 3
    for config in maps:
        assert config["metadata"]["namespace"] == "monitoring"
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config["metadata"]["annotations"]["grafana_folder"] == "Relais"
        ((name, text),) = config["data"].items()
        assert json.loads(text) == json.loads(files[name].read_text())


# ------------------------------------------------------------------ who may scrape


def _policies(*args: str) -> dict[str, dict[str, Any]]:
    return named(render(*args), "NetworkPolicy")


def test_the_management_port_admits_the_operator_and_the_scrapers_only() -> None:
    docs_policies = _policies("--values", str(FULL_VALUES))
    gateway_rules = docs_policies["relais-gateway"]["spec"]["ingress"]
    api_rule, metrics_rule = gateway_rules
    assert api_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "from" not in api_rule  # the public entry point
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    operator_peer, prometheus_peer = metrics_rule["from"]
    assert operator_peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == (
        "relais-operator"
    )
    assert prometheus_peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    (operator_rule,) = docs_policies["relais-operator"]["spec"]["ingress"]
    assert operator_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert operator_rule["from"] == [prometheus_peer]


def test_without_scrapers_only_the_operator_reads_metrics() -> None:
    policies = _policies()
    _, metrics_rule = policies["relais-gateway"]["spec"]["ingress"]
    (operator_peer,) = metrics_rule["from"]
    assert "podSelector" in operator_peer
    assert policies["relais-operator"]["spec"]["ingress"] == []
    # The gateway, and the operator on the adapter-agents' port only.
    gateway, agent = policies["relais-models"]["spec"]["ingress"]
    assert "ports" not in gateway
    assert agent["ports"] == [{"port": "agent", "protocol": "TCP"}]


def test_gke_scrapers_come_from_gmp_system() -> None:
    policies = _policies("--values", str(GKE_VALUES))
    gmp = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gmp-system"}}}
    _, metrics_rule = policies["relais-gateway"]["spec"]["ingress"]
    assert gmp in metrics_rule["from"]
    assert policies["relais-operator"]["spec"]["ingress"][0]["from"] == [gmp]
    _, _, scrapers = policies["relais-models"]["spec"]["ingress"]
    assert scrapers == {"ports": [{"port": "http", "protocol": "TCP"}], "from": [gmp]}


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "gateway.metricsPort=8000"], "/gateway/metricsPort"),
        (["--set", "operator.metricsPort=70000"], "/operator/metricsPort"),
        (["--set", "monitoring.interval=soon"], "/monitoring/interval"),
        (["--set", "monitoring.grafana.enabled=true"], "grafana"),
        (["--set", "monitoring.prometheusOperator.enabled=yes"], "/monitoring/prometheusOperator"),
    ],
)
def test_schema_rejects_bad_monitoring_values(args: list[str], complaint: str) -> None:
    result = helm_template(*args, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr
