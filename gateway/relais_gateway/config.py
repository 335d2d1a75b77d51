"""The static backend file (`relais-gateway --config FILE`) and its auth section, as models.

Field names follow the LLMDeployment spec (camelCase), so one file reads like the cluster objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import relais_api
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestLimits(relais_api.RequestLimits):
    """The LLMDeployment's `requestLimits` block, as in the CRD; unknown keys are a typo here."""

    model_config = ConfigDict(**{**relais_api.RequestLimits.model_config, "extra": "forbid"})


class OllamaOptions(relais_api.OllamaOptions):
    """The LLMDeployment's `ollamaOptions`, under Ollama's own names (`num_ctx`) or the CRD's."""

    model_config = ConfigDict(**{**relais_api.OllamaOptions.model_config, "extra": "forbid"})


class Routing(relais_api.Routing):
    """The LLMDeployment's `routing` block, as in the CRD; unknown keys are a typo here."""

    model_config = ConfigDict(**{**relais_api.Routing.model_config, "extra": "forbid"})


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class StaticAdapter(_Strict):
    """A LoRA adapter the engine already serves under `name` (vLLM `--lora-modules`, an Ollama
    model created from the base, TGI `LORA_ADAPTERS`)."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)


class StaticDeployment(_Strict):
    """One model: its engine, its names and the replicas' base URLs."""

    name: str = Field(min_length=1)
    engine: Literal["ollama", "tgi", "vllm", "openai"] = "ollama"
    servedModelName: str = Field(min_length=1)
    """The name clients send as `model`."""
    model: str | None = Field(default=None, min_length=1)
    """The engine's own name for the model (an Ollama tag, vLLM's --served-model-name);
    defaults to `servedModelName`."""
    endpoints: list[str] = Field(default_factory=list)
    requestLimits: RequestLimits = Field(default_factory=RequestLimits)
    routing: Routing = Field(default_factory=Routing)
    task: relais_api.Task | None = None
    """What the engine serves when it serves one job (as a vLLM server does): `generate` (chat,
    completions) or `embed` (embeddings, rerank, score); unset: whatever the engine serves."""
    ollamaOptions: OllamaOptions | None = None
    """Ollama runtime options the deployment owns (engine ollama)."""
    adapters: list[StaticAdapter] = Field(default_factory=list, max_length=64)
    """LoRA adapters clients may ask for by `name` or `<servedModelName>_<name>`."""

    @field_validator("adapters")
    @classmethod
    def _unique_adapters(cls, value: list[StaticAdapter]) -> list[StaticAdapter]:
        names = [a.name for a in value]
        if len(names) != len(set(names)):
            raise ValueError("adapter names must be unique within a deployment")
        return value

    @model_validator(mode="after")
    def _adapter_names_differ(self) -> Self:
        if any(a.name == self.servedModelName for a in self.adapters):
            raise ValueError("an adapter name must differ from the deployment's servedModelName")
        return self

    def ollama_options(self) -> dict[str, int | bool]:
        return self.ollamaOptions.as_options() if self.ollamaOptions is not None else {}

    @field_validator("endpoints")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must be an http(s) URL")
        return [url.rstrip("/") for url in value]


class ApiKey(_Strict):
    """A client key: its name (logged), the secret, allowed served model names, and its rate."""

    name: str = Field(min_length=1)
    key: SecretStr
    models: list[str] | None = None
    """Served model names this key may use; absent means every model."""
    requestsPerMinute: int | None = Field(default=None, gt=0)


class AuthConfig(_Strict):
    """Either `keys: [...]` or, explicitly, `disabled: true`."""

    keys: list[ApiKey] = Field(default_factory=list)
    disabled: bool = False

    @model_validator(mode="after")
    def _keys_or_disabled(self) -> Self:
        if self.disabled and self.keys:
            raise ValueError("auth: give either `keys` or `disabled: true`, not both")
        if not self.disabled and not self.keys:
            raise ValueError("auth: no keys given; set `disabled: true` to run without auth")
        names = [k.name for k in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("auth: key names must be unique")
        return self


class StaticConfig(_Strict):
    """The whole `--config` file."""

    deployments: list[StaticDeployment] = Field(default_factory=list)
    auth: AuthConfig

    @model_validator(mode="after")
    def _unique_models(self) -> Self:
        served = [d.servedModelName for d in self.deployments]
        if len(served) != len(set(served)):
            raise ValueError("deployments: servedModelName must be unique")
        return self


def load_static_config(path: Path) -> StaticConfig:
    """Read and validate a `--config` file (raises pydantic.ValidationError or OSError)."""
    return StaticConfig.model_validate(yaml.safe_load(path.read_text()) or {})


def load_static_auth(path: Path) -> AuthConfig:
    """The `auth:` section of a `--config` file (for reloading the keys alone)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError("the config file must be a YAML mapping")
    return AuthConfig.model_validate(data.get("auth"))


def load_auth_file(path: Path) -> AuthConfig:
    """Read an `--auth-file`: the `auth:` section's content (top-level `auth:` key is accepted)."""
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and set(data) == {"auth"}:
        data = data["auth"]
    return AuthConfig.model_validate(data)
