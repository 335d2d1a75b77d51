"""Gateway settings (pydantic-settings, env prefix RELAIS_GATEWAY_), loaded once by `main`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything tunable about the gateway; CLI flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="RELAIS_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    source: Literal["static", "kubernetes"] = "static"
    config: Path | None = None
    """Static source: the YAML file with `deployments:` and `auth:`."""
    namespaces: list[str] = Field(default_factory=list)
    """Kubernetes source: namespaces to watch; empty means all."""
    auth_file: Path | None = None
    """Kubernetes source: a YAML file holding the `auth:` section's content."""
    log_level: str = "info"
    access_log: bool = False

    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins (`https://app.example.com`, or `*` with auth on) whose pages may call the gateway
    from a browser; empty: CORS off. Comma-separated in the environment."""

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve /metrics on this management port only (not on the API port); unset: on the API port."""

    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_upload_bytes: int = Field(default=25 * 1_048_576, gt=0)
    """An upload (`/v1/audio/...` multipart body); beyond it, 413."""
    max_header_bytes: int = Field(default=65_536, ge=1024)
    """Request line and headers together; beyond it, 431 before anything else is read."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """A request's line and headers must arrive within this, else the connection is closed."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """A request's body must arrive within this, else 408."""
    max_upstream_body_bytes: int = Field(default=64 * 1_048_576, gt=0)
    """An engine's whole (non-streamed) answer; beyond it, 502."""
    max_upstream_line_bytes: int = Field(default=8 * 1_048_576, gt=0)
    """One line of an engine's stream; beyond it, the stream ends with an in-band error."""
    auth_failures_per_minute: int = Field(default=30, ge=1)
    """Failed authentications one client address may make per minute; beyond them, 429."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_byte_timeout_s: float = Field(default=300.0, gt=0)
    """Wait for the engine's first byte; for non-streamed requests that is the whole answer."""
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    upstream_pool_limit: int = Field(default=1000, gt=0)
    keep_alive_timeout_s: int = Field(default=75, ge=1)
    """Idle client connections close after this. Above the idle time of client pools and load
    balancers, so a reused connection is not closed under a new request (uvicorn's 5 s is not)."""
    eject_cooldown_s: float = Field(default=10.0, ge=0)
    retry_after_s: int = Field(default=5, ge=1)
    """Retry-After of a 503 (no ready replica) and of a 429 (the model's queue is full)."""
    max_waiting_requests: int = Field(default=100, ge=0)
    """Requests that may wait per model (for a concurrency slot, or for a replica to start)."""
    queue_timeout_s: float = Field(default=30.0, gt=0)
    """How long a request over `maxConcurrentRequests` waits for a slot before its 429."""
    cold_start_timeout_s: float = Field(default=600.0, gt=0)
    """How long a request waits for a model scaled to zero to get a ready replica (a GPU node
    from zero takes minutes) before its 503."""
    adapter_poll_interval_s: float = Field(default=2.0, gt=0)
    """How often each ready vLLM replica of a deployment with LoRA adapters is asked which it
    has loaded (`/v1/models`); a request waiting for an adapter asks at once."""
    adapter_load_wait_s: float = Field(default=10.0, ge=0)
    """How long a request for a declared adapter no ready replica has loaded yet waits for one
    before its 503 `adapter_loading` (with Retry-After)."""
    health_check_interval_s: float = Field(default=5.0, ge=0)
    """Static source: how often each endpoint's health route is checked (0: never; every
    endpoint then counts as ready). Kubernetes: unused, EndpointSlices say what is ready."""
    auth_reload_interval_s: float = Field(default=2.0, gt=0)
    """How often the auth file (or the static config's `auth:`) is checked for new keys."""
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    """How long shutdown waits for in-flight requests and streams to finish."""
