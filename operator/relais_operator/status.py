"""Pure status: what the children's real state says about an LLMDeployment.

The handlers summarise the StatefulSet, the pods and (shared caches) the download Job
(`workload_state`, `pod_state`, `job_state`) and call `compute()`; the result is written only
when it differs from what the resource already shows. LoRA adapters (`status.adapters`, the
`AdaptersReady` condition) come from `AdapterInputs`: the adapter-agents' reports (polled by
adapter_poll.py), the adapters' download Jobs, and name clashes with other LLMDeployments.
Conditions follow metav1.Condition; lastTransitionTime moves only when a condition's status flips.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from relais_operator import parsers, resources
from relais_operator.settings import OperatorSettings
from relais_operator.spec import LLMDeployment

READY = "Ready"
MODEL_CACHE_READY = "ModelCacheReady"
ADAPTERS_READY = "AdaptersReady"
# An agent's message is the engine's or the download's error: kept readable, not a whole trace.
MAX_MESSAGE = 1024


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
    ip: str = ""
    agent_port: int | None = None  # the adapter-agent's port, in pods that run one

    @property
    def agent_url(self) -> str | None:
        """Where this pod's adapter-agent reports, once the pod is ready and has an IP."""
        if not (self.ready and self.ip and self.agent_port):
            return None
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.agent_port}/adapters"


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
        ip=str(status.get("podIP") or ""),
        agent_port=_agent_port(body.get("spec") or {}),
    )


def _agent_port(spec: Mapping[str, Any]) -> int | None:
    for container in spec.get("containers") or []:
        if container.get("name") != resources.AGENT_CONTAINER:
            continue
        for port in container.get("ports") or []:
            if port.get("name") == resources.AGENT_PORT_NAME:
                return int(port.get("containerPort") or 0) or None
    return None


# --- adapters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentReport:
    """What one pod's adapter-agent says about one adapter (GET /adapters)."""

    name: str
    state: str  # Downloading | Loading | Ready | Failed
    message: str = ""


@dataclass(frozen=True)
class AdapterInputs:
    """Everything status.adapters is computed from, gathered by the handlers."""

    # Ready pod name -> its agent's report (pods whose agent did not answer are absent).
    reports: Mapping[str, Sequence[AgentReport]] = field(default_factory=dict)
    # Adapter name -> its download Job (shared caches, hf:// sources).
    jobs: Mapping[str, JobState] = field(default_factory=dict)
    # Adapter name -> why its name clashes with another LLMDeployment's.
    conflicts: Mapping[str, str] = field(default_factory=dict)


def parse_reports(payload: Any) -> list[AgentReport]:
    """An agent's `{"adapters": [{"name", "state", "message"}]}`; anything else is ignored."""
    items = payload.get("adapters") if isinstance(payload, Mapping) else None
    found = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            state = str(item.get("state") or "Pending")
            message = str(item.get("message") or "")[:MAX_MESSAGE]
            found.append(AgentReport(name=item["name"], state=state, message=message))
    return found


def adapter_conflicts(llm: LLMDeployment, others: Iterable[LLMDeployment]) -> dict[str, str]:
    """Adapters whose name another LLMDeployment serves, or declares as an adapter too."""
    result: dict[str, str] = {}
    for other in sorted(others, key=lambda o: (o.namespace, o.name)):
        if (other.namespace, other.name) == (llm.namespace, llm.name):
            continue
        where = f"LLMDeployment {other.namespace}/{other.name}"
        theirs = {adapter.name for adapter in other.spec.adapters}
        for adapter in llm.spec.adapters:
            if adapter.name in result:
                continue
            if adapter.name == other.spec.effective_served_model_name:
                result[adapter.name] = (
                    f"{adapter.name!r} is the served model name of {where}; the gateway routes"
                    " that name to it, not to this adapter: rename the adapter"
                )
            elif adapter.name in theirs:
                result[adapter.name] = (
                    f"{where} declares an adapter named {adapter.name!r} too; the gateway"
                    " cannot tell them apart: rename one of them"
                )
    return result


def _entry(name: str, state: str, message: str, ready: int = 0) -> dict[str, Any]:
    return {"name": name, "state": state, "message": message, "readyReplicas": ready}


