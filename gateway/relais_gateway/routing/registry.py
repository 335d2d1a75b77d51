"""Where backends come from: the `BackendSource` Protocol and the static-file source.

The app only calls `resolve`, `backends` and `ready`; the Kubernetes watch source lives in
`kubernetes.py` and produces the same `Backend` values. In Kubernetes, EndpointSlices say which
replicas are ready; a static file has no such truth, so its source checks each endpoint's health
route itself and serves only the endpoints that answer (an engine loading its model for minutes,
or dead, gets no requests: they wait for it, bounded, as for a cold start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import aiohttp
from relais_api import RequestLimits, Routing, Task

from relais_gateway.config import StaticDeployment
from relais_gateway.routing.balancer import LEAST_LOAD
from relais_gateway.routing.engines import ENGINES, Engine

NO_LIMITS = RequestLimits()
log = logging.getLogger("relais_gateway.routing.registry")


@dataclass(frozen=True, slots=True)
class Adapter:
    """A LoRA adapter declared on a deployment, by the name the engine serves it under.

    `state` and `message` come from the LLMDeployment's `status.adapters` (Kubernetes source):
    only `Failed` changes what the gateway does (503 with the message while no replica has it).
    """

    name: str
    state: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Backend:
    """One servable model: its engine, limits, routing and the base URLs of its ready replicas.

    A base deployment lists its `adapters`; `resolve` of an adapter's name (or its alias
    `<served>_<name>`) returns the base's backend seen through that adapter (`adapter_view`):
    `model` is the name the client sent, `adapter` the adapter, `parent` the base's served name.
    """

    name: str
    engine: str
    model: str
    """The served model name: what clients put in `model`."""
    engine_model: str = ""
    """What the engine itself calls the model (Ollama: the tag it pulled); default `model`."""
    replicas: tuple[str, ...] = ()
    limits: RequestLimits = NO_LIMITS
    task: Task | None = None
    """What the model serves where it serves one job: `generate` (chat, completions) or `embed`
    (embeddings, rerank, score); None: whatever its engine serves."""
    ollama_options: tuple[tuple[str, int | bool], ...] = ()
    """The deployment's Ollama runtime options, sent in place of any client's."""
    namespace: str | None = None
    routing: Routing = LEAST_LOAD
    autoscaled: bool = False
    """With no ready replica, requests wait for one (bounded): the LLMDeployment has
    `autoscaling`, or the endpoints are health-checked static ones that may come back."""
    desired_replicas: int | None = None
    """`spec.replicas` (Kubernetes source): 0 means a request must ask for a replica."""
    adapters: tuple[Adapter, ...] = ()
    """The deployment's routable LoRA adapters (clashing names left out)."""
    adapter: Adapter | None = None
    """Set on an adapter view: the adapter asked for (the engine gets its `name`)."""
    parent: str = ""
    """Set on an adapter view: the base deployment's served name."""
    pool: tuple[str, ...] = ()
    """Set on an adapter view once `replicas` are narrowed to those holding the adapter: all
    the deployment's ready replicas (adapter homes are spread over these)."""

    @property
    def max_tokens(self) -> int | None:
        return self.limits.max_tokens

    @property
    def max_concurrent(self) -> int | None:
        return self.limits.max_concurrent_requests

    @property
    def upstream_model(self) -> str:
        """The `model` to put in requests forwarded to the engine."""
        return self.engine_model or self.model

    @property
    def base_model(self) -> str:
        """The deployment's served name: what concurrency, waiting and autoscaling count by
        (an adapter's requests run on its base's replicas and slots)."""
        return self.parent or self.model

    @property
    def label(self) -> str:
        """The `model` label of metrics: the adapter's name for adapter requests (by either
        of its names), else the served name. Only declared names: clients invent none."""
        return self.adapter.name if self.adapter is not None else self.model

    @property
    def kind(self) -> Engine:
        """The engine's entry in the engine table."""
        return ENGINES[self.engine]


