"""Pure status: what the children's real state says about an LLMDeployment.

The handlers summarise the StatefulSet, the pods and (shared caches) the download Job
(`workload_state`, `pod_state`, `job_state`) and call `compute()`; the result is written only
when it differs from what the resource already shows.
Conditions follow metav1.Condition; lastTransitionTime moves only when a condition's status flips.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relais_operator import parsers, resources
from relais_operator.settings import OperatorSettings
from relais_operator.spec import LLMDeployment

READY = "Ready"
MODEL_CACHE_READY = "ModelCacheReady"


@dataclass(frozen=True)
class WorkloadState:
    """What the StatefulSet reports."""

    replicas: int = 0
    ready_replicas: int = 0
    up_to_date: bool = True


@dataclass(frozen=True)
class PodState:
    """What one model pod reports: scheduling trouble and the fetch step's progress."""

    name: str
    unschedulable: str | None = None
    fetch: str = "waiting"  # waiting | fetching | done | failed
    fetch_message: str = ""
    ready: bool = False


@dataclass(frozen=True)
class JobState:
    """What a shared cache's download Job reports."""

    name: str
    phase: str = "running"  # running | succeeded | failed
    message: str = ""
    problem: str = ""  # from its pods: why it is stuck or failed (see with_pod_problems)

    @property
    def succeeded(self) -> bool:
        return self.phase == "succeeded"


@dataclass(frozen=True)
class FetchPodState:
    """What one pod of a download Job reports: why it is stuck or failed, if it is."""

    name: str
    job: str
    problem: str = ""


# Waiting reasons that do not pass by themselves (a missing Secret, a wrong image).
_STUCK = {
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
}


