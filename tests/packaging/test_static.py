"""Static checks of the packaging files: hadolint on both Dockerfiles, shellcheck on the scripts,
and a build context that can never carry weights, venvs or caches into an image."""

from __future__ import annotations

import fnmatch

import pytest

from tests.packaging.conftest import ROOT, require_tool, run

DOCKERFILES = [ROOT / "Dockerfile.operator", ROOT / "Dockerfile.gateway"]
SCRIPTS = [
    ROOT / "hack" / "ci-docker.sh",
    ROOT / "hack" / "build-images.sh",
    ROOT / "hack" / "demo-cluster.sh",
    ROOT / "deploy" / "kind" / "e2e.sh",
]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: object) -> None:
    result = run(
        require_tool("hadolint"), "--failure-threshold", "info", str(dockerfile), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: object) -> None:
    text = ROOT.joinpath(str(dockerfile)).read_text()
    assert text.count("FROM ${BASE_IMAGE}") == 2, "builder and runtime on the same base"
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    assert "--constraint constraints.txt" in text
    assert "USER 10001:10001" in text
    assert "HEALTHCHECK" in text


def test_shellcheck_clean() -> None:
    result = run(require_tool("shellcheck"), *map(str, SCRIPTS), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def included(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics (last match wins; `!` re-includes), enough for ours."""
    keep = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").replace("**/", "").removesuffix("/**")
        name_only = pattern.removeprefix("!").startswith("**/")
        target = path.rsplit("/", 1)[-1] if name_only else path
        if fnmatch.fnmatch(target, glob) or target.startswith(glob.rstrip("*") + "/"):
            keep = negated
    return keep


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("pyproject.toml", True),
        ("constraints.txt", True),
        ("gateway/relais_gateway/app.py", True),
        ("operator/relais_operator/main.py", True),
        (".venv/bin/python", False),
        (".cache/models/gemma.gguf", False),
        ("models/qwen.gguf", False),
        ("gateway/relais_gateway/weights.safetensors", False),
        ("tests/fakes/ollama.py", False),
        ("charts/relais/values.yaml", False),
        ("operator/relais_operator/__pycache__/main.cpython-311.pyc", False),
    ],
)
def test_dockerignore_keeps_weights_out(path: str, expected: bool) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert included(path, patterns) is expected
