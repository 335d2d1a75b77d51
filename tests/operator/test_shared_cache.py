"""The real operator against KMock: a shared cache (ReadWriteMany) filled once by a download Job.

KMock runs no controllers and no garbage collector: the tests play the Job controller by
writing the Job's status (succeeded or failed), and the GC by deleting owned children.
"""

from __future__ import annotations

from typing import Any

from relais_operator import resources

from tests.operator.builders import make
from tests.operator.conftest import (
    LLMD_PATH,
    NS,
    POD_PATH,
    PVC_PATH,
    STS_PATH,
    SVC_PATH,
    Api,
    Operator,
    eventually,
    llmd,
)
from tests.operator.test_lifecycle import _condition, _settle, _status, _wait_object

JOB_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"
SHARED = {
    "engine": "ollama",
    "model": "qwen2.5:0.5b",
    "replicas": 2,
    "gpu": {"count": 0},
    "storage": {"size": "2Gi", "accessMode": "ReadWriteMany", "storageClassName": "standard-rwx"},
}


def _job_name(name: str, spec: dict[str, Any]) -> str:
    return resources.fetch_job_name(make(name, spec))


async def _finish(api: Api, job: str, message: str | None = None) -> None:
    """Play the Job controller: the download succeeded, or failed with `message`."""
    if message is None:
        state = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    else:
        failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
        state = {"failed": 4, "conditions": [{**failed, "message": message}]}
    await api.patch(f"{JOB_PATH}/{job}/status", {"status": state})


async def _cache_shows(api: Api, name: str, reason: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status = await _status(api, name)
        return status if _condition(status, "ModelCacheReady").get("reason") == reason else None

    result: dict[str, Any] = await eventually(check, what=f"ModelCacheReady={reason}")
    return result


async def _replicas(api: Api, name: str, count: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        sts = await api.get(f"{STS_PATH}/{name}") or {}
        return sts if sts.get("spec", {}).get("replicas") == count else None

    result: dict[str, Any] = await eventually(check, what=f"StatefulSet at {count} replicas")
    return result


def _posts(api: Api, path: str) -> int:
    return sum(1 for method, where in api.writes() if method == "POST" and where == path)


async def test_the_job_fills_the_cache_then_replicas_start(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", SHARED))
    name = _job_name("qwen", SHARED)
    job = await _wait_object(api, f"{JOB_PATH}/{name}")
    uid = (await api.get(f"{LLMD_PATH}/qwen") or {})["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    assert job["spec"]["backoffLimit"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert resources.LABEL not in job["spec"]["template"]["metadata"]["labels"]

    # Until the Job has succeeded: no model pod, and the status says why.
    sts = await _replicas(api, "qwen", 0)
    model_pod = sts["spec"]["template"]["spec"]
    assert "initContainers" not in model_pod  # model pods never download
    [claim] = [v for v in model_pod["volumes"] if v["name"] == resources.CACHE_VOLUME]
    assert claim["persistentVolumeClaim"] == {"claimName": "qwen-models", "readOnly": True}
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    status = await _cache_shows(api, "qwen", "Downloading")
    assert status["phase"] == "Loading"
    assert name in _condition(status, "ModelCacheReady")["message"]

    await _finish(api, name)
    await _replicas(api, "qwen", 2)
    status = await _cache_shows(api, "qwen", "Cached")
    assert _condition(status, "ModelCacheReady")["status"] == "True"
    await _settle(api)
    assert _posts(api, JOB_PATH) == 1
    assert _posts(api, PVC_PATH) == 1


async def test_a_failed_download_is_reported_once_and_a_fixed_spec_recovers(
    api: Api, operator: Operator
) -> None:
    await api.create(LLMD_PATH, llmd("qwen", SHARED))
    first = _job_name("qwen", SHARED)
    await _wait_object(api, f"{JOB_PATH}/{first}")
    await _finish(api, first, "pull model manifest: file does not exist")
    status = await _cache_shows(api, "qwen", "FetchFailed")
    cache = _condition(status, "ModelCacheReady")
    assert cache["status"] == "False"
    assert "pull model manifest: file does not exist" in cache["message"]
    assert (status["phase"], _condition(status, "Ready")["reason"]) == (
        "Failed",
        "ModelFetchFailed",
    )

    # No retry storm: the failed Job stays, no new one, no pod, nothing more written.
    await _settle(api, quiet=3.0)
    count = len(api.writes())
    await _settle(api, quiet=3.0)
    assert api.writes()[count:] == []
    assert _posts(api, JOB_PATH) == 1
    assert (await api.get(f"{STS_PATH}/qwen") or {})["spec"]["replicas"] == 0

    # A fixed spec (another model): a new Job; the failed one is deleted.
    fixed = {**SHARED, "model": "qwen2.5:1.5b"}
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"model": fixed["model"]}})
    second = _job_name("qwen", fixed)
    assert second != first
    await _wait_object(api, f"{JOB_PATH}/{second}")

    async def first_gone() -> bool:
        return await api.get(f"{JOB_PATH}/{first}") is None

    await eventually(first_gone, what="the superseded Job deleted")
    await _cache_shows(api, "qwen", "Downloading")
    await _finish(api, second)
    await _replicas(api, "qwen", 2)
    await _cache_shows(api, "qwen", "Cached")


async def test_a_model_change_starts_a_new_job(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", SHARED))
    first = _job_name("qwen", SHARED)
    await _wait_object(api, f"{JOB_PATH}/{first}")
    await _finish(api, first)
    await _replicas(api, "qwen", 2)

    changed = {**SHARED, "model": "qwen2.5:3b"}
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"model": changed["model"]}})
    second = _job_name("qwen", changed)
    job = await _wait_object(api, f"{JOB_PATH}/{second}")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RELAIS_MODEL"] == "qwen2.5:3b"
    # The new model is not in the cache yet: no pod may start on it.
    await _replicas(api, "qwen", 0)
    await _cache_shows(api, "qwen", "Downloading")
    await _finish(api, second)
    await _replicas(api, "qwen", 2)
    await _cache_shows(api, "qwen", "Cached")