class BackendSource(Protocol):
    """A live view of the servable models."""

    @property
    def ready(self) -> bool:
        """True once the source has its first complete view (used by /readyz)."""
        ...

    def resolve(self, model: str) -> Backend | None:
        """The backend serving `model`, or None when no deployment serves that name.

        An adapter's name or alias resolves to its base seen through it (`adapter_view`)."""
        ...

    def backends(self) -> Sequence[Backend]:
        """Every known base backend, sorted by served model name (adapters: `.adapters`)."""
        ...

    async def wait_ready(self, model: str) -> Backend | None:
        """Wait until `model` has a ready replica; its backend then (None if it went away).

        Callers bound the wait; cancelling it is how a request stops waiting.
        """
        ...

    async def request_replica(self, backend: Backend) -> bool:
        """Ask for a first replica of a model scaled to zero; False when this source cannot."""
        ...

    async def start(self) -> None:
        """Begin tracking (a watch, a file read); called once from the app's lifespan."""
        ...

    async def stop(self) -> None:
        """Stop tracking; called once at shutdown."""
        ...


def check_engine(engine: str) -> None:
    """Raise ValueError for an engine name missing from the engine table."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(sorted(ENGINES))}")


def adapter_view(base: Backend, adapter: Adapter, asked: str) -> Backend:
    """`base` seen through `adapter`, for a request that named it `asked` (its name or alias).

    The engine is sent the adapter's name; answers name the model as the client did; the
    replicas are still the base's ready ones (which of them loaded it is `adapters.py`'s)."""
    return replace(base, model=asked, engine_model=adapter.name, adapter=adapter, parent=base.model)


def alias(base: str, adapter: str) -> str:
    """The other name of an adapter (KubeAI's convention): `<servedModelName>_<name>`."""
    return f"{base}_{adapter}"


class MemorySource:
    """A source holding backends in memory; the static and Kubernetes sources build on it."""

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self._by_model: dict[str, Backend] = {}
        self._adapters: dict[str, tuple[str, Adapter]] = {}
        self._clashes: set[str] = set()
        self._ready = False
        self._changed = asyncio.Event()
        self.replace(backends)

    @property
    def ready(self) -> bool:
        return self._ready

    def replace(self, backends: Iterable[Backend]) -> None:
        """Swap the whole view at once (one assignment each: readers never see a half update)."""
        by_model: dict[str, Backend] = {}
        for backend in backends:
            check_engine(backend.engine)
            by_model[backend.model] = backend
        self._by_model, self._adapters = self._index_adapters(by_model)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes the requests waiting for a replica

    def _index_adapters(
        self, bases: dict[str, Backend]
    ) -> tuple[dict[str, Backend], dict[str, tuple[str, Adapter]]]:
        """Every adapter name and alias -> (its base's served name, the adapter).

        A served model wins over an adapter of the same name, and the first deployment (by
        served name) over a later one's adapter: the loser is logged once and not routed.
        """
        names: dict[str, tuple[str, Adapter]] = {}
        clashes: set[str] = set()
        for model in sorted(bases):
            kept = []
            for adapter in bases[model].adapters:
                taken = adapter.name in bases or adapter.name in names
                if taken:
                    owner = "a served model" if adapter.name in bases else "another adapter"
                    clashes.add(f"adapter {adapter.name!r} of {model!r} has the name of {owner}")
                    continue
                names[adapter.name] = (model, adapter)
                kept.append(adapter)
            if len(kept) != len(bases[model].adapters):
                bases[model] = replace(bases[model], adapters=tuple(kept))
        for model, adapter in list(names.values()):
            other = alias(model, adapter.name)
            if other in bases or other in names:
                clashes.add(f"alias {other!r} of adapter {adapter.name!r} is taken")
            else:
                names[other] = (model, adapter)
        for clash in sorted(clashes - self._clashes):
            log.warning("%s; that name is not routed to the adapter", clash)
        self._clashes = clashes
        return bases, names

    async def wait_ready(self, model: str) -> Backend | None:
        while True:
            backend = self.resolve(model)
            if backend is None or backend.replicas:
                return backend
            await self._changed.wait()

    async def request_replica(self, backend: Backend) -> bool:
        del backend  # nothing to scale: the static file's endpoints are what there is
        return False

    def resolve(self, model: str) -> Backend | None:
        backend = self._by_model.get(model)
        if backend is not None:
            return backend
        found = self._adapters.get(model)
        if found is None:
            return None
        base = self._by_model.get(found[0])
        return adapter_view(base, found[1], model) if base is not None else None

    def backends(self) -> Sequence[Backend]:
        return sorted(self._by_model.values(), key=lambda b: b.model)

    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        self._ready = False


def backend_from_static(deployment: StaticDeployment) -> Backend:
    """A `Backend` from one entry of the static file, with every endpoint listed."""
    return Backend(
        name=deployment.name,
        engine=deployment.engine,
        model=deployment.servedModelName,
        engine_model=deployment.model or deployment.servedModelName,
        replicas=tuple(deployment.endpoints),
        limits=deployment.requestLimits,
        task=deployment.task,
        ollama_options=tuple(deployment.ollama_options().items()),
        routing=deployment.routing,
        adapters=tuple(Adapter(a.name) for a in deployment.adapters),
    )


class StaticSource(MemorySource):
    """Backends from the `--config` file's `deployments:`.

    With `health_interval_s` > 0, each endpoint's health route (the engine table's) is checked
    at that interval with a short timeout, and a backend's replicas are its endpoints that last
    answered 200; requests for a model with none wait for one. With 0, every endpoint counts as
    ready and a dead one is found by the requests themselves (retried and ejected).
    """

    def __init__(
        self,
        deployments: Iterable[StaticDeployment],
        *,
        health_interval_s: float = 5.0,
        health_timeout_s: float = 2.0,
    ) -> None:
        self._configured = [backend_from_static(d) for d in deployments]
        self._interval = health_interval_s
        self._timeout = health_timeout_s
        self._checks: asyncio.Task[None] | None = None
        self._healthy: set[str] | None = None
        super().__init__(self._configured)

    async def start(self) -> None:
        if self._interval > 0:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            session = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
            await self._check(session)  # ready with a first true view, not with a guess
            self._checks = asyncio.create_task(self._check_every_interval(session))
        await super().start()

    async def stop(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
        await super().stop()

    async def _check_every_interval(self, session: aiohttp.ClientSession) -> None:
        async with session:
            while True:
                await asyncio.sleep(self._interval)
                await self._check(session)

    async def _check(self, session: aiohttp.ClientSession) -> None:
        """Probe every endpoint at once; swap the view only when the healthy set changed."""
        probes = [(b, url) for b in self._configured for url in b.replicas]
        results = await asyncio.gather(
            *(_healthy(session, url + b.kind.health_path) for b, url in probes)
        )
        healthy = {url for (_, url), ok in zip(probes, results, strict=True) if ok}
        if healthy == self._healthy:
            return
        self._healthy = healthy
        self._publish()

    def _publish(self) -> None:
        """The configured backends with only their healthy endpoints (all without checks)."""
        healthy = self._healthy
        if healthy is None:
            self.replace(self._configured)
            return
        self.replace(
            # A model with endpoints may get a healthy one: its requests wait (bounded) for it.
            replace(b, replicas=tuple(u for u in b.replicas if u in healthy), autoscaled=True)
            if b.replicas
            else b
            for b in self._configured
        )

    def reconfigure(self, deployments: Iterable[StaticDeployment]) -> None:
        """Serve an edited file's deployments (adapters or endpoints added, removed); endpoints
        not checked yet count as unhealthy until the next check."""
        self._configured = [backend_from_static(d) for d in deployments]
        self._publish()


async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.debug("health check failed", extra={"url": url, "error": repr(exc)})
        return False
