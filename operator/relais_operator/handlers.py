"""kopf registrations: startup, one `reconcile`, and the child watches that keep status true.

Thin by design: parse the body (spec.py), build the children (resources.py), apply them
(kube.py), compute and publish the status (status.py). Startup also starts the autoscaler's
loop (autoscale_loop.py), which publishes status.autoscaling through the same `_publish`, the
adapter-agents' poll (adapter_poll.py), which publishes status.adapters the same way, and
serves the operator's /metrics (metrics.py: each reconcile is timed and counted by result).
Importing this module registers the handlers, so `kopf run -m relais_operator.handlers` works
as well as `relais-operator`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from relais_operator import adapter_poll, autoscale_loop, metrics, resources, status
from relais_operator.kube import Kube
from relais_operator.settings import OperatorSettings, configure_kopf
from relais_operator.spec import GROUP, PLURAL, VERSION, InvalidSpecError, LLMDeployment

log = logging.getLogger(__name__)

LLMD = (GROUP, VERSION, PLURAL)
CHILD: dict[str, Any] = {resources.LABEL: kopf.PRESENT}
FETCH_POD: dict[str, Any] = {resources.FETCH_LABEL: kopf.PRESENT}
Key = tuple[str, str]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **indexes: Any) -> None:
    """Load our settings once (main.py may have done it), tune kopf, open the API client,
    start the autoscaler (one loop for every resource; off without a gateway Service)."""
    ours = memo.get("settings") or OperatorSettings()
    memo.settings = ours
    configure_kopf(settings, ours)
    memo.kube = await Kube.connect(settings)
    memo.written = {}  # (namespace, name) -> the status this operator wrote last
    memo.locks = collections.defaultdict(asyncio.Lock)
    memo.autoscaling = {}  # (namespace, name) -> status.autoscaling, the autoscaler's view
    memo.unscaled = set()  # resources told that the autoscaler is off
    metrics.watch_statuses(memo.written)
    memo.metrics = await metrics.serve(ours.metrics_host, ours.metrics_port)

    async def publish(key: Key) -> None:
        await _refresh(key, memo, indexes, reapply=False)

    index = indexes["llmdeployments"]
    memo.autoscaler = autoscale_loop.start(ours, memo.kube, index, publish, memo.autoscaling)
    memo.adapter_reports = {}  # (namespace, name) -> pod -> its adapter-agent's report
    memo.adapter_poll = adapter_poll.start(ours, indexes, memo.adapter_reports, publish)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    for task in (memo.get("autoscaler"), memo.get("adapter_poll")):  # the background loops
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if memo.get("metrics") is not None:
        await memo.metrics.cleanup()
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


@kopf.index("batch", "v1", "jobs", labels=CHILD)
async def fetch_jobs(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> object:
    return {(namespace, labels[resources.LABEL]): status.job_state(body)}


@kopf.index("v1", "pods", labels=FETCH_POD)
async def fetch_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> object:
    return {(namespace, labels[resources.FETCH_LABEL]): status.fetch_pod_state(body)}


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
    with metrics.reconciling():
        llm = await _parse_or_report(body, memo)
        _note_unscaled(llm, memo)
        workload, fetch = await _apply_children(llm, memo)
        await _delete_superseded_jobs(llm, kwargs["fetch_jobs"], memo)
        pod_states = _pods_of(kwargs["pods"], llm)
        fetch = status.with_pod_problems(fetch, _fetch_pods_of(kwargs["fetch_pods"], llm))
        adapters = _adapter_inputs(llm, memo, kwargs)
        await _publish(llm, body.get("status") or {}, workload, pod_states, fetch, memo, adapters)


def _note_unscaled(llm: LLMDeployment, memo: Any) -> None:
    """Say once per resource that spec.autoscaling is not acted on (no gateway Service set)."""
    key = (llm.namespace, llm.name)
    if llm.spec.autoscaling is None or memo.autoscaler is not None or key in memo.unscaled:
        return
    memo.unscaled.add(key)
    log.warning(
        "%s/%s asks for autoscaling, but RELAIS_OPERATOR_GATEWAY_SERVICE is not set: its"
        " spec.replicas stays as written",
        *key,
    )


async def _apply_children(
    llm: LLMDeployment, memo: Any
) -> tuple[status.WorkloadState | None, status.JobState | None]:
    """Apply the children in order; a shared cache's Jobs first, as the replicas depend on them
    (on the adapters' Jobs too, where the server reads the adapters at start), then the
    adapters' ConfigMap, which the pods mount."""
    cache = resources.build_cache(llm, memo.settings)
    if cache is not None:
        await memo.kube.apply(cache)
    job = resources.build_fetch_job(llm, memo.settings)
    fetch = status.job_state(await memo.kube.apply(job)) if job is not None else None
    cached = fetch is not None and fetch.succeeded
    for adapter_job in resources.build_adapter_jobs(llm, memo.settings):
        done = status.job_state(await memo.kube.apply(adapter_job)).succeeded
        cached = cached and (done or not resources.engine_of(llm).adapters_at_start_need_files)
    config = resources.build_adapters_config(llm, memo.settings)
    if config is not None:
        await memo.kube.apply(config)
    await memo.kube.apply(resources.build_service(llm, memo.settings))
    workload = await memo.kube.apply(resources.build_workload(llm, memo.settings, cached=cached))
    return status.workload_state(workload), fetch


async def _delete_superseded_jobs(
    llm: LLMDeployment, index: kopf.Index[Key, Any], memo: Any
) -> None:
    """Delete download Jobs of an earlier model or revision, or of adapters no longer declared
    (the current ones have their own)."""
    current = {resources.fetch_job_name(llm)}
    current |= {resources.adapter_job_name(llm, a) for a in resources.downloaded_adapters(llm)}
    for job in list(index.get((llm.namespace, llm.name), [])):
        if job.name not in current:
            await memo.kube.delete(resources.job_reference(llm, job.name))


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
    fetch: status.JobState | None,
    memo: Any,
    adapters: status.AdapterInputs | None = None,
) -> None:
    """Write the status when it differs from the last one written (or shown, after a restart)."""
    key = (llm.namespace, llm.name)
    async with memo.locks[key]:
        previous = memo.written.get(key) or shown
        view = memo.autoscaling.get(key)
        now = status.now()
        new = status.compute(
            llm, memo.settings, workload, pod_states, previous, now, fetch, view, adapters
        )
        if status.needs_update(previous, new):
            await memo.kube.patch_status(llm.namespace, llm.name, new)
            memo.written[key] = new


