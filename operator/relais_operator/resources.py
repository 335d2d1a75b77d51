"""Pure manifest builders: an LLMDeployment (+ settings) in, the children's manifests out.

No I/O here; `kube.apply` sends what these return. The model cache:
- ReadWriteOnce (default): one PVC per replica through the StatefulSet's volumeClaimTemplates
  (`models-<name>-<ordinal>`), filled by each pod's fetch step (an init container), so every
  replica owns its disk and scaling past one replica works.
- ReadWriteMany: one shared PVC `<name>-models`, filled once by a download Job
  (`<name>-fetch-<hash of model and revision>`) and mounted read-only by every replica. The
  pods have no fetch step; the StatefulSet runs 0 replicas until the Job has succeeded.
Claim and Job names are deterministic, so re-creating a deleted resource finds its retained
cache, and its new Job finds the model there and exits at once.

LoRA adapters (spec.adapters) reach the engine one of two ways (engines.Engine says which):
- at run time (vLLM with spec.lora): the ConfigMap `<name>-adapters` lists them, and the
  `adapter-agent` sidecar of every pod loads them into its own engine on localhost. The pod
  template depends on spec.lora only, never on the adapters: changing them restarts nothing.
  On a shared cache each hf:// adapter is downloaded by its own Job `<name>-adapter-<hash>`.
- at start (Ollama, TGI): in the server's environment, so a change rolls the replicas.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from relais_api import Adapter

from relais_operator.engines import (
    ENGINES,
    TMP,
    Engine,
    adapter_digest,
    adapter_link,
    hf_adapters_env,
)
from relais_operator.settings import OperatorSettings
from relais_operator.spec import GROUP, KIND, VERSION, LLMDeployment

LABEL = "relais.dev/llmdeployment"
GPU_RESOURCE = "nvidia.com/gpu"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
CACHE_VOLUME = "models"
FETCH_CONTAINER = "fetch-model"
SERVER_CONTAINER = "model-server"
# The download Job's pods carry this label, not LABEL: they are no model pods (the Service and
# the operator's pod watch select LABEL), yet `kubectl get pods -l relais.dev/fetch-for=NAME`.
FETCH_LABEL = "relais.dev/fetch-for"
# Model pods whose engine serves Prometheus metrics on its port `http` at /metrics carry this
# label (engines.Engine.serves_metrics); the chart's PodMonitor and PodMonitoring select it.
METRICS_LABEL = "relais.dev/metrics"
# A Job's name goes into its pods' `job-name` label: at most 63 characters.
_JOB_NAME_PREFIX = 63 - len("-fetch-") - 8
_ADAPTER_JOB_PREFIX = 63 - len("-adapter-") - 8
# Run-time adapters: the ConfigMap the operator writes and the sidecar that reads it.
AGENT_CONTAINER = "adapter-agent"
AGENT_PORT = 8001
AGENT_PORT_NAME = "agent"
AGENT_COMMAND = ("python", "-m", "relais_operator.adapter_agent")
ADAPTERS_VOLUME = "adapters"
ADAPTERS_MOUNT = "/etc/relais/adapters"
ADAPTERS_KEY = "adapters.json"

Manifest = dict[str, Any]


def engine_of(llm: LLMDeployment) -> Engine:
    return ENGINES[llm.spec.engine]


def labels(llm: LLMDeployment) -> dict[str, str]:
    """The labels every child carries (the cross-team contract)."""
    return {
        LABEL: llm.name,
        "app.kubernetes.io/name": llm.spec.engine,
        "app.kubernetes.io/instance": llm.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": "relais-operator",
    }


def _metrics_label(llm: LLMDeployment) -> dict[str, str]:
    """The scrape label, on the pods of engines that serve /metrics only."""
    return {METRICS_LABEL: "true"} if engine_of(llm).serves_metrics else {}


def selector(llm: LLMDeployment) -> dict[str, str]:
    """The pod selector: one label, so it never changes when the engine does."""
    return {LABEL: llm.name}


def selector_string(llm: LLMDeployment) -> str:
    """The selector in label-query form, for status.selector (the scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in selector(llm).items())


def shared_claim_name(llm: LLMDeployment) -> str:
    return f"{llm.name}-models"


