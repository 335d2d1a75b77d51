"""The generated manifests: charts/relais/crds/ and manifests/install.yaml match their sources,
and `hack/manifests.py check` really catches drift."""

from __future__ import annotations

import pathlib
import shutil
import sys

import pytest

from tests.packaging.conftest import CRD, ROOT, documents, of_kind, require_tool, run

SCRIPT = ROOT / "hack" / "manifests.py"


def manifests(*args: str, check: bool = True) -> str:
    require_tool("helm")
    result = run(sys.executable, str(SCRIPT), *args, check=check)
    return result.stdout + result.stderr


@pytest.fixture
def scratch_repo(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of what the generator reads, with its outputs generated."""
    shutil.copytree(ROOT / "charts" / "relais", tmp_path / "charts" / "relais")
    (tmp_path / "manifests").mkdir()
    shutil.copy(CRD, tmp_path / "manifests" / "crd.yaml")
    manifests("write", "--root", str(tmp_path))
    return tmp_path


def test_repository_has_no_drift() -> None:
    assert "up to date" in manifests("check")


def test_check_catches_a_changed_crd(scratch_repo: pathlib.Path) -> None:
    assert "up to date" in manifests("check", "--root", str(scratch_repo))
    crd = scratch_repo / "manifests" / "crd.yaml"
    crd.write_text(crd.read_text() + "# a new field\n")
    out = manifests("check", "--root", str(scratch_repo), check=False)
    assert "+# a new field" in out
    assert "make manifests" in out
    manifests("write", "--root", str(scratch_repo))
    assert "up to date" in manifests("check", "--root", str(scratch_repo))


def test_check_catches_a_hand_edited_install_yaml(scratch_repo: pathlib.Path) -> None:
    install = scratch_repo / "manifests" / "install.yaml"
    install.write_text(install.read_text().replace("replicas: 2", "replicas: 5"))
    out = manifests("check", "--root", str(scratch_repo), check=False)
    assert "-  replicas: 5" in out
    assert "+  replicas: 2" in out


def test_install_yaml_is_complete(scratch_repo: pathlib.Path) -> None:
    docs = documents((scratch_repo / "manifests" / "install.yaml").read_text())
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["name"] == "relais-system"
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert docs[1]["kind"] == "CustomResourceDefinition"
    assert docs[1]["metadata"]["name"] == "llmdeployments.relais.dev"
    namespaced = [d for d in docs[2:] if d["kind"] not in {"ClusterRole", "ClusterRoleBinding"}]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"relais-system"}
    assert len(of_kind(docs, "Deployment")) == 2
    # No key in a public file: the gateway mounts a Secret the header tells the user to create.
    assert not of_kind(docs, "Secret")
    (gateway,) = [d for d in of_kind(docs, "Deployment") if "gateway" in d["metadata"]["name"]]
    volumes = gateway["spec"]["template"]["spec"]["volumes"]
    (auth,) = [v for v in volumes if v["name"] == "auth"]
    assert auth["secret"]["secretName"] == "relais-gateway-auth"
    header = (scratch_repo / "manifests" / "install.yaml").read_text().split("---", 1)[0]
    assert "create secret generic relais-gateway-auth --from-file=auth.yaml" in header