def _fetch_problem(status: Mapping[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message") or "no node fits the pod")
    for container in status.get("containerStatuses") or []:
        if container.get("name") != resources.FETCH_CONTAINER:
            continue
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _STUCK:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
        done = state.get("terminated") or {}
        if done and done.get("exitCode") != 0:
            detail = str(done.get("message") or "").strip()
            return f"exit code {done.get('exitCode')}" + (f": {detail}" if detail else "")
    return ""


def fetch_pod_state(body: Mapping[str, Any]) -> FetchPodState:
    """Summarise a download Job's pod (the fetch-pods index keeps only this)."""
    meta = body.get("metadata", {})
    owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "Job"]
    job = owners[0].get("name", "") if owners else (meta.get("labels") or {}).get("job-name", "")
    problem = _fetch_problem(body.get("status") or {})
    return FetchPodState(name=meta.get("name", ""), job=str(job), problem=problem)


def with_pod_problems(job: JobState | None, pods: Iterable[FetchPodState]) -> JobState | None:
    """The Job's state, told why when one of its pods is stuck or failed."""
    if job is None or job.succeeded:
        return job
    found = sorted((pod for pod in pods if pod.job == job.name and pod.problem), key=_by_name)
    if not found:
        return job
    return replace(job, problem=f"{found[0].name}: {found[0].problem}")


def _by_name(pod: FetchPodState) -> str:
    return pod.name


def job_succeeded(job: Mapping[str, Any]) -> bool:
    """Whether a Job has completed (the Complete condition, or a succeeded pod)."""
    status = job.get("status") or {}
    complete = any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return complete or int(status.get("succeeded") or 0) > 0


def job_state(body: Mapping[str, Any]) -> JobState:
    """Summarise a download Job: its Complete/Failed condition (with the failure's message)."""
    name = body.get("metadata", {}).get("name", "")
    if job_succeeded(body):
        return JobState(name=name, phase="succeeded")
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            message = cond.get("message") or cond.get("reason") or "the download failed"
            return JobState(name=name, phase="failed", message=str(message))
    return JobState(name=name)


def workload_state(body: Mapping[str, Any] | None) -> WorkloadState | None:
    if body is None:
        return None
    status = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    return WorkloadState(
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        up_to_date=generation is None or observed is None or observed >= generation,
    )


def _fetch_state(status: Mapping[str, Any]) -> tuple[str, str]:
    for container in status.get("initContainerStatuses") or []:
        if container.get("name") != resources.FETCH_CONTAINER:
            continue
        state = container.get("state") or {}
        if "terminated" in state:
            done = state["terminated"]
            if done.get("exitCode") == 0:
                return "done", ""
            return "failed", done.get("message") or f"exit code {done.get('exitCode')}"
        if "running" in state:
            return "fetching", ""
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff"}:
            last = (container.get("lastState") or {}).get("terminated") or {}
            detail = last.get("message") or waiting.get("message") or waiting["reason"]
            return "failed", str(detail)
    return "waiting", ""


def pod_state(body: Mapping[str, Any]) -> PodState:
    """Summarise a model pod (the pods index keeps only this, not the whole pod)."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = scheduled.get("message") or "no node fits the pod"
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    fetch, message = _fetch_state(status)
    if ready:
        fetch = "done"
    return PodState(
        name=body.get("metadata", {}).get("name", ""),
        unschedulable=unschedulable,
        fetch=fetch,
        fetch_message=message,
        ready=ready,
    )


def condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    previous: Iterable[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """A metav1.Condition that keeps its lastTransitionTime unless its status flips."""
    since = now
    for old in previous:
        if old.get("type") == type_ and old.get("status") == status:
            since = old.get("lastTransitionTime") or now
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def _shared_readiness(counts: str, fetch: JobState | None) -> tuple[str, str, str, str]:
    """Readiness while a shared cache is not filled: no model pod runs (the StatefulSet is at 0)."""
    if fetch is not None and fetch.phase == "failed":
        detail = f"model download failed: {fetch.name}: {fetch.message}"
        return "Failed", "False", "ModelFetchFailed", f"{counts}; {detail}"
    why = f" ({fetch.problem})" if fetch is not None and fetch.problem else ""
    return "Loading", "False", "FetchingModel", f"{counts}; downloading the model{why}"


def _readiness(
    desired: int,
    workload: WorkloadState | None,
    pods: Sequence[PodState],
    fetch: JobState | None,
    shared: bool,
) -> tuple[str, str, str, str]:
    """(phase, Ready status, reason, message) from the children."""
    ready = workload.ready_replicas if workload else 0
    counts = f"{ready}/{desired} replicas ready"
    if desired == 0:
        return "ScaledToZero", "False", "ScaledToZero", "scaled to zero replicas"
    if shared and (fetch is None or not fetch.succeeded):
        return _shared_readiness(counts, fetch)
    if workload is not None and workload.up_to_date and ready >= desired:
        return "Ready", "True", "AllReplicasReady", counts
    stuck = [pod for pod in pods if pod.unschedulable]
    failed = [pod for pod in pods if pod.fetch == "failed"]
    if failed:
        detail = f"{failed[0].name}: model fetch failed: {failed[0].fetch_message}"
        return "Failed", "False", "ModelFetchFailed", f"{counts}; {detail}"
    if stuck:
        detail = f"{stuck[0].name}: {stuck[0].unschedulable}"
        return ("Degraded" if ready else "Pending"), "False", "Unschedulable", f"{counts}; {detail}"
    if ready:
        return "Degraded", "False", "ReplicasNotReady", counts
    if any(pod.fetch == "fetching" for pod in pods):
        return "Loading", "False", "FetchingModel", f"{counts}; downloading the model"
    if pods:
        return "Loading", "False", "ReplicasNotReady", f"{counts}; starting"
    return "Pending", "False", "ReplicasNotReady", counts


def _shared_cache(llm: LLMDeployment, fetch: JobState | None) -> tuple[str, str, str]:
    """(status, reason, message) of ModelCacheReady for a shared cache: its Job's state."""
    claim = resources.shared_claim_name(llm)
    if fetch is None:
        return "False", "Downloading", f"creating the download Job for {claim}"
    if fetch.succeeded:
        return "True", "Cached", f"model cached in {claim} by Job {fetch.name}"
    problem = f"; {fetch.problem}" if fetch.problem else ""
    if fetch.phase == "failed":
        hint = f"kubectl logs job/{fetch.name}"
        return "False", "FetchFailed", f"Job {fetch.name}: {fetch.message}{problem} ({hint})"
    message = f"Job {fetch.name} is downloading the model into {claim}{problem}"
    return "False", "Downloading", message


def _cache(workload: WorkloadState | None, pods: Sequence[PodState]) -> tuple[str, str, str]:
    """(status, reason, message) of the ModelCacheReady condition (per-replica caches)."""
    ready = workload.ready_replicas if workload else 0
    cached = max(ready, sum(pod.fetch == "done" for pod in pods))
    failed = [pod for pod in pods if pod.fetch == "failed"]
    if failed:
        return "False", "FetchFailed", f"{failed[0].name}: {failed[0].fetch_message}"
    if cached:
        return "True", "Cached", f"model cached for {cached} replica(s)"
    if any(pod.fetch == "fetching" for pod in pods):
        return "False", "Fetching", "downloading the model into the cache"
    return "Unknown", "NoReplicaStarted", "no replica has started its fetch step yet"


def compute(
    llm: LLMDeployment,
    settings: OperatorSettings,
    workload: WorkloadState | None,
    pods: Sequence[PodState],
    previous: Mapping[str, Any],
    now: str,
    fetch: JobState | None = None,
    autoscaling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole status of a valid LLMDeployment (`fetch`: a shared cache's download Job;
    `autoscaling`: the autoscaler's view, shown while spec.autoscaling is set)."""
    old = previous.get("conditions") or []
    shared = llm.spec.storage.shared
    phase, ready, reason, message = _readiness(llm.spec.replicas, workload, pods, fetch, shared)
    cache = _shared_cache(llm, fetch) if shared else _cache(workload, pods)
    cache_status, cache_reason, cache_message = cache
    gen = llm.generation
    result = {
        "phase": phase,
        "conditions": [
            condition(READY, ready, reason, message, gen, old, now),
            condition(MODEL_CACHE_READY, cache_status, cache_reason, cache_message, gen, old, now),
        ],
        "replicas": workload.replicas if workload else 0,
        "readyReplicas": workload.ready_replicas if workload else 0,
        "selector": resources.selector_string(llm),
        "endpoint": resources.endpoint(llm, settings),
        "servedModelName": llm.spec.effective_served_model_name,
        "engine": llm.spec.engine,
        "observedGeneration": gen,
    }
    if llm.spec.engine == "vllm":
        # What the server was started with: a model family the table does not know shows none.
        result["toolCallParser"] = parsers.tool_call_parser(llm.spec)
        result["reasoningParser"] = parsers.reasoning_parser(llm.spec)
    if llm.spec.autoscaling is not None and autoscaling is not None:
        result["autoscaling"] = dict(autoscaling)
    elif llm.spec.autoscaling is None and previous.get("autoscaling") is not None:
        result["autoscaling"] = None  # autoscaling turned off: a merge patch removes the view
    return result


def invalid(message: str, generation: int, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """Status fields for a resource the operator cannot act on (other fields stay as they were)."""
    old = previous.get("conditions") or []
    ready = condition(READY, "False", "InvalidSpec", message, generation, old, now)
    return {"phase": "Invalid", "conditions": [ready], "observedGeneration": generation}


def needs_update(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether writing `desired` would change `current` (each desired key compared as a whole)."""
    return any(current.get(key) != value for key, value in desired.items())


def now() -> str:
    """RFC 3339 UTC with second precision, as metav1.Time serialises."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
