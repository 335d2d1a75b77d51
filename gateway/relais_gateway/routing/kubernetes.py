"""The in-cluster backend source: watches LLMDeployments and their EndpointSlices.

Why raw aiohttp list+watch rather than kubernetes_asyncio's `Watch`: the gateway reads two
resources as plain JSON, and the typed models of kubernetes_asyncio add a deserialisation step and
required-field checks a custom resource does not need. aiohttp is already the gateway's HTTP stack,
so timeouts and pooling are the same ones. kubernetes_asyncio is used only to resolve a kubeconfig
(outside a cluster); in a pod the service-account token and CA are read directly, and the token is
re-read at every (re)list so rotated tokens are picked up.

Each (resource, namespace scope) runs a loop: LIST (the full truth, replacing that scope's view),
then WATCH from the list's resourceVersion until the server closes it; on any error, back off and
LIST again. Label selectors go to the server AND are checked here (some emulators ignore them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError
from relais_api import AdapterStatus, LLMDeploymentSpec, describe

from relais_gateway.routing.registry import Adapter, Backend, MemorySource

log = logging.getLogger("relais_gateway.routing.kubernetes")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LLMD = ("/apis/relais.dev/v1alpha1", "llmdeployments", "")
SLICES = ("/apis/discovery.k8s.io/v1", "endpointslices", SERVICE_NAME_LABEL)

Obj = dict[str, Any]
SCALE_REQUEST_EVERY_S = 5.0


# ---------------------------------------------------------------- pure: objects -> backends


def served_model_name(llmd: Obj) -> str:
    """status.servedModelName, else spec.servedModelName, else spec.model (the contract)."""
    status = llmd.get("status") or {}
    spec = llmd.get("spec") or {}
    return str(
        status.get("servedModelName") or spec.get("servedModelName") or spec.get("model") or ""
    )


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def ready_urls(slices: Iterable[Obj]) -> tuple[str, ...]:
    """Base URLs of ready endpoints on the port named `http`, sorted and de-duplicated."""
    urls: set[str] = set()
    for eps in slices:
        ports = [p.get("port") for p in eps.get("ports") or () if p.get("name") == "http"]
        if not ports or not isinstance(ports[0], int):
            continue
        for endpoint in eps.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            # The API says an unset `ready` means ready; terminating endpoints are not ready.
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            urls.update(_url(address, ports[0]) for address in endpoint.get("addresses") or ())
    return tuple(sorted(urls))


def build_backends(llmds: Iterable[Obj], slices: Iterable[Obj]) -> list[Backend]:
    """Backends for LLMDeployments, with replicas from the EndpointSlices of their Services."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for eps in slices:
        meta = eps.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            by_service.setdefault((meta.get("namespace", ""), service), []).append(eps)
    backends: dict[str, Backend] = {}
    for llmd in sorted(llmds, key=_identity):
        backend = _backend(llmd, by_service)
        if backend is None:
            continue
        if backend.model in backends:
            log.warning(
                "two LLMDeployments serve %r; keeping the first",
                backend.model,
                extra={"skipped": "/".join(_identity(llmd))},
            )
            continue
        backends[backend.model] = backend
    return list(backends.values())


