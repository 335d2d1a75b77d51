"""The real operator against KMock through a resource's whole life.

Create, readiness, update, scale, delete, invalid input, restarts and no-op resyncs. KMock does
no garbage collection and runs no controllers: the tests play the StatefulSet controller and
the scheduler by writing the children's status, and assert ownerReferences instead of GC.
"""

from __future__ import annotations

import asyncio
from typing import Any

from relais_operator.kube import HASH_ANNOTATION

from tests.operator.conftest import (
    LLMD_PATH,
    NS,
    POD_PATH,
    STS_PATH,
    SVC_PATH,
    Api,
    Operator,
    eventually,
    llmd,
)

TINY = {"engine": "ollama", "model": "qwen2.5:0.5b", "gpu": {"count": 0}}
L4 = {"engine": "ollama", "model": "qwen2.5:7b-instruct", "gpu": {"count": 1, "type": "nvidia-l4"}}


async def _status(api: Api, name: str) -> dict[str, Any]:
    body = await api.get(f"{LLMD_PATH}/{name}")
    return (body or {}).get("status") or {}


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


async def _wait_status(api: Api, name: str, **expected: Any) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status = await _status(api, name)
        return status if all(status.get(k) == v for k, v in expected.items()) else None

    result: dict[str, Any] = await eventually(check, what=f"{name} status {expected}")
    return result


