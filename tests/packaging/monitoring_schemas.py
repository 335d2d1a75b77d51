"""Minimal JSON schemas of the monitoring resources the chart renders, from their CRDs.

`kubernetes-validate --strict` skips custom resources, so the chart's ServiceMonitor, PodMonitor
and PrometheusRule (prometheus-operator, monitoring.coreos.com/v1: example/prometheus-operator-crd/
monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml) and PodMonitoring,
ClusterPodMonitoring and ClusterRules (GKE Managed Service for Prometheus,
monitoring.googleapis.com/v1) are checked against these. Only the fields the chart uses are
listed, each with the type and the required fields the CRD gives it; `additionalProperties:
false` makes a misspelt field fail here as the API server's structural schema would prune it.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
STRING_MAP: Schema = {"type": "object", "additionalProperties": STRING}
# A Prometheus duration, as both CRDs pattern it.
DURATION: Schema = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                    "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}  # fmt: skip
LABEL_SELECTOR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
METADATA: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STRING, "namespace": STRING, "labels": STRING_MAP},
}
NAMESPACED_METADATA: Schema = {**METADATA, "required": ["name", "namespace"]}
CLUSTER_METADATA: Schema = {**METADATA, "not": {"required": ["namespace"]}}


def resource(api_version: str, kind: str, metadata: Schema, spec: Schema) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        },
    }


# --- prometheus-operator --------------------------------------------------------------------

COREOS = "monitoring.coreos.com/v1"
NAMESPACE_SELECTOR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": STRING}},
}
ENDPOINT: Schema = {  # ServiceMonitor spec.endpoints[] and PodMonitor spec.podMetricsEndpoints[]
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": STRING,
        "path": STRING,
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
    },
}
SERVICE_MONITOR = resource(
    COREOS,
    "ServiceMonitor",
    NAMESPACED_METADATA,
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": NAMESPACE_SELECTOR,
            "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT},
            "jobLabel": STRING,
            "targetLabels": {"type": "array", "items": STRING},
            "podTargetLabels": {"type": "array", "items": STRING},
        },
    },
)
POD_MONITOR = resource(
    COREOS,
    "PodMonitor",
    NAMESPACED_METADATA,
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": NAMESPACE_SELECTOR,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": ENDPOINT},
            "jobLabel": STRING,
            "podTargetLabels": {"type": "array", "items": STRING},
        },
    },
)
RULE: Schema = {  # the rule of a Prometheus rule group, in both APIs
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": STRING,
        "record": STRING,
        "expr": {"type": ["string", "integer"]},
        "for": DURATION,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}
RULE_GROUPS: Schema = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "rules"],
        "properties": {
            "name": STRING,
            "interval": DURATION,
            "rules": {"type": "array", "items": RULE},
        },
    },
}
PROMETHEUS_RULE = resource(
    COREOS,
    "PrometheusRule",
    NAMESPACED_METADATA,
    {"type": "object", "additionalProperties": False, "properties": {"groups": RULE_GROUPS}},
)

# --- GKE Managed Service for Prometheus --------------------------------------------------------

GMP = "monitoring.googleapis.com/v1"
SCRAPE_ENDPOINT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": ["string", "integer"]},
        "path": STRING,
        "scheme": {"enum": ["http", "https"]},
        "interval": DURATION,
        "timeout": DURATION,
    },
}
TARGET_LABELS: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "metadata": {"type": "array", "items": STRING},
        "fromPod": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["from"],
                "properties": {"from": STRING, "to": STRING},
            },
        },
    },
}
POD_MONITORING_SPEC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["selector", "endpoints"],
    "properties": {
        "selector": LABEL_SELECTOR,
        "endpoints": {"type": "array", "minItems": 1, "items": SCRAPE_ENDPOINT},
        "targetLabels": TARGET_LABELS,
    },
}
POD_MONITORING = resource(GMP, "PodMonitoring", NAMESPACED_METADATA, POD_MONITORING_SPEC)
CLUSTER_POD_MONITORING = resource(
    GMP, "ClusterPodMonitoring", CLUSTER_METADATA, POD_MONITORING_SPEC
)
CLUSTER_RULES = resource(
    GMP,
    "ClusterRules",
    CLUSTER_METADATA,
    {"type": "object", "additionalProperties": False, "properties": {"groups": RULE_GROUPS}},
)

BY_KIND: dict[str, Schema] = {
    "ServiceMonitor": SERVICE_MONITOR,
    "PodMonitor": POD_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
    "PodMonitoring": POD_MONITORING,
    "ClusterPodMonitoring": CLUSTER_POD_MONITORING,
    "ClusterRules": CLUSTER_RULES,
}