def replica_claim_name(llm: LLMDeployment, ordinal: int) -> str:
    """The PVC the StatefulSet controller makes for replica `ordinal` (ReadWriteOnce caches)."""
    return f"{CACHE_VOLUME}-{llm.name}-{ordinal}"


def fetch_job_name(llm: LLMDeployment) -> str:
    """`<name>-fetch-<hash>`: a new model or revision is a new Job (a Job's pods are immutable)."""
    key = f"{llm.spec.model}@{llm.spec.revision or 'main'}"
    if len(llm.name) > _JOB_NAME_PREFIX:  # the name is cut: keep Jobs of long names apart
        key += f"@{llm.name}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{llm.name[:_JOB_NAME_PREFIX]}-fetch-{digest}"


def adapters_config_name(llm: LLMDeployment) -> str:
    return f"{llm.name}-adapters"


def runtime_adapters(llm: LLMDeployment) -> bool:
    """Whether the pods run the adapter-agent (an engine that loads adapters at run time, with
    spec.lora set: the pod template depends on that, not on the adapters)."""
    return engine_of(llm).runtime_adapters and llm.spec.lora is not None


def downloaded_adapters(llm: LLMDeployment) -> list[Adapter]:
    """The hf:// adapters that a Job downloads (shared caches of engines that fetch adapters)."""
    if not llm.spec.storage.shared or not engine_of(llm).adapter_fetch_command:
        return []
    return [adapter for adapter in llm.spec.adapters if adapter.hf_repo is not None]


def adapter_job_name(llm: LLMDeployment, adapter: Adapter) -> str:
    """`<name>-adapter-<8 hex of sha256(source@revision)>` (a cut name is hashed in too)."""
    digest = adapter_digest(adapter)
    if len(llm.name) > _ADAPTER_JOB_PREFIX:
        key = f"{adapter.source}@{adapter.revision or 'main'}@{llm.name}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{llm.name[:_ADAPTER_JOB_PREFIX]}-adapter-{digest}"


def endpoint(llm: LLMDeployment, settings: OperatorSettings) -> str:
    port = engine_of(llm).port
    return f"http://{llm.name}.{llm.namespace}.svc.{settings.cluster_domain}:{port}"


def owner_reference(llm: LLMDeployment) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": llm.name,
        "uid": llm.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(llm: LLMDeployment, name: str, *, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": llm.namespace, "labels": labels(llm)}
    if owned and llm.uid:
        meta["ownerReferences"] = [owner_reference(llm)]
    return meta


def build_service(llm: LLMDeployment, settings: OperatorSettings) -> Manifest:
    """The Service `<name>`: the engine's port, named `http`, over ready replicas."""
    del settings  # same Service for every configuration; kept for the builders' common shape
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(llm, llm.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(llm),
            "ports": [
                {
                    "name": "http",
                    "port": engine_of(llm).port,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def _cache_claim_spec(llm: LLMDeployment) -> dict[str, Any]:
    storage = llm.spec.storage
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return spec


def build_cache(llm: LLMDeployment, settings: OperatorSettings) -> Manifest | None:
    """The shared ReadWriteMany cache PVC, or None for per-replica (ReadWriteOnce) caches."""
    del settings
    if not llm.spec.storage.shared:
        return None
    # The one deliberate exception to "every child has an ownerReference": with retainOnDelete
    # the cache must outlive the LLMDeployment, so the garbage collector must not see an owner.
    owned = not llm.spec.storage.retain_on_delete
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(llm, shared_claim_name(llm), owned=owned),
        "spec": _cache_claim_spec(llm),
    }


def _tolerations(llm: LLMDeployment) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    if llm.spec.gpu.count > 0:
        result.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    for toleration in llm.spec.tolerations:
        item = toleration.model_dump(by_alias=True, exclude_none=True)
        if item not in result:
            result.append(item)
    return result


def _node_selector(llm: LLMDeployment) -> dict[str, str]:
    defaults = {GKE_ACCELERATOR: llm.spec.gpu.type} if llm.spec.gpu.type else {}
    return {**defaults, **llm.spec.node_selector}


def _resources(llm: LLMDeployment) -> dict[str, Any]:
    limits: dict[str, str | int] = dict(llm.spec.resources.limits)
    if llm.spec.gpu.count > 0:
        limits[GPU_RESOURCE] = str(llm.spec.gpu.count)
    result: dict[str, Any] = {}
    if llm.spec.resources.requests:
        result["requests"] = dict(llm.spec.resources.requests)
    if limits:
        result["limits"] = limits
    return result


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in pairs.items()]


def _user_env(llm: LLMDeployment) -> list[dict[str, Any]]:
    return [var.model_dump(by_alias=True, exclude_none=True) for var in llm.spec.env]


def _container_security(engine: Engine) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": engine.read_only_root,
    }


def _mounts(engine: Engine, *, read_only: bool = False) -> list[dict[str, Any]]:
    cache: dict[str, Any] = {"name": CACHE_VOLUME, "mountPath": engine.cache_path}
    if read_only:
        cache["readOnly"] = True
    mounts = [cache, {"name": "tmp", "mountPath": TMP}]
    if engine.needs_shm:
        # The container's shared memory (an emptyDir in RAM), not a host path.
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})  # noqa: S108
    return mounts