def _from_agents(
    name: str, reports: Mapping[str, Sequence[AgentReport]], job: JobState | None
) -> dict[str, Any]:
    """One run-time adapter's state from the agents of the ready replicas."""
    seen = [(pod, r) for pod, rs in sorted(reports.items()) for r in rs if r.name == name]
    ready = sum(report.state == "Ready" for _, report in seen)
    failed = [(pod, report) for pod, report in seen if report.state == "Failed"]
    if ready:
        message = f"loaded on {ready} of {len(reports)} reporting replica(s)"
        if failed:
            message += f"; {failed[0][0]}: {failed[0][1].message}"
        return _entry(name, "Ready", message, ready)
    if failed:
        pod, report = failed[0]
        return _entry(name, "Failed", f"{pod}: {report.message or 'failed'}")
    if job is not None and not job.succeeded:
        problem = f" ({job.problem})" if job.problem else ""
        return _entry(name, "Downloading", f"Job {job.name} is downloading it{problem}")
    for state in ("Loading", "Downloading"):
        busy = [(pod, report) for pod, report in seen if report.state == state]
        if busy:
            pod, report = busy[0]
            return _entry(name, state, f"{pod}: {report.message or state.lower()}")
    if not reports:
        return _entry(name, "Pending", "waiting for a ready replica's adapter-agent to report")
    return _entry(name, "Pending", "not reported by any adapter-agent yet")


def _at_start(name: str, ready: int, job: JobState | None) -> dict[str, Any]:
    """One start-time adapter (Ollama, TGI): every ready replica loaded it when it started."""
    if job is not None and not job.succeeded:
        problem = f" ({job.problem})" if job.problem else ""
        return _entry(name, "Downloading", f"Job {job.name} is downloading it{problem}")
    if ready:
        return _entry(name, "Ready", f"loaded at start on {ready} ready replica(s)", ready)
    return _entry(name, "Pending", "loaded when a replica starts")


def adapter_statuses(
    llm: LLMDeployment, workload: WorkloadState | None, inputs: AdapterInputs
) -> list[dict[str, Any]]:
    """status.adapters, in spec order."""
    result = []
    ready = workload.ready_replicas if workload else 0
    for adapter in llm.spec.adapters:
        job = inputs.jobs.get(adapter.name)
        if adapter.name in inputs.conflicts:
            result.append(_entry(adapter.name, "Conflict", inputs.conflicts[adapter.name]))
        elif job is not None and job.phase == "failed":
            problem = f"; {job.problem}" if job.problem else ""
            message = f"download Job {job.name} failed: {job.message}{problem}"
            result.append(_entry(adapter.name, "Failed", message))
        elif resources.runtime_adapters(llm):
            result.append(_from_agents(adapter.name, inputs.reports, job))
        else:
            result.append(_at_start(adapter.name, ready, job))
    return result


def _adapters_condition(statuses: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """(status, reason, message) of AdaptersReady."""
    total = len(statuses)
    waiting = [entry for entry in statuses if entry["state"] != "Ready"]
    counts = f"{total - len(waiting)}/{total} adapters ready"
    if not waiting:
        return "True", "AllAdaptersReady", counts
    states = {entry["state"] for entry in waiting}
    reason = (
        "AdapterConflict"
        if "Conflict" in states
        else "AdapterFailed"
        if "Failed" in states
        else "AdaptersLoading"
    )
    details = [f"{e['name']}: {e['state']}: {e['message']}".rstrip(": ") for e in waiting[:5]]
    return "False", reason, "; ".join([counts, *details])


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
    adapters: AdapterInputs | None = None,
) -> dict[str, Any]:
    """The whole status of a valid LLMDeployment (`fetch`: a shared cache's download Job;
    `autoscaling`: the autoscaler's view, shown while spec.autoscaling is set; `adapters`:
    what status.adapters is made of, shown while spec.adapters is not empty)."""
    old = previous.get("conditions") or []
    shared = llm.spec.storage.shared
    phase, ready, reason, message = _readiness(llm.spec.replicas, workload, pods, fetch, shared)
    cache = _shared_cache(llm, fetch) if shared else _cache(workload, pods)
    cache_status, cache_reason, cache_message = cache
    gen = llm.generation
    conditions = [
        condition(READY, ready, reason, message, gen, old, now),
        condition(MODEL_CACHE_READY, cache_status, cache_reason, cache_message, gen, old, now),
    ]
    result: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
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
    if llm.spec.adapters:
        entries = adapter_statuses(llm, workload, adapters or AdapterInputs())
        result["adapters"] = entries
        state, why, text = _adapters_condition(entries)
        conditions.append(condition(ADAPTERS_READY, state, why, text, gen, old, now))
    elif previous.get("adapters") is not None:
        result["adapters"] = None  # adapters all removed: a merge patch removes the list
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