def _adapter_inputs(
    llm: LLMDeployment, memo: Any, indexes: Mapping[str, Any]
) -> status.AdapterInputs | None:
    """What status.adapters is made of: agents' reports, adapter Jobs, name clashes."""
    if not llm.spec.adapters:
        return None
    key = (llm.namespace, llm.name)
    names = {resources.adapter_job_name(llm, a): a.name for a in resources.downloaded_adapters(llm)}
    pods = _fetch_pods_of(indexes["fetch_pods"], llm)
    jobs = {
        names[job.name]: status.with_pod_problems(job, pods) or job
        for job in list(indexes["fetch_jobs"].get(key, []))
        if job.name in names
    }
    others = [
        other
        for store in list(indexes["llmdeployments"].values())
        for body in list(store)
        if (other := _parsed(body, memo)) is not None
    ]
    reports = memo.get("adapter_reports", {}).get(key, {})
    conflicts = status.adapter_conflicts(llm, others)
    return status.AdapterInputs(reports=reports, jobs=jobs, conflicts=conflicts)


def _parsed(body: Mapping[str, Any], memo: Any) -> LLMDeployment | None:
    """A resource from the index, parsed once per resourceVersion (None: invalid). Name clashes
    compare every resource with adapters against all others on every status round."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace"), meta.get("name"))
    version = meta.get("resourceVersion")
    cache: dict[Any, tuple[Any, LLMDeployment | None]] = memo.setdefault("parsed", {})
    cached = cache.get(key)
    if cached is not None and version is not None and cached[0] == version:
        return cached[1]
    llm = None
    with contextlib.suppress(InvalidSpecError):
        llm = LLMDeployment.from_body(body)
    cache[key] = (version, llm)
    return llm


def _pods_of(index: kopf.Index[Key, Any], llm: LLMDeployment) -> list[status.PodState]:
    found: list[status.PodState] = list(index.get((llm.namespace, llm.name), []))
    return sorted(found, key=lambda pod: pod.name)


def _fetch_pods_of(index: kopf.Index[Key, Any], llm: LLMDeployment) -> list[status.FetchPodState]:
    return list(index.get((llm.namespace, llm.name), []))


def _fetch_of(index: kopf.Index[Key, Any], llm: LLMDeployment) -> status.JobState | None:
    """The current download Job's state, if it is in the index (shared caches only)."""
    if not llm.spec.storage.shared:
        return None
    name = resources.fetch_job_name(llm)
    jobs: list[status.JobState] = list(index.get((llm.namespace, llm.name), []))
    return next((job for job in jobs if job.name == name), None)


