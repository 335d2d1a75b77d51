"""The operator's only Kubernetes I/O: apply children, write status; API errors -> kopf errors.

`apply()` reads the current object (GET), creates it when absent, and patches it (JSON patch,
our fields only) when it drifted or our desired manifest changed; otherwise it writes nothing,
so a no-op reconcile costs reads only. A hash of the desired manifest, kept in an annotation,
catches removals a subset comparison cannot see (a dropped nodeSelector key). What the API
cannot change in place is re-created: a StatefulSet's immutable fields (its pods orphaned and
re-adopted), a download Job's pod template (unless the Job has already succeeded).

The autoscaler's calls (`endpoint_slices`, `scale`, `post_event`) raise plain `ApiError`s: its
loop, not kopf, decides what a failure means (a skipped tick).

Client: one pooled aiohttp session with the credentials kopf's own login finds (in-cluster
service account, else the kubeconfig), so the operator authenticates exactly as its watches do.
Plain dicts in and out: no client-library models (kubernetes_asyncio would cost ~70 MB of
model classes and a (de)serialisation per object).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import kopf

from relais_operator import metrics
from relais_operator.spec import GROUP, PLURAL, VERSION
from relais_operator.status import job_succeeded

log = logging.getLogger(__name__)

HASH_ANNOTATION = "relais.dev/desired-hash"
_PLURALS = {
    "StatefulSet": "statefulsets",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Job": "jobs",
    "ConfigMap": "configmaps",
}
# Paths we own and patch in place, and paths the API forbids changing (-> delete and re-create).
_MUTABLE = {
    "StatefulSet": (
        "spec/replicas",
        "spec/template",
        "spec/updateStrategy",
        "spec/persistentVolumeClaimRetentionPolicy",
    ),
    "Service": ("spec/type", "spec/selector", "spec/ports"),
    "PersistentVolumeClaim": ("spec/resources",),
    # A Job's pod template is immutable: never patched. A new model is a new Job name.
    "Job": (),
    "ConfigMap": ("data",),
}
_IMMUTABLE = {
    "StatefulSet": (
        "spec/selector",
        "spec/serviceName",
        "spec/podManagementPolicy",
        "spec/volumeClaimTemplates",
    ),
    # A download Job whose pod changed (a fixed token reference, a new image) is replaced,
    # unless it has already succeeded: the cache is filled, there is nothing to redo.
    "Job": ("spec/template",),
}
# How a re-created object's dependents go: a StatefulSet's pods stay (they are re-adopted);
# a replaced Job's pods go with it.
_RECREATE_PROPAGATION = {"Job": "Background"}

Obj = dict[str, Any]


# --- pure helpers ------------------------------------------------------------------------------


def object_path(manifest: Mapping[str, Any], *, name: bool = True) -> str:
    """The REST path of a manifest's object (or of its collection)."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    meta = manifest["metadata"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{meta['namespace']}/{_PLURALS[kind]}"
    return f"{path}/{meta['name']}" if name else path


def desired_hash(manifest: Mapping[str, Any]) -> str:
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_subset(desired: Any, current: Any) -> bool:
    """Whether `current` holds everything in `desired` (the API server adds defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(current, Mapping) and all(
            is_subset(value, current.get(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(desired) == len(current)
            and all(is_subset(d, c) for d, c in zip(desired, current, strict=True))
        )
    return bool(desired == current)


def _get(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _map_ops(field: str, desired: Mapping[str, str], current: Any) -> list[Obj]:
    """Add/replace ops for our keys in a string map (labels, annotations); others' keys stay."""
    if not isinstance(current, Mapping):
        return [{"op": "add", "path": f"/metadata/{field}", "value": dict(desired)}]
    return [
        {"op": "add", "path": f"/metadata/{field}/{_escape(key)}", "value": value}
        for key, value in desired.items()
        if current.get(key) != value
    ]


def _owner_ops(desired: list[Obj], current: Any) -> list[Obj]:
    if not desired:
        return []
    if not isinstance(current, list) or not current:
        return [{"op": "add", "path": "/metadata/ownerReferences", "value": desired}]
    uids = {ref.get("uid") for ref in current}
    missing = [ref for ref in desired if ref["uid"] not in uids]
    return [{"op": "add", "path": "/metadata/ownerReferences/-", "value": ref} for ref in missing]


def patch_ops(desired: Mapping[str, Any], current: Mapping[str, Any]) -> list[Obj]:
    """The JSON patch that brings `current` to `desired` on the fields we own; [] when equal."""
    meta, now = desired["metadata"], current.get("metadata", {})
    ops = _map_ops("labels", meta.get("labels", {}), now.get("labels"))
    ops += _map_ops("annotations", meta.get("annotations", {}), now.get("annotations"))
    ops += _owner_ops(meta.get("ownerReferences", []), now.get("ownerReferences"))
    changed = _hash_of(desired) != _hash_of(current)
    for path in _MUTABLE.get(desired["kind"], ()):
        want, have = _get(desired, path), _get(current, path)
        if want is not None and (changed or not is_subset(want, have)):
            op = "replace" if have is not None else "add"
            ops.append({"op": op, "path": f"/{path}", "value": want})
    return ops