async def _wait_object(api: Api, path: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        return await api.get(path)

    result: dict[str, Any] = await eventually(check, what=path)
    return result


async def _settle(api: Api, quiet: float = 2.0, within: float = 60.0) -> None:
    """Wait until the operator has made no write for `quiet` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    count = len(api.writes())
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(quiet)
        now = len(api.writes())
        if now == count:
            return
        count = now
    raise AssertionError("the operator kept writing")


async def test_create_builds_children_and_status(api: Api, operator: Operator) -> None:
    body = llmd("qwen", L4)
    await api.create(LLMD_PATH, body)
    sts = await _wait_object(api, f"{STS_PATH}/qwen")
    svc = await _wait_object(api, f"{SVC_PATH}/qwen")
    status = await _wait_status(api, "qwen", phase="Pending")
    await _settle(api)

    uid = (await api.get(f"{LLMD_PATH}/qwen") or {})["metadata"]["uid"]
    for child in (sts, svc):
        assert child["metadata"]["labels"]["relais.dev/llmdeployment"] == "qwen"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "relais-operator"
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("LLMDeployment", "qwen", uid)
    pod = sts["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}
    ]

    assert status["endpoint"] == "http://qwen.default.svc.cluster.local:11434"
    assert status["servedModelName"] == "qwen2.5:7b-instruct"
    assert status["selector"] == "relais.dev/llmdeployment=qwen"
    assert (status["engine"], status["observedGeneration"], status["replicas"]) == ("ollama", 1, 0)
    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "ReplicasNotReady",
        1,
    )
    assert _condition(status, "ModelCacheReady")["status"] == "Unknown"
    # Creates: Service + StatefulSet; patches: status, kopf's own annotations.
    assert len(api.writes()) <= 5, api.writes()


async def test_status_follows_the_statefulset(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", TINY))
    await _wait_status(api, "qwen", phase="Pending")
    before = _condition(await _status(api, "qwen"), "Ready")

    # The StatefulSet controller reports a ready replica.
    await api.patch(f"{STS_PATH}/qwen/status", {"status": {"replicas": 1, "readyReplicas": 1}})
    status = await _wait_status(api, "qwen", phase="Ready")
    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"], status["readyReplicas"]) == (
        "True",
        "AllReplicasReady",
        1,
    )
    assert _condition(status, "ModelCacheReady")["status"] == "True"
    await _settle(api)

    # The replica goes away: Ready flips back, with a new transition time only on the flip.
    await api.patch(f"{STS_PATH}/qwen/status", {"status": {"readyReplicas": 0}})
    status = await _wait_status(api, "qwen", phase="Pending")
    again = _condition(status, "Ready")
    assert again["status"] == "False"
    assert again["lastTransitionTime"] >= before["lastTransitionTime"]


async def test_unschedulable_pod_shows_in_status(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", L4))
    await _wait_object(api, f"{STS_PATH}/qwen")
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "qwen-0",
            "namespace": NS,
            "labels": {"relais.dev/llmdeployment": "qwen"},
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        },
    }
    await api.create(POD_PATH, pod)

    async def shows_reason() -> dict[str, Any] | None:
        status = await _status(api, "qwen")
        ready = _condition(status, "Ready")
        return status if ready.get("reason") == "Unschedulable" else None

    status = await eventually(shows_reason, what="Unschedulable reason")
    assert message in _condition(status, "Ready")["message"]
    assert status["phase"] == "Pending"


async def test_update_and_scale_converge(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", TINY))
    await _wait_status(api, "qwen", observedGeneration=1)
    await _settle(api)

    # A spec change (generation 2): the StatefulSet follows, the status reports generation 2.
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"gpu": {"count": 2, "type": "nvidia-l4"}}})

    async def sts_has_gpus() -> dict[str, Any] | None:
        sts = await api.get(f"{STS_PATH}/qwen") or {}
        containers = sts.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])
        limits = containers[0].get("resources", {}).get("limits", {})
        return sts if limits.get("nvidia.com/gpu") == "2" else None

    sts = await eventually(sts_has_gpus, what="2 GPUs in the StatefulSet")
    assert sts["spec"]["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"
    }
    await _wait_status(api, "qwen", observedGeneration=2)

    # A removal converges too (the desired-hash annotation catches dropped keys).
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"gpu": {"type": None}}})

    async def selector_gone() -> bool:
        sts = await api.get(f"{STS_PATH}/qwen") or {}
        return "nodeSelector" not in sts["spec"]["template"]["spec"]

    await eventually(selector_gone, what="nodeSelector removed")

    # `kubectl scale llmd/qwen --replicas=3` goes through the scale subresource.
    await api.patch(f"{LLMD_PATH}/qwen/scale", {"spec": {"replicas": 3}})

    async def scaled() -> bool:
        sts = await api.get(f"{STS_PATH}/qwen") or {}
        return bool(sts["spec"]["replicas"] == 3)

    await eventually(scaled, what="StatefulSet scaled to 3")
    sts = await api.get(f"{STS_PATH}/qwen") or {}
    assert HASH_ANNOTATION in sts["metadata"]["annotations"]


async def test_delete_leaves_gc_to_owner_references(api: Api, operator: Operator) -> None:
    spec = {**TINY, "storage": {"accessMode": "ReadWriteMany"}, "replicas": 2}
    await api.create(LLMD_PATH, llmd("qwen", spec))
    await api.create(LLMD_PATH, llmd("gone", {**TINY, "storage": {"retainOnDelete": False}}))
    sts = await _wait_object(api, f"{STS_PATH}/qwen")
    pvc = await _wait_object(api, f"/api/v1/namespaces/{NS}/persistentvolumeclaims/qwen-models")
    gone = await _wait_object(api, f"{STS_PATH}/gone")
    await _settle(api)

    uid = (await api.get(f"{LLMD_PATH}/qwen") or {})["metadata"]["uid"]
    await api.delete(f"{LLMD_PATH}/qwen")
    await eventually(lambda: _absent(api, f"{LLMD_PATH}/qwen"), what="deletion")
    # No finalizer held the deletion; the GC deletes the children by their ownerReferences.
    assert sts["metadata"]["ownerReferences"][0]["uid"] == uid
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    # The shared cache is retained: it has no owner the GC could follow.
    assert "ownerReferences" not in pvc["metadata"]
    assert gone["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    await _settle(api)
    assert operator.alive


async def _absent(api: Api, path: str) -> bool:
    return await api.get(path) is None


async def test_invalid_spec_is_reported_once_and_others_proceed(
    api: Api, operator: Operator
) -> None:
    bad = {
        "engine": "tgi",
        "model": "google/gemma-2-2b-it",
        "gpu": {"count": 0},
        "args": ["--port=1"],
    }
    await api.create(LLMD_PATH, llmd("bad", bad))
    status = await _wait_status(api, "bad", phase="Invalid")
    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "--port is set by the operator" in ready["message"]

    await api.create(LLMD_PATH, llmd("good", TINY))
    await _wait_status(api, "good", phase="Pending")
    await _settle(api, quiet=3.0)
    assert await api.get(f"{STS_PATH}/bad") is None
    status_writes = [w for w in api.writes() if w[1].endswith("/bad/status")]
    assert len(status_writes) == 1  # a permanent error: no retry storm
    assert operator.alive

    # Fixing the spec brings it to life.
    await api.patch(f"{LLMD_PATH}/bad", {"spec": {"args": []}})
    await _wait_object(api, f"{STS_PATH}/bad")
    await _wait_status(api, "bad", phase="Pending")


async def test_deleted_child_is_recreated(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", TINY))
    await _wait_object(api, f"{SVC_PATH}/qwen")
    await _settle(api)
    await api.delete(f"{SVC_PATH}/qwen")
    await _wait_object(api, f"{SVC_PATH}/qwen")


async def test_restart_converges_without_duplicates_and_resync_writes_nothing(
    api: Api, operator: Operator
) -> None:
    names = [f"m{i}" for i in range(5)]
    for name in names:
        await api.create(LLMD_PATH, llmd(name, TINY))
    # Stop while the reconciles are (probably) in flight, then start again.
    await asyncio.sleep(0.3)
    await operator.stop()
    await operator.start()
    for name in names:
        await _wait_status(api, name, observedGeneration=1)
    await _settle(api)
    creates = [path for method, path in api.writes() if method == "POST" and "/events" not in path]
    assert sorted(creates) == sorted(
        [f"{STS_PATH}" for _ in names] + [f"{SVC_PATH}" for _ in names]
    ), creates  # KMock rejects a second create (409): one create per child

    # A no-op resync (another restart: kopf re-lists and resumes everything) writes nothing.
    count = len(api.writes())
    await operator.stop()
    await operator.start()
    await asyncio.sleep(3)
    await _settle(api)
    assert api.writes()[count:] == []