# --- children: status follows their real state; a deleted child is put back -------------------


@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD)
@kopf.on.event("v1", "pods", labels=CHILD)
@kopf.on.event("v1", "services", labels=CHILD)
@kopf.on.event("batch", "v1", "jobs", labels=CHILD)
async def child_changed(
    type: str,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: Any,
    resource: kopf.Resource,
    **kwargs: Any,
) -> None:
    """Refresh the parent's status; re-apply its children when one was deleted or its download
    Job moved on (a succeeded Job scales the StatefulSet up)."""
    if resource.plural == "services" and type != "DELETED":
        return  # a Service says nothing about readiness; it matters only when it is gone
    deleted = type == "DELETED" and resource.plural in {"statefulsets", "services"}
    reapply = deleted or resource.plural == "jobs"
    await _refresh((namespace or "", labels[resources.LABEL]), memo, kwargs, reapply=reapply)


@kopf.on.event("v1", "pods", labels=FETCH_POD)
async def fetch_pod_changed(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any
) -> None:
    """A download Job's pod: its trouble (a missing Secret, a failed step) shows in status."""
    await _refresh((namespace or "", labels[resources.FETCH_LABEL]), memo, kwargs, reapply=False)


async def _refresh(key: Key, memo: Any, indexes: Mapping[str, Any], *, reapply: bool) -> None:
    """Publish the status of the parent `key` from the indexes (after re-applying, if asked)."""
    found = indexes["llmdeployments"].get(key)
    parent: Mapping[str, Any] | None = next(iter(found), None) if found is not None else None
    if parent is None or parent.get("metadata", {}).get("deletionTimestamp"):
        return
    try:
        llm = LLMDeployment.from_body(parent)
    except InvalidSpecError:
        return  # reconcile has reported it; nothing to follow
    if reapply:
        workload, fetch = await _apply_children(llm, memo)
    else:
        workload = next(iter(indexes["workloads"].get(key, [])), None)
        fetch = _fetch_of(indexes["fetch_jobs"], llm)
    fetch = status.with_pod_problems(fetch, _fetch_pods_of(indexes["fetch_pods"], llm))
    pod_states = _pods_of(indexes["pods"], llm)
    adapters = _adapter_inputs(llm, memo, indexes)
    await _publish(llm, parent.get("status") or {}, workload, pod_states, fetch, memo, adapters)


@kopf.on.event(*LLMD)
async def forget(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """Drop what we remember of a deleted resource."""
    if type == "DELETED":
        memo.written.pop((namespace, name), None)
        memo.locks.pop((namespace, name), None)
        memo.unscaled.discard((namespace, name))
        memo.get("adapter_reports", {}).pop((namespace, name), None)
        memo.get("parsed", {}).pop((namespace, name), None)