def _image(llm: LLMDeployment, settings: OperatorSettings) -> str:
    return llm.spec.image or settings.image_for(llm.spec.engine) or engine_of(llm).image


def _token_env(llm: LLMDeployment) -> list[dict[str, Any]]:
    ref = llm.spec.hf_token_secret_ref
    if ref is None:
        return []
    secret = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return [{"name": "HF_TOKEN", "valueFrom": secret}]


def _fetch_container(
    llm: LLMDeployment,
    settings: OperatorSettings,
    mounts: list[dict[str, Any]],
    *,
    adapters: bool = False,
) -> dict[str, Any]:
    """The fetch step; with `adapters`, it also downloads and links the hf:// adapters the
    server reads at start (engines whose server reads adapter files at start)."""
    engine = engine_of(llm)
    env = _env({**engine.cache_env, "RELAIS_MODEL": llm.spec.model})
    if llm.spec.revision is not None:
        env += _env({"RELAIS_REVISION": llm.spec.revision})
    command = engine.fetch_command(llm.spec)
    wanted = hf_adapters_env(engine, llm.spec) if adapters else ""
    if wanted and engine.adapters_at_start_need_files and engine.adapter_fetch_command:
        env += _env({"RELAIS_ADAPTERS": wanted})
        command = list(engine.adapter_fetch_command)
    return {
        "name": FETCH_CONTAINER,
        "image": _image(llm, settings),
        "command": command,
        "env": env + _token_env(llm),
        "volumeMounts": mounts,
        "securityContext": _container_security(engine),
    }


