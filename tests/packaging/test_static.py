"""Static checks of the packaging files: hadolint on both Dockerfiles, shellcheck on the scripts,
and a build context that can never carry weights, venvs or caches into an image."""

from __future__ import annotations

import fnmatch
import pathlib
import re

import pytest

from tests.packaging.conftest import ROOT, require_tool, run

DOCKERFILES = [ROOT / "Dockerfile.operator", ROOT / "Dockerfile.gateway"]
SCRIPTS = [
    *sorted((ROOT / "hack").glob("*.sh")),
    ROOT / "deploy" / "kind" / "e2e.sh",
    ROOT / ".ci" / "run",
]
# Every shell that runs under `set -o pipefail`, the Makefile's recipes included.
PIPEFAIL_SHELL = [*SCRIPTS, *sorted((ROOT / "deploy").rglob("*.sh")), ROOT / "Makefile"]
# A reader that can exit before its writer is done: under pipefail the writer's SIGPIPE (141)
# fails the pipeline, at random (issue #11: `kubectl version | head -1` broke `make test`).
EARLY_EXIT_READER = re.compile(
    r"(?<!\|)\|\s*(head\b|grep\s+-\w*[qm]|sed\s+(-n\s+)?'?\d*q|awk\s+'[^']*\bexit\b)"
)


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


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ('"$bin/kubectl" version --client=true 2>/dev/null | head -1', True),
        ("kind get clusters | grep -qx kind", True),
        ("docker images | sed 1q", True),
        ("ls | awk '{print; exit}'", True),
        ("kind get clusters | grep -x kind >/dev/null", False),
        ("echo a || head -1 file", False),
        ("awk '$1 == 1 {print $2; exit}' file", False),
    ],
)
def test_early_exit_reader_pattern(line: str, flagged: bool) -> None:
    assert bool(EARLY_EXIT_READER.search(line)) is flagged


@pytest.mark.parametrize("script", PIPEFAIL_SHELL, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pipe_into_an_early_exit_reader(script: pathlib.Path) -> None:
    code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in code if EARLY_EXIT_READER.search(line)] == []


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
        ("gateway/relais_gateway/routing/balancer.py", True),
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
