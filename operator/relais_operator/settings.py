"""Operator settings (pydantic-settings, env prefix RELAIS_OPERATOR_), loaded once at startup.

`main.py` reads them before kopf starts (namespaces and liveness must be known then) and hands
them to the handlers through kopf's memo; `kopf_settings()` maps them onto kopf's own settings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:  # kopf is imported where it runs (main.py decides what kopf may import)
    import kopf


# The operator image of this release (the chart's appVersion; a test keeps them equal).
DEFAULT_AGENT_IMAGE = "ghcr.io/relais-dev/relais-operator:0.1.0"


class OperatorSettings(BaseSettings):
    """Every knob of the operator; each is also an env var, e.g. RELAIS_OPERATOR_NAMESPACES."""

    model_config = SettingsConfigDict(env_prefix="RELAIS_OPERATOR_", frozen=True, extra="ignore")

    # Namespaces to watch, comma-separated in the environment; empty means cluster-wide.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    liveness_host: str = "0.0.0.0"
    liveness_port: int = Field(default=8080, ge=0, le=65535)
    # The operator's own Prometheus metrics at /metrics (metrics.py); port 0 disables them.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    # Cluster DNS domain, for status.endpoint.
    cluster_domain: str = "cluster.local"
    # Engine image overrides (an air-gapped mirror); empty means the engine table's pinned image.
    ollama_image: str = ""
    tgi_image: str = ""
    vllm_image: str = ""
    # The adapter-agent sidecar's image (vLLM pods with spec.lora): the operator's own image, which
    # holds relais_operator.adapter_agent. The chart sets it to the operator image it deploys.
    agent_image: str = DEFAULT_AGENT_IMAGE
    # Seconds between two reads of the adapter agents' reports (GET <pod>:8001/adapters), and how
    # long one read may take (a pod that does not answer in time is skipped this round).
    adapter_poll_interval_s: float = Field(default=10.0, gt=0, le=300)
    adapter_poll_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # How long a replica may take to load its model before the kubelet restarts it.
    startup_timeout_seconds: int = Field(default=3600, ge=60)
    # Retries of a shared cache's download Job before it fails (FetchFailed); never unbounded.
    fetch_backoff_limit: int = Field(default=3, ge=0, le=10)
    # How long a download Job may run in all (its activeDeadlineSeconds) before it fails.
    fetch_timeout_seconds: int = Field(default=21600, ge=60)
    # UID/GID the model servers and the fetch step run as (the cache volume is chowned via fsGroup).
    run_as_user: int = Field(default=1000, ge=1)
    # The gateway Service ("namespace/name") whose replicas' /metrics drive the autoscaler; the
    # chart sets it. Empty: no autoscaling (resources with spec.autoscaling keep their replicas).
    gateway_service: str = ""
    # Seconds between two reads of the gateways' metrics (and autoscaling decisions).
    autoscale_interval_s: float = Field(default=5.0, gt=0, le=300)
    # Watch CustomResourceDefinitions (needs list/watch on them); off = scan the API once at start.
    watch_crds: bool = True
    log_level: str = "INFO"

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gateway_service")
    @classmethod
    def _namespaced_name(cls, value: str) -> str:
        value = value.strip()
        namespace, sep, name = value.partition("/")
        if value and (not sep or not namespace or not name or "/" in name):
            raise ValueError(f"expected namespace/name (or empty), got {value!r}")
        return value

    @property
    def gateway(self) -> tuple[str, str] | None:
        """(namespace, name) of the gateway Service, or None when the autoscaler is off."""
        if not self.gateway_service:
            return None
        namespace, _, name = self.gateway_service.partition("/")
        return namespace, name

    def image_for(self, engine: str) -> str:
        """The configured image override for an engine, or '' for the engine table's default."""
        images = {"ollama": self.ollama_image, "tgi": self.tgi_image, "vllm": self.vllm_image}
        return images.get(engine, "")

    @property
    def liveness_endpoint(self) -> str | None:
        """kopf's liveness URL, or None when the port is 0 (disabled)."""
        if not self.liveness_port:
            return None
        return f"http://{self.liveness_host}:{self.liveness_port}/healthz"


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    """Tune kopf for few API writes: its state under relais.dev/ keys, events for warnings only."""
    import kopf

    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="relais.dev"
    )
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="relais.dev", key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = "relais.dev/finalizer"
    # kopf skips events older than its own last patch until it sees that patch come back; under
    # load (a burst of creates) 5 s can pass, and a stale event would re-run and re-patch.
    kopf_settings.persistence.consistency_timeout = 30
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.peering.standalone = True
    kopf_settings.peering.mandatory = False
    kopf_settings.scanning.disabled = not settings.watch_crds
    # A failed reconcile is retried with back-off instead of hammering the API.
    kopf_settings.networking.error_backoffs = [1, 2, 5, 10, 20, 30]


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """A fresh kopf settings object configured from ours."""
    import kopf

    result = kopf.OperatorSettings()
    configure_kopf(result, settings)
    return result
