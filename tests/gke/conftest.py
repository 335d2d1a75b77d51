"""Fixtures for the deploy/gke tests: paths, an isolated credential-free gcloud, script envs."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.gke.gcloud_cli import isolated_env

REPO_ROOT = Path(__file__).resolve().parents[2]
GKE_DIR = REPO_ROOT / "deploy" / "gke"
VENV_BIN = Path(sys.executable).parent
FAKE_PROJECT = "relais-ci-no-such-project"

# Settings the scripts read (`${NAME:-default}`), cleared so the developer's own exports cannot
# change what is tested.
SCRIPT_SETTINGS = sorted(
    {
        name
        for script in GKE_DIR.glob("*.sh")
        for name in re.findall(r"\$\{([A-Z_]+):-", script.read_text())
    }
)


def tool(name: str) -> str | None:
    """A tool from the virtualenv first (helm, kubectl, shellcheck), else from PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


@pytest.fixture(scope="session")
def gcloud_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for running the real gcloud with an empty config: no account, no prompts."""
    if shutil.which("gcloud") is None:
        pytest.skip("the gcloud CLI is not installed (install google-cloud-cli to run this check)")
    return isolated_env(tmp_path_factory.mktemp("gcloud-config"))


@pytest.fixture
def script_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running a deploy/gke script: a fake project, no gcloud account."""
    env = isolated_env(tmp_path / "gcloud-config")
    for name in SCRIPT_SETTINGS:
        env.pop(name, None)
    env["PROJECT_ID"] = FAKE_PROJECT
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env
