"""KMock, made to answer writes the way a real API server does, for the tests and the benchmark.

KMock stores objects as given. A real API server also stamps every write with a new
`metadata.resourceVersion`, gives created objects a `uid` and `generation: 1`, and bumps
`generation` when a spec changes; kopf relies on resourceVersions to tell fresh events from
stale ones. `FaithfulKMock` adds exactly that. `python -m tests.operator.kmock_server --port P`
serves it as a standalone process (the benchmark runs the operator against it).
The `scale` subresource of our CRD answers with a Scale, as a real server's (`kmock_scale`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import uuid
from typing import Any

import aiohttp.web
import attrs
import kmock

from tests.operator import kmock_scale

_VERSIONS = itertools.count(1000)
RESOURCES = {
    "relais.dev/v1alpha1/llmdeployments": ("LLMDeployment", True, {"status", "scale"}),
    "apps/v1/statefulsets": ("StatefulSet", True, {"status", "scale"}),
    "v1/services": ("Service", True, {"status"}),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True, {"status"}),
    "v1/pods": ("Pod", True, {"status"}),
    "batch/v1/jobs": ("Job", True, {"status"}),
    "v1/configmaps": ("ConfigMap", True, set()),
    "v1/events": ("Event", True, set()),
    "v1/namespaces": ("Namespace", False, {"status"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, set()),
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
WRITES = {"POST", "PATCH", "PUT", "DELETE"}


def declare_resources(server: kmock.KubernetesEmulator) -> None:
    """Discovery for every resource the operator reads or writes (kopf needs namespaces too)."""
    for key, (kind, namespaced, subresources) in RESOURCES.items():
        server.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subresources
        )


def _sees(view: Any, request: kmock.Request) -> bool:
    """Whether a reaction's view would list `request` (KMock's own check re-scans the whole log)."""
    if isinstance(view, kmock.Root):
        return True  # the request was just appended to the root's log
    if type(view) is kmock.Filter:
        return _sees(view._source, request) and bool(view.criteria(request))
    if type(view) is kmock.Priority:
        return _sees(view._source, request)
    return request in view  # any other view: the library's exact (slow) check


class _FastMatch(kmock.RawHandler):
    """RawHandler's reaction lookup in O(reactions) per request instead of O(request log).

    KMock decides whether a reaction applies with `request in view`, which re-filters every
    request served so far: quadratic, minutes at a few thousand requests. Same semantics for
    the plain filter/priority views every reaction here uses; anything else falls back.
    """

    async def _handle(self, request: kmock.Request) -> Any:
        priorities = [payload.priorities for payload in self._payloads]
        width = max((len(priority) for priority in priorities), default=0)
        keys = [tuple(-p for p in prio) + (0,) * (width - len(prio)) for prio in priorities]
        order = sorted(range(len(keys)), key=lambda index: keys[index])
        for payload in (self._payloads[index] for index in order):
            if _sees(payload._source, request) and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except kmock.ReactionMismatchError:  # type: ignore[attr-defined]
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError("no reaction matches the request")


_SCAN = kmock.KubernetesEmulator._KubernetesEmulator__get_objs  # type: ignore[attr-defined]


class FaithfulKMock(kmock.KubernetesEmulator, _FastMatch):
    """KubernetesEmulator + resourceVersion/uid/generation stamping on writes + CRD scale."""

    async def _handle(self, request: kmock.Request) -> Any:
        self._count(request)
        resource = request.resource
        if request.subresource == "scale" and resource is not None and request.name:
            paths = kmock_scale.SCALES.get(f"{resource.group}/{resource.version}/{resource.plural}")
            if paths is not None:
                return await self._serve_scale(request, paths)
        return await self._serve(request)

    async def _serve(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict | list):
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self._stamp_create(request.data)
            elif request.action == kmock.action.UPDATE:
                self._stamp_patch(request)
        return await super()._handle(request)

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        """A named object by its key (KMock scans every object for every GET and PATCH)."""
        named = request.name is not None and request.resource is not None
        if named and (strict or request.namespace is not None):
            assert request.resource is not None
            assert request.name is not None
            key = (request.resource, request.namespace, request.name)
            found = self.objects._objects.get(key)
            return [found] if found is not None else []
        return list(_SCAN(self, request, strict))

    def _count(self, request: kmock.Request) -> None:
        """Tally requests by client and kind: `traffic()` reads this, not the (huge) log."""
        counts: dict[tuple[str, str], int] = self.__dict__.setdefault("tally", {})
        agent = request.headers.get("User-Agent", "")
        method = str(request.method.value).upper()
        keys = [method]
        if method in WRITES and request.resource is not None:
            sub = f"/{request.subresource}" if request.subresource else ""
            keys.append(f"{method} {request.resource.plural}{sub}")
        for key in keys:
            counts[agent, key] = counts.get((agent, key), 0) + 1

    @staticmethod
    def _stamp_create(body: dict[str, Any]) -> None:
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(next(_VERSIONS))

    def _stamp_patch(self, request: kmock.Request) -> None:
        version = str(next(_VERSIONS))
        touches_spec = request.subresource in (None, "scale") and _touches_spec(request.data)
        generation = None
        if touches_spec:
            assert request.resource is not None
            assert request.name is not None
            key = (request.resource, request.namespace, request.name)
            current: Any = self.objects[key] if key in self.objects else {}  # noqa: SIM401
            generation = int(current.get("metadata", {}).get("generation") or 0) + 1
        if isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            if generation is not None:
                meta["generation"] = generation
        else:
            request.data.append(
                {"op": "add", "path": "/metadata/resourceVersion", "value": version}
            )
            if generation is not None:
                request.data.append(
                    {"op": "add", "path": "/metadata/generation", "value": generation}
                )

    async def _serve_scale(self, request: kmock.Request, paths: kmock_scale.ScalePaths) -> Any:
        """GET or PATCH a Scale; a PATCH writes the resource's replicas like any spec patch."""
        assert request.resource is not None
        assert request.name is not None
        key = (request.resource, request.namespace, request.name)
        method = str(request.method.value).upper()
        if key not in self.objects or self.objects[key].deleted:
            return _failure(
                404, "NotFound", f"{request.resource.plural} {request.name!r} not found"
            )
        scale = kmock_scale.to_scale(self.objects[key].raw, paths)
        if method == "PATCH":
            try:
                replicas = kmock_scale.patched_replicas(
                    scale, request.data, request.headers.get("Content-Type")
                )
            except ValueError as exc:
                return _failure(422, "Invalid", f"Scale {request.name!r} is invalid: {exc}")
            patch = kmock_scale.nested(paths.spec, replicas)
            await self._serve(attrs.evolve(request, subresource=None, data=patch))
            scale = kmock_scale.to_scale(self.objects[key].raw, paths)
        elif method != "GET":
            return _failure(405, "MethodNotAllowed", f"{method} of a Scale is not served here")
        return aiohttp.web.json_response(scale)


def _failure(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(kmock_scale.status_error(code, reason, message), status=code)


def _touches_spec(patch: Any) -> bool:
    if isinstance(patch, dict):
        return "spec" in patch
    return any(str(op.get("path", "")).startswith("/spec") for op in patch)


def traffic(server: FaithfulKMock, ignore_agent: str) -> dict[str, int]:
    """Requests so far by method (and writes by resource), except those of `ignore_agent`."""
    counts: dict[str, int] = {}
    tally: dict[tuple[str, str], int] = server.__dict__.get("tally", {})
    for (agent, key), count in tally.items():
        if not agent.startswith((ignore_agent, "kmock/")):
            counts[key] = counts.get(key, 0) + count
    return counts


async def serve(port: int) -> None:
    async with FaithfulKMock() as server, kmock.Server(server, port=port):
        declare_resources(server)
        # The benchmark asks here how many requests the operator made (its own are left out).
        server["get /_stats"] << (lambda request: traffic(server, "relais-bench"))
        print(f"kmock listening on {server.url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
