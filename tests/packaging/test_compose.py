"""The local stack: docker-compose.yml (+ the GPU override) is valid for Debian's docker-compose,
wires the gateway's static config to Ollama, and keeps models on a named volume."""

from __future__ import annotations

import urllib.parse
from typing import Any

import yaml

from tests.packaging.conftest import ROOT, find_tool, run, skip_or_fail

COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "docker-compose.gpu.yml"
GATEWAY_CONFIG = ROOT / "deploy" / "local" / "gateway.yaml"


def compose_config(*files: str) -> dict[str, Any]:
    """`docker-compose config` of the given files: compose's own validation and merge."""
    tool = find_tool("docker-compose")
    if tool is None:
        skip_or_fail("docker-compose is not installed (apt-get install docker-compose)")
    assert tool is not None
    args = [a for f in files for a in ("-f", f)]
    result = run(tool, *args, "config", cwd=ROOT)
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_compose_stack_is_valid_and_wired() -> None:
    config = compose_config(str(COMPOSE))
    services = config["services"]
    assert set(services) == {"ollama", "pull-model", "gateway"}

    ollama = services["ollama"]
    assert "ollama-models:/root/.ollama" in [
        f"{v['source']}:{v['target']}" if isinstance(v, dict) else v.rsplit(":rw", 1)[0]
        for v in ollama["volumes"]
    ]
    assert "ollama-models" in config["volumes"]
    assert "deploy" not in ollama, "the GPU reservation belongs in docker-compose.gpu.yml"

    gateway = services["gateway"]
    assert gateway["command"][:2] == ["--config", "/etc/relais/gateway.yaml"]
    assert gateway["depends_on"]["pull-model"]["condition"] == "service_completed_successfully"
    assert gateway["depends_on"]["ollama"]["condition"] == "service_healthy"
    (port,) = gateway["ports"]
    published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
    assert published.startswith("127.0.0.1:"), "auth is off locally: loopback only"
    assert gateway["read_only"] is True
    assert gateway["user"] == "10001:10001"


def test_gpu_override_reserves_nvidia_devices() -> None:
    config = compose_config(str(COMPOSE), str(GPU_OVERRIDE))
    (device,) = config["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert device["driver"] == "nvidia"


def test_compose_uses_the_operators_pinned_ollama() -> None:
    from relais_operator.engines import OLLAMA_IMAGE

    raw = yaml.safe_load(COMPOSE.read_text())
    for name in ("ollama", "pull-model"):
        image = raw["services"][name]["image"]
        assert image == OLLAMA_IMAGE
        assert not image.endswith(":latest")


def test_local_gateway_config_loads_and_points_at_compose_ollama() -> None:
    from relais_gateway.config import load_static_config

    config = load_static_config(GATEWAY_CONFIG)
    (deployment,) = config.deployments
    (endpoint,) = deployment.endpoints
    url = urllib.parse.urlsplit(endpoint)
    assert (url.hostname, url.port) == ("ollama", 11434)
    pulled = yaml.safe_load(COMPOSE.read_text())["services"]["pull-model"]["entrypoint"][-1]
    assert deployment.servedModelName == pulled
