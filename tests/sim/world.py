"""Pure core of the simulated controllers: cluster objects in, the objects they should become out.

The StatefulSet controller (pods per ordinal, status), the kubelet's pod status, the EndpointSlice
controller (one slice per Service) and the garbage collector (owners gone -> dependents deleted)
decide here, from plain dicts as the API returns them; `kubelet.py` does the I/O. No clock, no
network, no processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relais_operator import resources

Obj = dict[str, Any]

LABEL = resources.LABEL  # relais.dev/llmdeployment: every child of an LLMDeployment has it

ENGINE_LABEL = "app.kubernetes.io/name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SIM = "sim.relais.dev"
# The simulated kubelet's hold on the pods it runs: KMock deletes an object at once unless a
# finalizer stops it, while a real API server keeps a deleted pod (terminating) until its kubelet
# has stopped it. The kubelet removes this finalizer once the pod's process has stopped.
KUBELET_FINALIZER = f"{SIM}/kubelet"
SLICE_SUFFIX = "-sim"
TIME = "2026-01-01T00:00:00Z"  # a fixed, valid metav1.Time: nothing here reads it


# ---------------------------------------------------------------- object basics


def meta(obj: Mapping[str, Any]) -> Obj:
    return dict(obj.get("metadata") or {})


def name(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name", ""))


def namespace(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("namespace", ""))


def uid(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("uid", ""))


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(meta(obj).get("labels") or {})


def terminating(obj: Mapping[str, Any]) -> bool:
    """Deleted but still held (a finalizer): a terminating pod."""
    return bool(meta(obj).get("deletionTimestamp"))


def owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {str(ref.get("uid")) for ref in meta(obj).get("ownerReferences") or ()}


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    return uid(owner) in owner_uids(obj)


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name(owner),
        "uid": uid(owner),
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ---------------------------------------------------------------- garbage collector


def orphans(objects: Iterable[Obj], live_uids: set[str]) -> list[Obj]:
    """Objects whose every owner is gone (and that are not already being deleted).

    The caller lists dependents before owners, so an owner created during the listing is seen.
    """
    return [
        obj
        for obj in objects
        if owner_uids(obj) and not owner_uids(obj) & live_uids and not terminating(obj)
    ]


# ---------------------------------------------------------------- StatefulSet controller


def managed(statefulset: Mapping[str, Any]) -> bool:
    """A StatefulSet of an LLMDeployment that is not being deleted."""
    return LABEL in labels(statefulset) and not terminating(statefulset)


def pod_name(statefulset: Mapping[str, Any], ordinal: int) -> str:
    return f"{name(statefulset)}-{ordinal}"


def ordinal(pod: Mapping[str, Any]) -> int:
    """The pod's ordinal (`<statefulset>-<ordinal>`)."""
    return int(name(pod).rpartition("-")[2])


def pods_of(statefulset: Mapping[str, Any], pods: Iterable[Obj]) -> list[Obj]:
    return sorted((p for p in pods if owned_by(p, statefulset)), key=ordinal)


def desired_replicas(statefulset: Mapping[str, Any]) -> int:
    return int((statefulset.get("spec") or {}).get("replicas", 1) or 0)


def ordered(statefulset: Mapping[str, Any]) -> bool:
    """podManagementPolicy OrderedReady: one pod at a time, each waiting for the previous."""
    return (statefulset.get("spec") or {}).get("podManagementPolicy") == "OrderedReady"


def missing_ordinals(statefulset: Mapping[str, Any], pods: Iterable[Obj]) -> list[int]:
    """Ordinals below spec.replicas to create now (a terminating pod still blocks its name).

    Parallel: all of them. OrderedReady: the lowest, once every lower pod is Running and Ready.
    """
    present = {name(p): p for p in pods if namespace(p) == namespace(statefulset)}
    wanted = range(desired_replicas(statefulset))
    missing = [i for i in wanted if pod_name(statefulset, i) not in present]
    if not ordered(statefulset) or not missing:
        return missing
    lower = [present.get(pod_name(statefulset, i)) for i in range(missing[0])]
    return missing[:1] if all(p is not None and pod_ready(p) for p in lower) else []


def excess_pods(statefulset: Mapping[str, Any], pods: Iterable[Obj]) -> list[Obj]:
    """Live pods at ordinals >= spec.replicas to delete now, highest first.

    Parallel: all of them. OrderedReady: the highest, once no other pod is terminating.
    """
    mine = pods_of(statefulset, pods)
    keep = desired_replicas(statefulset)
    extra = [p for p in mine if ordinal(p) >= keep and not terminating(p)]
    extra.sort(key=ordinal, reverse=True)
    if not ordered(statefulset):
        return extra
    return extra[:1] if not any(terminating(p) for p in mine) else []