async def test_delete_and_recreate_reuses_the_cache(api: Api, operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", SHARED))
    name = _job_name("qwen", SHARED)
    await _wait_object(api, f"{JOB_PATH}/{name}")
    await _finish(api, name)
    await _cache_shows(api, "qwen", "Cached")
    await _settle(api)
    claim = await api.get(f"{PVC_PATH}/qwen-models") or {}
    assert "ownerReferences" not in claim["metadata"]  # retainOnDelete: the GC leaves it

    await api.delete(f"{LLMD_PATH}/qwen")
    for owned in (f"{JOB_PATH}/{name}", f"{STS_PATH}/qwen", f"{SVC_PATH}/qwen"):
        await api.delete(owned)  # the garbage collector's part: owned children go
    await _settle(api)

    await api.create(LLMD_PATH, llmd("qwen", SHARED))
    job = await _wait_object(api, f"{JOB_PATH}/{name}")  # same model: same Job name
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "already cached" in script  # the step checks the cache first and exits at once
    await _finish(api, name)
    await _replicas(api, "qwen", 2)
    await _cache_shows(api, "qwen", "Cached")
    assert _posts(api, PVC_PATH) == 1  # the claim was never made again
    again = await api.get(f"{PVC_PATH}/qwen-models") or {}
    assert again["metadata"]["uid"] == claim["metadata"]["uid"]


async def test_a_stuck_download_pod_shows_why(api: Api, operator: Operator) -> None:
    spec = {**SHARED, "engine": "vllm", "model": "meta-llama/Llama-3.1-8B"}
    spec["hfTokenSecretRef"] = {"name": "hf-token"}
    await api.create(LLMD_PATH, llmd("llama", spec))
    name = _job_name("llama", spec)
    await _wait_object(api, f"{JOB_PATH}/{name}")
    await _cache_shows(api, "llama", "Downloading")
    missing = 'secret "hf-token" not found'
    pod = {  # the Job controller's pod, stuck: the kubelet cannot find the token Secret
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-x7k2p",
            "namespace": NS,
            "labels": {resources.FETCH_LABEL: "llama", "job-name": name},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "j"}
            ],
        },
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": resources.FETCH_CONTAINER,
                    "state": {
                        "waiting": {"reason": "CreateContainerConfigError", "message": missing}
                    },
                }
            ],
        },
    }
    await api.create(POD_PATH, pod)

    async def explained() -> dict[str, Any] | None:
        status = await _status(api, "llama")
        message = _condition(status, "ModelCacheReady").get("message", "")
        return status if missing in message else None

    status = await eventually(explained, what="the stuck pod's reason in status")
    assert _condition(status, "ModelCacheReady")["reason"] == "Downloading"
    assert missing in _condition(status, "Ready")["message"]
    assert (await api.get(f"{STS_PATH}/llama") or {})["spec"]["replicas"] == 0