def needs_recreate(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether a field the API never changes in place differs (StatefulSet claim templates...)."""
    if desired["kind"] == "Job" and job_succeeded(current):
        return False
    return any(
        _get(desired, path) is not None and not is_subset(_get(desired, path), _get(current, path))
        for path in _IMMUTABLE.get(desired["kind"], ())
    )


def with_hash(manifest: Mapping[str, Any]) -> Obj:
    """The manifest with the hash of its desired content in an annotation."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: desired_hash(manifest)}
    return {**manifest, "metadata": meta}


def _hash_of(obj: Mapping[str, Any]) -> str | None:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(HASH_ANNOTATION)
    return str(value) if value is not None else None


# --- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """The one place API failures become kopf errors: retry what may pass, stop what cannot."""
    try:
        yield
    except ApiError as exc:
        message = f"{what}: {exc}"
        if exc.status in (400, 422):
            raise kopf.PermanentError(message) from exc
        delay = 30 if exc.status == 403 else 1 if exc.status == 401 else 5
        raise kopf.TemporaryError(message, delay=delay) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise kopf.TemporaryError(f"{what}: {exc!r}", delay=5) from exc


# --- the client -------------------------------------------------------------------------------


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials as kopf finds them: the pod's service account, else the kubeconfig."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise RuntimeError("no Kubernetes credentials: neither a service account nor KUBECONFIG")
    return info


class Kube:
    """Thin async access to the API for the operator's children and its resources' status."""

    def __init__(self, settings: kopf.OperatorSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    @classmethod
    async def connect(cls, settings: kopf.OperatorSettings) -> Kube:
        kube = cls(settings)
        await kube._login()
        return kube

    async def _login(self) -> None:
        """(Re-)read the credentials: service-account tokens rotate, a 401 means a new one."""
        info = login(self._settings)
        headers = {"Accept": "application/json", "User-Agent": "relais-operator"}
        auth = None
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            auth = aiohttp.BasicAuth(info.username, info.password)
        connector = aiohttp.TCPConnector(limit=64, ssl=info.as_ssl_context())
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
        old, self._server = self._session, info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers=headers, auth=auth, connector=connector, timeout=timeout
        )
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Obj:
        assert self._session is not None, "connect() first"
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        url = f"{self._server}{path}"
        verb = "LIST" if params is not None else method  # the one collection read lists
        request = self._session.request(method, url, data=data, headers=headers, params=params)
        try:
            async with request as resp:
                payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
                if resp.status == 401:
                    await self._login()
                if resp.status >= 400:
                    metrics.api_error(verb, resp.status)
                    message = payload.get("message") if isinstance(payload, dict) else None
                    raise ApiError(resp.status, str(message or resp.reason))
                return dict(payload or {})
        except (aiohttp.ClientError, TimeoutError):
            metrics.api_error(verb, "network")
            raise

    async def get(self, manifest: Mapping[str, Any]) -> Obj | None:
        try:
            return await self._call("GET", object_path(manifest))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, manifest: Mapping[str, Any]) -> Obj:
        """Make the object match `manifest` on our fields; write only what differs."""
        desired = with_hash(manifest)
        meta = manifest["metadata"]
        what = f"{manifest['kind']} {meta['namespace']}/{meta['name']}"
        with api_errors(what):
            current = await self.get(desired)
            if current is not None and current["metadata"].get("deletionTimestamp"):
                raise kopf.TemporaryError(f"{what} is being deleted; waiting", delay=5)
            if current is not None and needs_recreate(desired, current):
                policy = _RECREATE_PROPAGATION.get(desired["kind"], "Orphan")
                log.info("%s: immutable fields changed; re-creating (dependents: %s)", what, policy)
                await self._delete(desired, policy)
                current = None
            if current is None:
                created = await self._create(desired)
                if created is not None:
                    return created
                current = await self.get(desired)  # lost a race (e.g. an operator restart)
                if current is None:
                    raise kopf.TemporaryError(f"{what}: conflicting create; retrying", delay=2)
            ops = patch_ops(desired, current)
            if not ops:
                return current
            log.info("%s: patching %s", what, ", ".join(sorted({op["path"] for op in ops})))
            return await self._call(
                "PATCH", object_path(desired), ops, "application/json-patch+json"
            )

    async def _create(self, desired: Obj) -> Obj | None:
        try:
            return await self._call("POST", object_path(desired, name=False), desired)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def _delete(self, manifest: Mapping[str, Any], policy: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy}
        try:
            await self._call("DELETE", object_path(manifest), body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def delete(self, manifest: Mapping[str, Any]) -> None:
        """Delete an object and its dependents (gone already is fine)."""
        meta = manifest["metadata"]
        with api_errors(f"deleting {manifest['kind']} {meta['namespace']}/{meta['name']}"):
            await self._delete(manifest, "Background")

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch an LLMDeployment's status subresource (gone resources are ignored)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        body = {"status": dict(status)}
        with api_errors(f"status of {namespace}/{name}"):
            try:
                await self._call("PATCH", path, body, "application/merge-patch+json")
            except ApiError as exc:
                if exc.status != 404:
                    raise

    # --- the autoscaler's calls: plain ApiErrors, the loop decides what a failure means -------

    async def endpoint_slices(self, namespace: str, service: str) -> list[Obj]:
        """The EndpointSlices of a Service (the caller filters them again by their label)."""
        path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        selector = {"labelSelector": f"kubernetes.io/service-name={service}"}
        found = await self._call("GET", path, params=selector)
        return [item for item in found.get("items") or [] if isinstance(item, dict)]

    async def scale(self, namespace: str, name: str, replicas: int, resource_version: str) -> bool:
        """Set an LLMDeployment's spec.replicas through its scale subresource, only if the
        object is still at `resource_version`; False when it moved on (409) or is gone (404)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/scale"
        body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}}
        try:
            await self._call("PATCH", path, body, "application/merge-patch+json")
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def post_event(
        self, involved: Mapping[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Record a core/v1 Event about an object (its apiVersion, kind and metadata)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Named like client-go's recorder does: `<object>.<nanoseconds in hex>`.
        name = f"{meta['name']}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "relais-operator"},
            "reportingComponent": "relais.dev/operator",
            "reportingInstance": "relais-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