def _probe(engine: Engine, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": engine.health_path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _startup_probe(engine: Engine, settings: OperatorSettings) -> dict[str, Any]:
    """Model load can take long: the startup probe allows it (readiness then gates traffic).

    An engine that loads its model lazily marks the end of its warm-up with a file instead.
    """
    failures = max(1, settings.startup_timeout_seconds // 10)
    if engine.ready_file is None:
        return _probe(engine, 10, failures)
    return {
        "exec": {"command": ["test", "-f", engine.ready_file]},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _server_container(llm: LLMDeployment, settings: OperatorSettings) -> dict[str, Any]:
    engine = engine_of(llm)
    shared = llm.spec.storage.shared
    env = {**engine.cache_env, **engine.serve_env, **(engine.read_only_cache_env if shared else {})}
    if runtime_adapters(llm):
        env |= engine.lora_env
    if engine.start_adapter_env is not None:
        env |= engine.start_adapter_env(llm.spec)
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": _image(llm, settings),
        "command": list(engine.command),
        "args": engine.args(llm.spec),
        "env": _env(env) + _user_env(llm),
        "ports": [{"name": "http", "containerPort": engine.port, "protocol": "TCP"}],
        "startupProbe": _startup_probe(engine, settings),
        "readinessProbe": _probe(engine, 10, 3),
        "livenessProbe": _probe(engine, 30, 5),
        "volumeMounts": _mounts(engine, read_only=shared),
        "securityContext": _container_security(engine),
    }
    resources = _resources(llm)
    if resources:
        container["resources"] = resources
    return container


def _agent_container(llm: LLMDeployment, settings: OperatorSettings) -> dict[str, Any]:
    """The adapter-agent: loads the ConfigMap's adapters into the engine next to it.

    It downloads hf:// adapters onto the pod's own cache (per-replica caches) or waits for the
    download Jobs (a shared cache, mounted read-only). Only a liveness probe: a readiness probe
    would take the engine's traffic away whenever the agent is busy or restarting.
    """
    engine = engine_of(llm)
    shared = llm.spec.storage.shared
    env = {
        "RELAIS_ADAPTERS_FILE": f"{ADAPTERS_MOUNT}/{ADAPTERS_KEY}",
        "RELAIS_ENGINE_URL": f"http://127.0.0.1:{engine.port}",
        "RELAIS_AGENT_PORT": str(AGENT_PORT),
        "RELAIS_CACHE_PATH": engine.cache_path,
        **engine.cache_env,
        **({"RELAIS_CACHE_READ_ONLY": "1"} if shared else {}),
    }
    mounts = _mounts(engine, read_only=shared)
    mounts = [m for m in mounts if m["name"] != "shm"]
    mounts.append({"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_MOUNT, "readOnly": True})
    return {
        "name": AGENT_CONTAINER,
        "image": settings.agent_image,
        "command": list(AGENT_COMMAND),
        "env": _env(env) + _token_env(llm),
        "ports": [{"name": AGENT_PORT_NAME, "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": AGENT_PORT_NAME},
            "periodSeconds": 30,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }


def _volumes(llm: LLMDeployment) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if engine_of(llm).needs_shm:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    if llm.spec.storage.shared:  # the download Job writes it; model pods only read it
        claim = {"claimName": shared_claim_name(llm), "readOnly": True}
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": claim})
    if runtime_adapters(llm):  # the whole directory (no subPath), so updates reach the pods
        config = {"name": adapters_config_name(llm)}
        volumes.append({"name": ADAPTERS_VOLUME, "configMap": config})
    return volumes


def _pod_basics(settings: OperatorSettings) -> dict[str, Any]:
    """What every pod we make shares: no API token, no service links, non-root, seccomp."""
    uid = settings.run_as_user
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            # A model cache holds big files: chown once, not on every mount.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _pod_spec(llm: LLMDeployment, settings: OperatorSettings) -> dict[str, Any]:
    spec = _pod_basics(settings)
    if not llm.spec.storage.shared:  # per-replica caches: each pod fetches into its own disk
        fetch = _fetch_container(llm, settings, _mounts(engine_of(llm)), adapters=True)
        spec["initContainers"] = [fetch]
    spec["containers"] = [_server_container(llm, settings)]
    if runtime_adapters(llm):
        spec["containers"].append(_agent_container(llm, settings))
    spec["volumes"] = _volumes(llm)
    node_selector = _node_selector(llm)
    if node_selector:
        spec["nodeSelector"] = node_selector
    tolerations = _tolerations(llm)
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def build_workload(
    llm: LLMDeployment, settings: OperatorSettings, *, cached: bool = False
) -> Manifest:
    """The StatefulSet `<name>`: per-replica caches (RWO), or the shared cache read-only (RWX).

    `cached` says whether the shared cache's download Job has succeeded: until then the
    StatefulSet runs 0 replicas, so no pod starts on a cache without the model.
    """
    storage = llm.spec.storage
    shared = storage.shared
    spec: dict[str, Any] = {
        "replicas": llm.spec.replicas if cached or not shared else 0,
        "serviceName": llm.name,
        # Replicas are independent (each its own disk, or all reading a filled shared cache).
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector(llm)},
        "updateStrategy": {"type": "RollingUpdate"},
        "persistentVolumeClaimRetentionPolicy": {
            "whenDeleted": "Retain" if storage.retain_on_delete else "Delete",
            "whenScaled": "Retain",
        },
        "template": {
            "metadata": {"labels": labels(llm) | _metrics_label(llm)},
            "spec": _pod_spec(llm, settings),
        },
    }
    if not shared:
        spec["volumeClaimTemplates"] = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": CACHE_VOLUME, "labels": labels(llm)},
                "spec": _cache_claim_spec(llm),
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(llm, llm.name),
        "spec": spec,
    }


def _job_mounts(engine: Engine) -> list[dict[str, Any]]:
    return [
        {"name": CACHE_VOLUME, "mountPath": engine.cache_path},
        {"name": "tmp", "mountPath": TMP},
    ]


def build_fetch_job(llm: LLMDeployment, settings: OperatorSettings) -> Manifest | None:
    """The Job that downloads the model into the shared cache once; None for per-replica caches.

    It runs the engine's own image and fetch step (which exits at once when the model is
    already there), to completion, retried at most `fetch_backoff_limit` times and stopped
    after `fetch_timeout_seconds` (a pod stuck on a missing Secret fails too, in the end). It
    has no scheduling constraints: downloading needs no GPU.
    """
    if not llm.spec.storage.shared:
        return None
    fetch = _fetch_container(llm, settings, _job_mounts(engine_of(llm)))
    return _download_job(llm, settings, fetch_job_name(llm), fetch, "model-fetch")


def _download_job(
    llm: LLMDeployment,
    settings: OperatorSettings,
    name: str,
    fetch: dict[str, Any],
    component: str,
) -> Manifest:
    """A Job running one fetch step against the shared cache, to completion, bounded."""
    pod_labels = {
        FETCH_LABEL: llm.name,
        "app.kubernetes.io/name": llm.spec.engine,
        "app.kubernetes.io/instance": llm.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "relais-operator",
    }
    pod = _pod_basics(settings)
    pod["restartPolicy"] = "Never"
    # The step's last log lines become a failed pod's message, which status then shows.
    fetch["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod["containers"] = [fetch]
    claim = {"claimName": shared_claim_name(llm)}
    pod["volumes"] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": CACHE_VOLUME, "persistentVolumeClaim": claim},
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(llm, name),
        "spec": {
            "backoffLimit": settings.fetch_backoff_limit,
            "activeDeadlineSeconds": settings.fetch_timeout_seconds,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def build_adapter_jobs(llm: LLMDeployment, settings: OperatorSettings) -> list[Manifest]:
    """One download Job per hf:// adapter on a shared cache (none for per-replica caches).

    Each runs the engine's fetch step for the adapter's repo (RELAIS_MODEL, RELAIS_REVISION)
    and links the snapshot at engines.adapter_link. They do not gate the replicas of engines
    that load adapters at run time (the agent waits for the files); see `adapters_cached`.
    """
    engine = engine_of(llm)
    jobs = []
    for adapter in downloaded_adapters(llm):
        env = {
            **engine.cache_env,
            "RELAIS_MODEL": adapter.hf_repo or "",
            "RELAIS_REVISION": adapter.revision or "main",
            "RELAIS_LINK": adapter_link(engine, adapter),
        }
        fetch = {
            "name": FETCH_CONTAINER,
            "image": _image(llm, settings),
            "command": list(engine.adapter_fetch_command),
            "env": _env(env) + _token_env(llm),
            "volumeMounts": _job_mounts(engine),
            "securityContext": _container_security(engine),
        }
        name = adapter_job_name(llm, adapter)
        jobs.append(_download_job(llm, settings, name, fetch, "adapter-fetch"))
    return jobs


def build_adapters_config(llm: LLMDeployment, settings: OperatorSettings) -> Manifest | None:
    """The ConfigMap `<name>-adapters` the adapter-agents read (run-time adapters only).

    Key `adapters.json`: {"adapters": [{"name", "source", "revision"}]} in spec order.
    """
    del settings
    if not runtime_adapters(llm):
        return None
    adapters = [
        {"name": a.name, "source": a.source, "revision": a.revision} for a in llm.spec.adapters
    ]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(llm, adapters_config_name(llm)),
        "data": {ADAPTERS_KEY: json.dumps({"adapters": adapters}, indent=2) + "\n"},
    }


def job_reference(llm: LLMDeployment, name: str) -> Manifest:
    """Enough of a Job `name` of this resource to address it (to delete a superseded one)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": llm.namespace},
    }


def build_children(
    llm: LLMDeployment, settings: OperatorSettings, *, cached: bool = False
) -> list[Manifest]:
    """Every child in creation order: the shared cache and its Jobs (if shared), the adapters'
    ConfigMap, the Service, the StatefulSet (see build_workload for `cached`)."""
    cache = [build_cache(llm, settings), build_fetch_job(llm, settings)]
    cache += build_adapter_jobs(llm, settings)
    config = build_adapters_config(llm, settings)
    serving = [config, build_service(llm, settings), build_workload(llm, settings, cached=cached)]
    return [child for child in (*cache, *serving) if child is not None]
