"""Relais API: the typed LLMDeployment resource, shared by the operator and the gateway.

Pure pydantic (no kopf, no Kubernetes client), so the gateway can import it without the
operator's dependencies. The CRD (manifests/crd.yaml) is the schema; these models mirror it.
"""

from relais_api.llmdeployment import (
    GPU,
    GROUP,
    HF_ENGINES,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    VERSION,
    Autoscaling,
    AutoscalingStatus,
    EnvVar,
    InvalidSpecError,
    LLMDeployment,
    LLMDeploymentSpec,
    RequestLimits,
    Resources,
    Routing,
    SecretKeyRef,
    Storage,
    Toleration,
    describe,
)

__all__ = [
    "GPU",
    "GROUP",
    "HF_ENGINES",
    "KIND",
    "MAX_NAME_LENGTH",
    "PLURAL",
    "VERSION",
    "Autoscaling",
    "AutoscalingStatus",
    "EnvVar",
    "InvalidSpecError",
    "LLMDeployment",
    "LLMDeploymentSpec",
    "RequestLimits",
    "Resources",
    "Routing",
    "SecretKeyRef",
    "Storage",
    "Toleration",
    "describe",
]
