"""The pure half of kube.py: what apply() would write, given desired and current objects."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
from relais_operator import kube, resources
from relais_operator.settings import OperatorSettings

from tests.operator.builders import CASES, make

SETTINGS = OperatorSettings()


def _server_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The object as an API server returns it: our manifest plus defaults and metadata."""
    current = copy.deepcopy(kube.with_hash(manifest))
    current["metadata"] |= {"uid": "x", "resourceVersion": "7", "generation": 1}
    current["metadata"]["labels"]["added-by-someone"] = "else"
    if current["kind"] == "StatefulSet":
        pod = current["spec"]["template"]["spec"]
        pod["containers"][0] |= {
            "imagePullPolicy": "IfNotPresent",
            "terminationMessagePath": "/dev/termination-log",
        }
        pod["dnsPolicy"] = "ClusterFirst"
        current["spec"]["revisionHistoryLimit"] = 10
    current["status"] = {"replicas": 1}
    return current


@pytest.mark.parametrize("case", sorted(CASES))
def test_unchanged_objects_need_no_write(case: str) -> None:
    for child in resources.build_children(make(case, CASES[case]), SETTINGS):
        desired = kube.with_hash(child)
        assert kube.patch_ops(desired, _server_view(child)) == []
        assert not kube.needs_recreate(desired, _server_view(child))


def test_changed_spec_patches_only_our_paths() -> None:
    old = resources.build_workload(make("q", CASES["ollama-l4"]), SETTINGS)
    new = resources.build_workload(make("q", {**CASES["ollama-l4"], "replicas": 4}), SETTINGS)
    ops = kube.patch_ops(kube.with_hash(new), _server_view(old))
    paths = {op["path"] for op in ops}
    assert {"/spec/replicas", "/spec/template"} <= paths
    assert "/metadata/labels" not in paths  # others' labels are kept: keys are patched one by one
    assert {op["path"] for op in ops if op["path"].startswith("/metadata")} == {
        "/metadata/annotations/relais.dev~1desired-hash"
    }


def test_drift_is_corrected_even_with_the_same_hash() -> None:
    child = resources.build_service(make("q", CASES["ollama-l4"]), SETTINGS)
    current = _server_view(child)
    current["spec"]["ports"][0]["port"] = 1
    ops = kube.patch_ops(kube.with_hash(child), current)
    assert [op["path"] for op in ops] == ["/spec/ports"]


def test_immutable_change_needs_recreate() -> None:
    old = resources.build_workload(make("q", CASES["ollama-l4"]), SETTINGS)
    bigger = {**CASES["ollama-l4"], "storage": {"size": "100Gi"}}
    new = resources.build_workload(make("q", bigger), SETTINGS)
    assert kube.needs_recreate(kube.with_hash(new), _server_view(old))


def test_missing_owner_reference_is_added() -> None:
    child = resources.build_service(make("q", CASES["ollama-l4"]), SETTINGS)
    current = _server_view(child)
    del current["metadata"]["ownerReferences"]
    ops = kube.patch_ops(kube.with_hash(child), current)
    assert ops == [
        {
            "op": "add",
            "path": "/metadata/ownerReferences",
            "value": child["metadata"]["ownerReferences"],
        }
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (422, kopf.PermanentError),
        (400, kopf.PermanentError),
        (403, kopf.TemporaryError),
        (500, kopf.TemporaryError),
        (429, kopf.TemporaryError),
    ],
)
def test_api_errors_map_to_kopf_errors(status: int, error: type[Exception]) -> None:
    exc = kube.ApiError(status, "spec.replicas: Invalid value")
    with pytest.raises(error, match="HTTP"), kube.api_errors("StatefulSet x/y"):
        raise exc


def test_object_paths() -> None:
    llm = make("q", CASES["cpu-shared-cache"])
    paths = [kube.object_path(child) for child in resources.build_children(llm, SETTINGS)]
    assert paths == [
        "/api/v1/namespaces/models/persistentvolumeclaims/q-models",
        "/api/v1/namespaces/models/services/q",
        "/apis/apps/v1/namespaces/models/statefulsets/q",
    ]
