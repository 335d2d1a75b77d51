"""Fixtures for the packaging tests: tool lookup, chart rendering, and a Docker engine with images.

Tools (helm, checkov, hadolint, docker) come from .venv/bin or PATH; a missing one skips the tests
that need it, with the reason. A missing Docker engine fails instead when RELAIS_REQUIRE_DOCKER=1
(CI), where hack/ci-docker.sh has set one up.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relais"
CRD = ROOT / "manifests" / "crd.yaml"
VENV_BIN = pathlib.Path(sys.executable).parent
CI_STATE = pathlib.Path(os.environ.get("RELAIS_CI_STATE_DIR", "/var/tmp/relais-ci"))
CI_BASE_IMAGE = "relais-base:bookworm-slim"
OPERATOR_IMAGE = os.environ.get("RELAIS_OPERATOR_IMAGE", "relais-operator:dev")
GATEWAY_IMAGE = os.environ.get("RELAIS_GATEWAY_IMAGE", "relais-gateway:dev")


def find_tool(name: str) -> str | None:
    """A tool from the venv's bin/ (hack/install-tools.sh puts helm and checkov there) or PATH."""
    return shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)


def require_tool(name: str) -> str:
    """A tool that `make install` provides: missing means a broken install, so the test fails."""
    path = find_tool(name)
    if path is None:
        pytest.fail(f"{name} is not installed (make install / hack/install-tools.sh provide it)")
    return path


def tool_env() -> dict[str, str]:
    """The environment with the venv's bin/ first on PATH (checkov must find helm)."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(
    *args: str, check: bool = True, timeout: float = 300, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; a failure shows both streams."""
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=tool_env(), check=False, **kwargs
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def helm_template(
    *extra: str, namespace: str = "relais-system", check: bool = True
) -> subprocess.CompletedProcess[str]:
    helm = require_tool("helm")
    return run(
        helm, "template", "relais", str(CHART), "--namespace", namespace, *extra, check=check
    )


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    """manifests/crd.yaml, the one source of the CRD."""
    loaded: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return loaded


# ------------------------------------------------------------------ docker


def docker_unavailable() -> str | None:
    """Why no Docker engine answers, or None when one does."""
    docker = find_tool("docker")
    if docker is None:
        return "the docker CLI is not installed"
    probe = subprocess.run(
        [docker, "info"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        return f"no Docker engine answers (`docker info`: {probe.stderr.strip()[:200]})"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with the reason, or fail when CI requires Docker (RELAIS_REQUIRE_DOCKER=1)."""
    if os.environ.get("RELAIS_REQUIRE_DOCKER") == "1":
        pytest.fail(f"RELAIS_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker() -> str:
    reason = docker_unavailable()
    if reason is not None:
        skip_or_fail(reason)
    return shutil.which("docker") or "docker"


def image_exists(docker: str, ref: str) -> bool:
    return (
        subprocess.run(
            [docker, "image", "inspect", ref], capture_output=True, check=False
        ).returncode
        == 0
    )


def engine_has_bridge(docker: str) -> bool:
    """False for an engine started with --bridge=none (CI): builds and runs need --network host."""
    probe = subprocess.run(
        [docker, "network", "inspect", "bridge"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def images(docker: str) -> dict[str, str]:
    """Both images, (re)built by hack/build-images.sh: a no-op from the layer cache when CI's
    hack/ci-docker.sh built them already. The base is BASE_IMAGE, else CI's debootstrapped base
    when present, else python:3.12-slim."""
    base = os.environ.get("BASE_IMAGE") or (
        CI_BASE_IMAGE if image_exists(docker, CI_BASE_IMAGE) else "python:3.12-slim"
    )
    env = {
        **tool_env(),
        "BASE_IMAGE": base,
        "RELAIS_OPERATOR_IMAGE": OPERATOR_IMAGE,
        "RELAIS_GATEWAY_IMAGE": GATEWAY_IMAGE,
    }
    if not engine_has_bridge(docker):
        env["DOCKER_NETWORK"] = "host"
    build = subprocess.run(
        [str(ROOT / "hack" / "build-images.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"hack/build-images.sh failed:\n{build.stderr[-4000:]}")
    return {
        "operator": OPERATOR_IMAGE,
        "gateway": GATEWAY_IMAGE,
        "base": base,
        "build_log": build.stderr,
    }
