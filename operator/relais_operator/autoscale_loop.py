"""The autoscaler's loop: one task for the whole operator, started and stopped by the handlers.

Every `autoscale_interval_s` seconds it takes the LLMDeployments with `spec.autoscaling` from
kopf's index, lists the EndpointSlices of the gateway Service (RELAIS_OPERATOR_GATEWAY_SERVICE),
reads every ready gateway's /metrics once and concurrently, and sums each served model's
in-flight and waiting requests. For each autoscaled resource `autoscale.Recommender` decides;
a change of replicas is written through the scale subresource (conditional on the
resourceVersion read, so a concurrent write, e.g. the gateway waking a model up, wins and this
tick is skipped), with an Event saying why. What the autoscaler sees goes to
`status.autoscaling` through the handlers' one status writer (`publish`).

Decisions live in autoscale.py; API calls in kube.py; the gateway scrape (no API token: a
separate session) is `scrape()` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from relais_operator import autoscale, metrics, status
from relais_operator.kube import ApiError, Kube
from relais_operator.settings import OperatorSettings
from relais_operator.spec import InvalidSpecError, LLMDeployment

log = logging.getLogger(__name__)

Key = tuple[str, str]
Publish = Callable[[Key], Awaitable[None]]


@dataclass(frozen=True)
class Scrape:
    """One tick's reading of the gateways: demand per served model, and whether it is whole."""

    demand: Mapping[str, float]
    complete: bool


async def scrape(session: aiohttp.ClientSession, urls: Sequence[str]) -> Scrape:
    """GET every gateway's /metrics at once; one that fails makes the reading incomplete."""
    results = await asyncio.gather(*(_read(session, url) for url in urls))
    pages = [page for page in results if page is not None]
    complete = bool(urls) and len(pages) == len(urls)  # no gateway at all: no data either
    return Scrape(autoscale.total_demand(pages), complete)


async def _read(session: aiohttp.ClientSession, url: str) -> dict[str, float] | None:
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                raise autoscale.MetricsError(f"HTTP {resp.status}")
            return autoscale.parse_demand(await resp.text())
    except (aiohttp.ClientError, TimeoutError, autoscale.MetricsError) as exc:
        log.warning("autoscaler: cannot read %s (%s); no scale-down this tick", url, exc)
        metrics.GATEWAY_READ_FAILURES.inc()
        return None


@dataclass(frozen=True)
class Autoscaled:
    """An LLMDeployment with spec.autoscaling, as the index holds it this tick."""

    key: Key
    body: Mapping[str, Any]
    llm: LLMDeployment
    policy: autoscale.Policy


def autoscaled(bodies: Iterable[Mapping[str, Any]]) -> list[Autoscaled]:
    """The valid, live resources that ask for autoscaling, in namespace/name order."""
    found = []
    for body in bodies:
        if not (body.get("spec") or {}).get("autoscaling"):
            continue  # most resources: no need to parse them
        if body.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            llm = LLMDeployment.from_body(body)
        except InvalidSpecError:
            continue  # reconcile reports it
        if llm.spec.autoscaling is not None:
            policy = autoscale.Policy.of(llm.spec.autoscaling)
            found.append(Autoscaled((llm.namespace, llm.name), body, llm, policy))
    return sorted(found, key=lambda item: item.key)


def demand_of(targets: Sequence[Autoscaled], demand: Mapping[str, float]) -> dict[Key, float]:
    """Each resource's demand by its served model name; two serving one name: the first gets it
    (namespace/name order, as the gateway routes), the other reads none."""
    result: dict[Key, float] = {}
    taken: set[str] = set()
    for target in targets:
        model = target.llm.spec.effective_served_model_name
        result[target.key] = demand.get(model, 0.0) if model not in taken else 0.0
        taken.add(model)
    return result