def claims(statefulset: Mapping[str, Any], index: int) -> list[Obj]:
    """The PVCs of replica `index` from volumeClaimTemplates (`<template>-<sts>-<index>`).

    As the controller does: owned by the StatefulSet when whenDeleted is Delete (so deleting it
    removes them); whenScaled is not applied (scaled-down replicas keep their claims, Retain).
    """
    spec = statefulset.get("spec") or {}
    policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
    owners = [owner_reference(statefulset)] if policy.get("whenDeleted") == "Delete" else []
    result = []
    for template in spec.get("volumeClaimTemplates") or ():
        claim_meta = template.get("metadata") or {}
        claim_name = f"{claim_meta.get('name')}-{name(statefulset)}-{index}"
        metadata: Obj = {
            "name": claim_name,
            "namespace": namespace(statefulset),
            "labels": dict(claim_meta.get("labels") or {}),
        }
        if owners:
            metadata["ownerReferences"] = owners
        result.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata,
                "spec": dict(template.get("spec") or {}),
                "status": {"phase": "Bound"},
            }
        )
    return result


def new_pod(statefulset: Mapping[str, Any], index: int) -> Obj:
    """The pod the StatefulSet controller creates for `index`, from the pod template."""
    template = (statefulset.get("spec") or {}).get("template") or {}
    pod = pod_name(statefulset, index)
    pod_labels = {
        **((template.get("metadata") or {}).get("labels") or {}),
        "statefulset.kubernetes.io/pod-name": pod,
        "apps.kubernetes.io/pod-index": str(index),
    }
    spec = {**(template.get("spec") or {}), "hostname": pod}
    spec["subdomain"] = (statefulset.get("spec") or {}).get("serviceName", name(statefulset))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod,
            "namespace": namespace(statefulset),
            "labels": pod_labels,
            "ownerReferences": [owner_reference(statefulset)],
            "finalizers": [KUBELET_FINALIZER],
        },
        "spec": spec,
        "status": {"phase": "Pending", "conditions": [_condition("PodScheduled", True)]},
    }


def statefulset_status(statefulset: Mapping[str, Any], pods: Iterable[Obj]) -> Obj:
    """What the controller reports: live (not terminating) pods, and how many are Ready."""
    live = [p for p in pods_of(statefulset, pods) if not terminating(p)]
    ready = sum(pod_ready(p) for p in live)
    return {
        "observedGeneration": meta(statefulset).get("generation", 1),
        "replicas": len(live),
        "readyReplicas": ready,
        "currentReplicas": len(live),
        "updatedReplicas": len(live),
        "availableReplicas": ready,
    }


def status_differs(obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    current = obj.get("status") or {}
    return any(current.get(key) != value for key, value in status.items())


# ---------------------------------------------------------------- kubelet: pod status


def _condition(kind: str, ok: bool) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": TIME}


def _containers(pod: Mapping[str, Any], key: str) -> list[Obj]:
    return list((pod.get("spec") or {}).get(key) or ())


def starting_status(pod: Mapping[str, Any], ip: str) -> Obj:
    """Sandbox up with its IP, the fetch step running, the server not started yet."""
    inits = [
        {"name": c["name"], "ready": False, "state": {"running": {"startedAt": TIME}}}
        for c in _containers(pod, "initContainers")
    ]
    servers = [
        {"name": c["name"], "ready": False, "started": False, "state": {"waiting": {}}}
        for c in _containers(pod, "containers")
    ]
    conditions = [_condition(kind, kind == "PodScheduled") for kind in _CONDITIONS]
    return {
        "phase": "Pending",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": conditions,
        "initContainerStatuses": inits,
        "containerStatuses": servers,
    }


_CONDITIONS = ("PodScheduled", "Initialized", "ContainersReady", "Ready")


def running_status(pod: Mapping[str, Any], ip: str) -> Obj:
    """The fetch step done, every container running and ready."""
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": TIME}}
    inits = [
        {"name": c["name"], "ready": True, "state": done}
        for c in _containers(pod, "initContainers")
    ]
    servers = [
        {
            "name": c["name"],
            "ready": True,
            "started": True,
            "state": {"running": {"startedAt": TIME}},
        }
        for c in _containers(pod, "containers")
    ]
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [_condition(kind, True) for kind in _CONDITIONS],
        "initContainerStatuses": inits,
        "containerStatuses": servers,
    }


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def container_port(pod: Mapping[str, Any], port: str | int) -> int | None:
    """A named container port resolved to its number (a number stands for itself)."""
    if isinstance(port, int):
        return port
    for container in _containers(pod, "containers"):
        for item in container.get("ports") or ():
            if item.get("name") == port:
                return int(item["containerPort"])
    return None


