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
    OLLAMA_RUNTIME_OPTIONS,
    PLURAL,
    VERSION,
    Autoscaling,
    AutoscalingStatus,
    EnvVar,
    InvalidSpecError,
    LLMDeployment,
    LLMDeploymentSpec,
    OllamaOptions,
    RequestLimits,
    Resources,
    Routing,
    SecretKeyRef,
    Storage,
    Task,
    Toleration,
    describe,
)

__all__ = [
    "GPU",
    "GROUP",
    "HF_ENGINES",
    "KIND",
    "MAX_NAME_LENGTH",
    "OLLAMA_RUNTIME_OPTIONS",
    "PLURAL",
    "VERSION",
    "Autoscaling",
    "AutoscalingStatus",
    "EnvVar",
    "InvalidSpecError",
    "LLMDeployment",
    "LLMDeploymentSpec",
    "OllamaOptions",
    "RequestLimits",
    "Resources",
    "Routing",
    "SecretKeyRef",
    "Storage",
    "Task",
    "Toleration",
    "describe",
]