class Autoscaler:
    """The loop's state: a Recommender per autoscaled resource, and what status shows."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        index: Mapping[Key, Iterable[Mapping[str, Any]]],
        publish: Publish,
        views: MutableMapping[Key, dict[str, Any]],
    ) -> None:
        assert settings.gateway is not None, "the autoscaler needs the gateway Service"
        self._gateway = settings.gateway
        self._interval = settings.autoscale_interval_s
        self._kube, self._index, self._publish, self._views = kube, index, publish, views
        self._recommenders: dict[Key, autoscale.Recommender] = {}
        # The resourceVersion each resource had when we last scaled it: while the index still
        # shows that version, our write has not come back through the watch yet.
        self._scaled_from: dict[Key, str] = {}
        self._no_gateway = False
        self._clock = asyncio.get_running_loop().time
        self.started_at = self._clock()

    async def run(self) -> None:
        """Tick until cancelled; a failed tick is logged and the next one tries again."""
        timeout = aiohttp.ClientTimeout(total=min(2.0, self._interval))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.tick(session)
                except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("autoscaler: tick failed: %r", exc)
                except Exception:  # a bug must not stop autoscaling for good: log, go on
                    log.exception("autoscaler: tick failed")
                await asyncio.sleep(self._interval)

    async def tick(self, session: aiohttp.ClientSession) -> None:
        """One reading of the gateways, one decision (and maybe one write) per resource."""
        bodies = [body for store in list(self._index.values()) for body in list(store)]
        targets = autoscaled(bodies)
        self._forget({target.key for target in targets})
        if not targets:
            return
        reading = await self._read_gateways(session)
        demand = demand_of(targets, reading.demand)
        for target in targets:
            try:
                await self._scale(target, demand[target.key], reading.complete)
            except (
                ApiError,
                aiohttp.ClientError,
                TimeoutError,
            ) as exc:  # e.g. RBAC: the others go on
                log.warning("autoscaler: cannot scale %s/%s: %r", *target.key, exc)

    async def _read_gateways(self, session: aiohttp.ClientSession) -> Scrape:
        namespace, service = self._gateway
        try:
            slices = await self._kube.endpoint_slices(namespace, service)
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("autoscaler: cannot list the gateway's endpoints: %r", exc)
            return Scrape({}, complete=False)
        urls = autoscale.gateway_urls(slices, namespace, service)
        if not urls and not self._no_gateway:  # said once, not every tick
            log.warning("autoscaler: gateway %s/%s has no ready endpoint", namespace, service)
        self._no_gateway = not urls
        metrics.GATEWAYS.set(len(urls))
        return await scrape(session, urls)

    def _forget(self, keys: set[Key]) -> None:
        for key in set(self._recommenders) - keys:
            del self._recommenders[key]
            self._views.pop(key, None)
            self._scaled_from.pop(key, None)
            metrics.forget(key)

    def _recommender(self, key: Key) -> autoscale.Recommender:
        if key not in self._recommenders:
            window = (autoscale.WINDOW_INTERVALS - 0.5) * self._interval  # jitter-proof
            self._recommenders[key] = autoscale.Recommender(self._clock(), window)
        return self._recommenders[key]

    async def _scale(self, target: Autoscaled, demand: float, complete: bool) -> None:
        if self._scaled_from.get(target.key) == _version(target.body):
            return  # the index has not seen our last write yet: decide on the next tick
        current = target.llm.spec.replicas
        decision = self._recommender(target.key).update(
            target.policy,
            current,
            demand,
            complete=complete,
            now=self._clock(),
            started_at=self.started_at,
        )
        metrics.autoscaled(target.key, current, decision.desired, decision.demand)
        view = self._views.get(target.key) or _shown(target.body)
        if decision.changes:
            if not await self._write(target, decision):
                return  # someone else wrote first; next tick decides again from their value
            view = {**view, "lastScaleTime": status.now()}
        self._views[target.key] = {
            **view,
            "demand": round(decision.demand, 2),
            "desiredReplicas": decision.desired,
        }
        await self._publish(target.key)

    async def _write(self, target: Autoscaled, decision: autoscale.Decision) -> bool:
        namespace, name = target.key
        version = _version(target.body)
        if not await self._kube.scale(namespace, name, decision.desired, version):
            log.info("autoscaler: %s/%s changed meanwhile; not scaled this tick", namespace, name)
            return False
        self._scaled_from[target.key] = version
        up = decision.desired > decision.current
        metrics.scaled(target.key, up=up)
        message = f"{decision.current} -> {decision.desired} replicas: {decision.reason}"
        log.info("autoscaler: %s/%s %s", namespace, name, message)
        with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
            await self._kube.post_event(target.body, "ScaledUp" if up else "ScaledDown", message)
        return True


def _version(body: Mapping[str, Any]) -> str:
    return str(body.get("metadata", {}).get("resourceVersion") or "")


def _shown(body: Mapping[str, Any]) -> dict[str, Any]:
    """status.autoscaling as the resource shows it (after a restart: its lastScaleTime stays)."""
    shown = (body.get("status") or {}).get("autoscaling") or {}
    return {"lastScaleTime": shown["lastScaleTime"]} if shown.get("lastScaleTime") else {}


def start(
    settings: OperatorSettings,
    kube: Kube,
    index: Mapping[Key, Iterable[Mapping[str, Any]]],
    publish: Publish,
    views: MutableMapping[Key, dict[str, Any]],
) -> asyncio.Task[None] | None:
    """The loop's task, or None (logged) when no gateway Service is configured."""
    if settings.gateway is None:
        log.info(
            "autoscaler off: RELAIS_OPERATOR_GATEWAY_SERVICE is not set; LLMDeployments with"
            " spec.autoscaling keep their spec.replicas"
        )
        return None
    autoscaler = Autoscaler(settings, kube, index, publish, views)
    every = settings.autoscale_interval_s
    log.info("autoscaler on: gateway %s, every %gs", settings.gateway_service, every)
    return asyncio.create_task(autoscaler.run(), name="relais-autoscaler")