def _identity(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _backend(llmd: Obj, by_service: Mapping[tuple[str, str], list[Obj]]) -> Backend | None:
    """The backend of one LLMDeployment, read through the shared typed model of its spec."""
    namespace, name = _identity(llmd)
    try:
        spec = LLMDeploymentSpec.model_validate(llmd.get("spec") or {})
    except ValidationError as exc:
        log.warning("ignoring LLMDeployment %s/%s: %s", namespace, name, describe(exc))
        return None
    scaling = spec.autoscaling
    return Backend(
        name=name,
        namespace=namespace,
        engine=spec.engine,
        model=served_model_name(llmd),
        engine_model=spec.engine_model_name,
        replicas=ready_urls(by_service.get((namespace, name), ())),
        limits=spec.request_limits,
        task=spec.task,
        ollama_options=tuple(spec.ollama_options.as_options().items())
        if spec.ollama_options
        else (),
        routing=spec.routing,
        autoscaled=scaling is not None and scaling.max_replicas >= 1,
        desired_replicas=spec.replicas,
        adapters=adapters(llmd, spec),
    )


def adapters(llmd: Obj, spec: LLMDeploymentSpec) -> tuple[Adapter, ...]:
    """The deployment's adapters (`spec.adapters`), with the state and message the operator
    reports for each in `status.adapters` (a Failed one is answered 503 with that message)."""
    reported = {}
    for entry in (llmd.get("status") or {}).get("adapters") or ():
        try:
            status = AdapterStatus.model_validate(entry)
        except ValidationError:
            continue  # a status this gateway cannot read says nothing; the spec still holds
        reported[status.name] = status
    found = [(a.name, reported.get(a.name)) for a in spec.adapters]
    return tuple(
        Adapter(name, status.state, status.message[:500]) if status else Adapter(name)
        for name, status in found
    )


# ---------------------------------------------------------------- access to the API server


@dataclass
class KubeAccess:
    """How to reach the API server: base URL, TLS context, and where the bearer token comes from."""

    base_url: str
    ssl_context: ssl.SSLContext | None = None
    token: str | None = None
    token_file: Path | None = None

    def headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster_access() -> KubeAccess | None:
    """Service-account access inside a pod, or None outside a cluster."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port or not (SA_DIR / "token").exists():
        return None
    context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    host = f"[{host}]" if ":" in host else host
    return KubeAccess(f"https://{host}:{port}", context, token_file=SA_DIR / "token")


async def kubeconfig_access(path: str | None = None) -> KubeAccess:
    """Access from a kubeconfig (KUBECONFIG or ~/.kube/config), resolved by kubernetes_asyncio
    (the optional `kubeconfig` extra: the gateway image runs in pods and leaves it out)."""
    try:
        from kubernetes_asyncio import client, config
    except ImportError as error:
        raise RuntimeError(
            "no in-cluster service account, and reading a kubeconfig needs kubernetes_asyncio:"
            " pip install 'relais[gateway,kubeconfig]'"
        ) from error

    configuration = client.Configuration()
    await config.load_kube_config(config_file=path, client_configuration=configuration)
    context: ssl.SSLContext | None = None
    host = str(configuration.host or "")
    if host.startswith("https"):
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    auth = str(await configuration.get_api_key_with_prefix("BearerToken") or "")
    token = auth.removeprefix("Bearer ").strip() or None
    return KubeAccess(host.rstrip("/"), context, token=token)


# ---------------------------------------------------------------- the watching source


@dataclass
class _Scope:
    """One list+watch loop's objects (one resource in one namespace, or cluster-wide)."""

    kind: tuple[str, str, str]
    namespace: str | None
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    synced: bool = False

    def path(self) -> str:
        prefix, plural, _ = self.kind
        where = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{prefix}{where}/{plural}"

    def params(self) -> dict[str, str]:
        label = self.kind[2]
        return {"labelSelector": label} if label else {}

    def accepts(self, obj: Obj) -> bool:
        """The label selector, checked client-side too."""
        label = self.kind[2]
        return not label or label in ((obj.get("metadata") or {}).get("labels") or {})


class KubernetesSource(MemorySource):
    """Backends from LLMDeployments and EndpointSlices, kept current by watches."""

    def __init__(
        self,
        namespaces: Iterable[str] = (),
        access: KubeAccess | None = None,
        *,
        watch_timeout_s: int = 300,
        sync_wait_s: float = 10.0,
    ) -> None:
        super().__init__()
        self._access = access
        self._watch_timeout_s = watch_timeout_s
        self._sync_wait_s = sync_wait_s
        scopes: list[str | None] = [*namespaces] or [None]
        self._scopes = [_Scope(kind, ns) for kind in (LLMD, SLICES) for ns in scopes]
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._scale_requested: dict[tuple[str, str], float] = {}

    @property
    def ready(self) -> bool:
        return all(scope.synced for scope in self._scopes)

    async def start(self) -> None:
        """Start the watches and wait (bounded) for the first complete view."""
        if self._access is None:
            self._access = in_cluster_access() or await kubeconfig_access()
        timeout = aiohttp.ClientTimeout(
            total=None, connect=10, sock_read=self._watch_timeout_s + 30
        )
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [asyncio.create_task(self._run(scope)) for scope in self._scopes]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._sync_wait_s):
                while not self.ready:
                    await self._wait_change()

    async def request_replica(self, backend: Backend) -> bool:
        """Raise `spec.replicas` from 0 to 1 through the scale subresource, as `kubectl scale`.

        Asked at most once per model every `SCALE_REQUEST_EVERY_S`; from then on the
        autoscaler, which sees the waiting requests in the gateways' metrics, owns the count.
        """
        key = (backend.namespace or "", backend.name)
        now = asyncio.get_running_loop().time()
        if backend.desired_replicas != 0:
            return False  # replicas are already asked for: one is starting
        if now - self._scale_requested.get(key, -SCALE_REQUEST_EVERY_S) < SCALE_REQUEST_EVERY_S:
            return False  # asked a moment ago; the watch has not shown it yet
        self._scale_requested[key] = now
        assert self._session is not None
        assert self._access is not None
        path = f"{LLMD[0]}/namespaces/{key[0]}/{LLMD[1]}/{key[1]}/scale"
        headers = {**self._access.headers(), "Content-Type": "application/merge-patch+json"}
        async with self._session.patch(
            self._access.base_url + path,
            data=orjson.dumps({"spec": {"replicas": 1}}),
            headers=headers,
            ssl=self._access.ssl_context if self._access.ssl_context is not None else True,
        ) as response:
            if response.status >= 300:
                text = (await response.text())[:200]
                log.warning("could not scale %s/%s up: %s %s", *key, response.status, text)
                return False
        log.info("asked for a first replica of %s/%s", *key, extra={"model": backend.model})
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _wait_change(self) -> None:
        await self._changed.wait()  # set by every `replace`

    def _rebuild(self) -> None:
        llmds = [o for s in self._scopes if s.kind is LLMD for o in s.objects.values()]
        slices = [o for s in self._scopes if s.kind is SLICES for o in s.objects.values()]
        self.replace(build_backends(llmds, slices))

    async def _run(self, scope: _Scope) -> None:
        backoff = 1.0
        while True:
            try:
                version = await self._list(scope)
                backoff = 1.0
                await self._watch(scope, version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: relist after a pause; never die
                log.warning(
                    "watch of %s failed: %r; relisting in %.0fs", scope.path(), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _get(self, scope: _Scope, params: dict[str, str]) -> aiohttp.ClientResponse:
        assert self._session is not None
        assert self._access is not None
        response = await self._session.get(
            self._access.base_url + scope.path(),
            params={**scope.params(), **params},
            headers=self._access.headers(),
            ssl=self._access.ssl_context if self._access.ssl_context is not None else True,
        )
        if response.status != 200:
            text = await response.text()
            response.release()
            raise RuntimeError(f"GET {scope.path()}: {response.status} {text[:200]}")
        return response

    async def _list(self, scope: _Scope) -> str:
        response = await self._get(scope, {})
        async with response:
            body = orjson.loads(await response.read())
        items = [o for o in body.get("items") or () if scope.accepts(o)]
        scope.objects = {_identity(o): o for o in items}
        scope.synced = True
        self._rebuild()
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, scope: _Scope, version: str) -> None:
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._watch_timeout_s),
        }
        if version:
            params["resourceVersion"] = version
        response = await self._get(scope, params)
        async with response:
            async for event in _json_lines(response):
                self._apply(scope, event)

    def _apply(self, scope: _Scope, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # e.g. 410 Gone: the version is too old; relist
            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK
        key = _identity(obj)
        if kind == "DELETED" or not scope.accepts(obj):
            scope.objects.pop(key, None)
        else:
            scope.objects[key] = obj
        self._rebuild()


async def _json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[Obj]:
    """JSON objects, one per line, with no line-length limit (objects can be large)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield orjson.loads(line)