def engine_of(pod: Mapping[str, Any]) -> str:
    return labels(pod).get(ENGINE_LABEL, "")


def fetched_model(pod: Mapping[str, Any]) -> str | None:
    """The model the pod's fetch step pulls (RELAIS_MODEL), i.e. what its engine will serve."""
    for container in _containers(pod, "initContainers"):
        if container.get("name") == resources.FETCH_CONTAINER:
            for var in container.get("env") or ():
                if var.get("name") == "RELAIS_MODEL":
                    return str(var.get("value"))
    return None


# ---------------------------------------------------------------- EndpointSlice controller


def slice_name(service: Mapping[str, Any]) -> str:
    return name(service) + SLICE_SUFFIX


def selects(service: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    pod_labels = labels(pod)
    return (
        bool(selector)
        and namespace(pod) == namespace(service)
        and all(pod_labels.get(key) == value for key, value in selector.items())
    )


def endpoint(pod: Mapping[str, Any]) -> Obj | None:
    """The pod as an endpoint, once it has an IP: terminating pods still serve, but not ready."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    ready, leaving = pod_ready(pod), terminating(pod)
    return {
        "addresses": [ip],
        "conditions": {"ready": ready and not leaving, "serving": ready, "terminating": leaving},
        "targetRef": {
            "kind": "Pod",
            "namespace": namespace(pod),
            "name": name(pod),
            "uid": uid(pod),
        },
    }


def endpoint_slice(service: Mapping[str, Any], pods: Iterable[Obj]) -> Obj:
    """The one EndpointSlice of `service`: its selected pods, on its ports (targets resolved)."""
    chosen = sorted((p for p in pods if selects(service, p)), key=name)
    ports = []
    for item in (service.get("spec") or {}).get("ports") or ():
        target = item.get("targetPort", item.get("port"))
        resolved = next(
            (n for n in (container_port(p, target) for p in chosen) if n is not None), None
        )
        number = resolved if resolved is not None else item.get("port")
        ports.append({"name": item.get("name", ""), "port": number, "protocol": "TCP"})
    endpoints = [e for e in (endpoint(p) for p in chosen) if e is not None]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service),
            "namespace": namespace(service),
            "labels": {SERVICE_NAME_LABEL: name(service), MANAGED_BY_LABEL: SIM},
            "ownerReferences": [owner_reference(service)],
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }


def slice_differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return any(current.get(key) != desired.get(key) for key in ("ports", "endpoints"))


# ---------------------------------------------------------------- kubelet: what a pod runs


def container(pod: Mapping[str, Any], container_name: str) -> Obj | None:
    """The pod's (non-init) container `container_name`, or None."""
    return next(
        (c for c in _containers(pod, "containers") if c.get("name") == container_name), None
    )


def flag_value(args: Iterable[str], flag: str) -> str | None:
    """`--flag VALUE` or `--flag=VALUE` in a command line; None when absent."""
    items = list(args)
    for index, arg in enumerate(items):
        if arg == flag and index + 1 < len(items):
            return items[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def vllm_switches(pod: Mapping[str, Any]) -> Obj:
    """The vLLM fake's switches for what the pod's `vllm serve` command line asks for: the served
    name, and with `--enable-lora` the adapter slots (`--max-loras`, vLLM's default 1)."""
    server = container(pod, resources.SERVER_CONTAINER) or {}
    args = [str(a) for a in server.get("args") or ()]
    switches: Obj = {}
    served = flag_value(args, "--served-model-name")
    if served:
        switches["models"] = [served]
    if "--enable-lora" in args:
        switches["max_loras"] = int(flag_value(args, "--max-loras") or 1)
    return switches


def env_of(item: Mapping[str, Any]) -> dict[str, str]:
    """A container's literal environment (`valueFrom` entries have no value here: skipped)."""
    return {
        str(var["name"]): str(var["value"])
        for var in item.get("env") or ()
        if var.get("value") is not None
    }


def config_map_volume(pod: Mapping[str, Any], volume: str) -> str | None:
    """The ConfigMap behind the pod's volume `volume`, or None."""
    for item in (pod.get("spec") or {}).get("volumes") or ():
        if item.get("name") == volume and item.get("configMap"):
            return str(item["configMap"].get("name"))
    return None


def cache_claim(pod: Mapping[str, Any]) -> str:
    """The claim behind the pod's model cache: the shared claim, else the StatefulSet's
    per-replica one (`models-<pod>`, from volumeClaimTemplates)."""
    for item in (pod.get("spec") or {}).get("volumes") or ():
        if item.get("name") == resources.CACHE_VOLUME and item.get("persistentVolumeClaim"):
            return str(item["persistentVolumeClaim"]["claimName"])
    return f"{resources.CACHE_VOLUME}-{name(pod)}"
