"""kopf registrations: startup, one `reconcile`, and the child watches that keep status true.

Thin by design: parse the body (spec.py), build the children (resources.py), apply them
(kube.py), compute and publish the status (status.py). Importing this module registers the
handlers, so `kopf run -m relais_operator.handlers` works as well as `relais-operator`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import Any

import kopf

from relais_operator import resources, status
from relais_operator.kube import Kube
from relais_operator.settings import OperatorSettings, configure_kopf
from relais_operator.spec import GROUP, PLURAL, VERSION, InvalidSpecError, LLMDeployment

LLMD = (GROUP, VERSION, PLURAL)
CHILD: dict[str, Any] = {resources.LABEL: kopf.PRESENT}
Key = tuple[str, str]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Load our settings once (main.py may have done it), tune kopf, open the API client."""
    ours = memo.get("settings") or OperatorSettings()
    memo.settings = ours
    configure_kopf(settings, ours)
    memo.kube = await Kube.connect(settings)
    memo.written = {}  # (namespace, name) -> the status this operator wrote last
    memo.locks = collections.defaultdict(asyncio.Lock)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    kube: Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else the kubeconfig, like kubectl."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return info or kopf.login_with_kubeconfig(**kwargs)


# --- indexes: kopf's in-memory view of the resources and their children -----------------------


@kopf.index(*LLMD)
async def llmdeployments(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> object:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "statefulsets", labels=CHILD)
async def workloads(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> object:
    return {(namespace, labels[resources.LABEL]): status.workload_state(body)}


@kopf.index("v1", "pods", labels=CHILD)
async def pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> object:
    return {(namespace, labels[resources.LABEL]): status.pod_state(body)}


# --- reconcile ---------------------------------------------------------------------------------


@kopf.on.resume(*LLMD)
@kopf.on.create(*LLMD)
@kopf.on.update(*LLMD)
async def reconcile(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Parse, build, apply, publish status. A no-op when everything already matches."""
    llm = await _parse_or_report(body, memo)
    applied = [
        await memo.kube.apply(child) for child in resources.build_children(llm, memo.settings)
    ]
    workload = status.workload_state(applied[-1])
    pod_states = _pods_of(kwargs["pods"], llm)
    await _publish(llm, body.get("status") or {}, workload, pod_states, memo)


async def _parse_or_report(body: kopf.Body, memo: Any) -> LLMDeployment:
    """The typed resource; or Ready=False/InvalidSpec written and a PermanentError (no retry)."""
    try:
        return LLMDeployment.from_body(body)
    except InvalidSpecError as exc:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        previous = memo.written.get(key) or body.get("status") or {}
        new = status.invalid(str(exc), meta.get("generation", 0), previous, status.now())
        if status.needs_update(previous, new):  # report once, not on every resync
            await memo.kube.patch_status(*key, new)
            memo.written[key] = {**previous, **new}
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from None


async def _publish(
    llm: LLMDeployment,
    shown: Mapping[str, Any],
    workload: status.WorkloadState | None,
    pod_states: list[status.PodState],
    memo: Any,
) -> None:
    """Write the status when it differs from the last one written (or shown, after a restart)."""
    key = (llm.namespace, llm.name)
    async with memo.locks[key]:
        previous = memo.written.get(key) or shown
        new = status.compute(llm, memo.settings, workload, pod_states, previous, status.now())
        if status.needs_update(previous, new):
            await memo.kube.patch_status(llm.namespace, llm.name, new)
            memo.written[key] = new


def _pods_of(index: kopf.Index[Key, Any], llm: LLMDeployment) -> list[status.PodState]:
    found: list[status.PodState] = list(index.get((llm.namespace, llm.name), []))
    return sorted(found, key=lambda pod: pod.name)


# --- children: status follows their real state; a deleted child is put back -------------------


@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD)
@kopf.on.event("v1", "pods", labels=CHILD)
@kopf.on.event("v1", "services", labels=CHILD)
async def child_changed(
    type: str,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: Any,
    resource: kopf.Resource,
    **kwargs: Any,
) -> None:
    """Refresh the parent's status; re-create its StatefulSet or Service if one was deleted."""
    if resource.plural == "services" and type != "DELETED":
        return  # a Service says nothing about readiness; it matters only when it is gone
    key = (namespace or "", labels[resources.LABEL])
    parents: kopf.Index[Key, Any] = kwargs["llmdeployments"]
    found = parents.get(key)
    parent: Mapping[str, Any] | None = next(iter(found), None) if found is not None else None
    if parent is None or parent.get("metadata", {}).get("deletionTimestamp"):
        return
    try:
        llm = LLMDeployment.from_body(parent)
    except InvalidSpecError:
        return  # reconcile has reported it; nothing to follow
    if type == "DELETED" and resource.plural in {"statefulsets", "services"}:
        for child in resources.build_children(llm, memo.settings):
            await memo.kube.apply(child)
    workload = next(iter(kwargs["workloads"].get(key, [])), None)
    pod_states = _pods_of(kwargs["pods"], llm)
    await _publish(llm, parent.get("status") or {}, workload, pod_states, memo)


@kopf.on.event(*LLMD)
async def forget(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """Drop what we remember of a deleted resource."""
    if type == "DELETED":
        memo.written.pop((namespace, name), None)
        memo.locks.pop((namespace, name), None)
