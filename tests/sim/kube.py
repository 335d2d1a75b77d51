"""The simulator's own API client: plain JSON over aiohttp to the simulated cluster's API server.

Used by the kubelet/EndpointSlice simulation and by SimCluster's kubectl-like helpers. It sends
what a real client sends (merge patches, JSON patches, DELETE with a body-less default), and
turns a non-2xx answer into `ApiError` with the server's message.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

Obj = dict[str, Any]
USER_AGENT = "relais-sim"


class ApiError(RuntimeError):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


def path(api_version: str, plural: str, namespace: str | None = None, name: str = "") -> str:
    """`path("apps/v1", "statefulsets", "default", "x")` -> /apis/apps/v1/namespaces/default/..."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{where}/{plural}" + (f"/{name}" if name else "")


LLMDEPLOYMENTS = ("relais.dev/v1alpha1", "llmdeployments")
STATEFULSETS = ("apps/v1", "statefulsets")
SERVICES = ("v1", "services")
PODS = ("v1", "pods")
SLICES = ("discovery.k8s.io/v1", "endpointslices")
CLAIMS = ("v1", "persistentvolumeclaims")
CONFIGMAPS = ("v1", "configmaps")


class Api:
    """GET/LIST/POST/PATCH/DELETE against one API server URL, one pooled session."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def _request(
        self, method: str, where: str, body: Any = None, content_type: str = "application/json"
    ) -> Obj:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=30)
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            self._session = aiohttp.ClientSession(timeout=timeout, headers=headers)
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(
            method, self.base_url + where, data=data, headers=headers
        ) as response:
            text = await response.text()
            payload = json.loads(text) if text.strip() else {}
            if response.status >= 300:
                message = payload.get("message", text) if isinstance(payload, dict) else text
                raise ApiError(response.status, method, where, str(message)[:500])
            return dict(payload) if isinstance(payload, dict) else {}

    async def list(self, kind: tuple[str, str], namespace: str | None = None) -> list[Obj]:
        items = (await self._request("GET", path(*kind, namespace))).get("items") or []
        return [dict(item) for item in items]

    async def get(self, kind: tuple[str, str], namespace: str | None, name: str) -> Obj | None:
        try:
            return await self._request("GET", path(*kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, kind: tuple[str, str], body: Obj) -> Obj:
        namespace = (body.get("metadata") or {}).get("namespace")
        return await self._request("POST", path(*kind, namespace), body)

    async def merge_patch(
        self, kind: tuple[str, str], namespace: str | None, name: str, body: Obj, sub: str = ""
    ) -> Obj:
        where = path(*kind, namespace, name) + (f"/{sub}" if sub else "")
        return await self._request("PATCH", where, body, "application/merge-patch+json")

    async def delete(self, kind: tuple[str, str], namespace: str | None, name: str) -> bool:
        """DELETE; False when it was already gone."""
        try:
            await self._request("DELETE", path(*kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def raw(self, method: str, where: str, body: Any = None, content_type: str = "") -> Obj:
        """Any request, for what the helpers above do not cover (the scale subresource)."""
        return await self._request(method, where, body, content_type or "application/json")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
