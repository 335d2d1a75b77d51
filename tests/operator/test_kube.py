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
    if current["kind"] == "Job":  # the Job controller's selector and pod labels
        current["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": "x"}}
        current["spec"]["template"]["metadata"]["labels"]["job-name"] = manifest["metadata"]["name"]
        current["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
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
        f"/apis/batch/v1/namespaces/models/jobs/{resources.fetch_job_name(llm)}",
        "/api/v1/namespaces/models/services/q",
        "/apis/apps/v1/namespaces/models/statefulsets/q",
    ]


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    job = resources.build_fetch_job(make("q", spec), SETTINGS)
    assert job is not None
    return job


def test_a_job_is_never_patched_and_replaced_only_until_it_succeeds() -> None:
    shared = CASES["vllm-shared-cache"]
    old = _job(shared)
    fixed = _job({**shared, "hfTokenSecretRef": {"name": "other-token"}})
    assert fixed["metadata"]["name"] == old["metadata"]["name"]  # same model and revision
    current = _server_view(old)
    ops = kube.patch_ops(kube.with_hash(fixed), current)
    assert all(not op["path"].startswith("/spec") for op in ops)  # the pod template: never
    current["status"] = {"failed": 4, "conditions": [{"type": "Failed", "status": "True"}]}
    assert kube.needs_recreate(kube.with_hash(fixed), current)  # a failed Job, fixed: again
    current["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    assert not kube.needs_recreate(kube.with_hash(fixed), current)  # the cache is filled


def test_a_new_model_or_revision_is_a_new_job() -> None:
    shared = CASES["vllm-shared-cache"]
    names = {
        _job(shared)["metadata"]["name"],
        _job({**shared, "revision": "v2"})["metadata"]["name"],
        _job({**shared, "model": "meta-llama/Llama-3.2-1B"})["metadata"]["name"],
    }
    assert len(names) == 3
    assert all(name.startswith("q-fetch-") for name in names)


def test_job_names_fit_a_label_and_stay_apart() -> None:
    spec = CASES["cpu-shared-cache"]
    first, second = "a" * 51 + "b", "a" * 51 + "c"
    jobs = [resources.fetch_job_name(make(name, spec)) for name in (first, second)]
    assert all(len(job) <= 63 for job in jobs)
    assert jobs[0] != jobs[1]
