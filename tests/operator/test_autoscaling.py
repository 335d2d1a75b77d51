"""The real operator's autoscaler against KMock, reading gateways that are real HTTP servers.

Each "gateway" is a tiny aiohttp server on loopback serving /metrics text the test controls,
published in an EndpointSlice of the configured gateway Service, as the cluster would. The
operator must scale through the scale subresource (KMock merges a scale patch into the object,
which is what the API server's scale subresource does to spec.replicas), write Events and
status.autoscaling, never scale down on missing data, and never right after it starts.
Waits are for conditions; the only time checks are lower bounds the rules imply.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from aiohttp import web
from relais_operator.settings import OperatorSettings

from tests.operator.conftest import LLMD_PATH, NS, STS_PATH, Api, Operator, eventually, llmd

SERVICE = "relais-gateway"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
EVENTS_PATH = f"/api/v1/namespaces/{NS}/events"
INTERVAL = 0.5
MODEL = "qwen2.5:0.5b"


def autoscaled(replicas: int, delay: int, model: str = MODEL) -> dict[str, Any]:
    return {
        "engine": "ollama",
        "model": model,
        "gpu": {"count": 0},
        "replicas": replicas,
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 4,
            "targetRequests": 2,
            "scaleDownDelaySeconds": delay,
        },
    }


class Gateway:
    """A stand-in gateway: /metrics with the two gauges for the models it is told about."""

    def __init__(self) -> None:
        self.inflight: dict[str, float] = {}
        self.waiting: dict[str, float] = {}
        self.broken = False
        self.scrapes = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        del request
        self.scrapes += 1
        if self.broken:
            return web.Response(status=503, text="down")
        lines = ["# TYPE relais_gateway_model_inflight_requests gauge"]
        lines += [
            f'relais_gateway_model_inflight_requests{{model="{m}"}} {v}'
            for m, v in self.inflight.items()
        ]
        lines.append("# TYPE relais_gateway_waiting_requests gauge")
        lines += [
            f'relais_gateway_waiting_requests{{model="{m}"}} {v}' for m, v in self.waiting.items()
        ]
        lines.append("# TYPE relais_gateway_requests counter")
        lines.append('relais_gateway_requests{route="chat",model="x",status="200"} 5')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def scraped(self, times: int) -> None:
        """Wait until the operator has read this gateway `times` more times."""
        target = self.scrapes + times

        async def check() -> bool:
            return self.scrapes >= target

        await eventually(check, what=f"{times} scrapes")


def endpoint_slice(name: str, port: int, service: str = SERVICE) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


@pytest.fixture
async def gateways(api: Api, server: kmock.KubernetesEmulator) -> AsyncIterator[list[Gateway]]:
    """Two gateway replicas in the Service's EndpointSlices (and a slice of another Service)."""
    server.resources["discovery.k8s.io/v1/endpointslices"] = kmock.ResourceInfo(
        kind="EndpointSlice", namespaced=True, verbs={"get", "list", "watch", "create"}
    )
    found = [Gateway(), Gateway()]
    for gateway in found:
        await gateway.start()
    await api.create(SLICES_PATH, endpoint_slice(f"{SERVICE}-a", found[0].port))
    await api.create(SLICES_PATH, endpoint_slice(f"{SERVICE}-b", found[1].port))
    await api.create(SLICES_PATH, endpoint_slice("other-x", 9, service="other"))  # unreachable
    try:
        yield found
    finally:
        for gateway in found:
            await gateway.stop()


SETTINGS = OperatorSettings(
    liveness_port=0, gateway_service=f"{NS}/{SERVICE}", autoscale_interval_s=INTERVAL
)


@pytest.fixture
async def scaler(kubeconfig: pathlib.Path) -> AsyncIterator[Operator]:
    del kubeconfig
    runner = Operator(SETTINGS)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def _resource(api: Api, name: str) -> dict[str, Any]:
    return await api.get(f"{LLMD_PATH}/{name}") or {}


async def _replicas_become(api: Api, name: str, replicas: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await _resource(api, name)
        return body if body.get("spec", {}).get("replicas") == replicas else None

    found: dict[str, Any] = await eventually(check, what=f"{name} at {replicas} replicas")
    return found


async def _events(api: Api, reason: str) -> list[dict[str, Any]]:
    listed = await api.get(EVENTS_PATH) or {}
    return [event for event in listed.get("items", []) if event.get("reason") == reason]


def _scale_patches(api: Api, name: str) -> list[tuple[str, str]]:
    return [write for write in api.writes() if write == ("PATCH", f"{LLMD_PATH}/{name}/scale")]


async def test_demand_scales_up_then_to_zero_after_the_delay(
    api: Api, gateways: list[Gateway], scaler: Operator
) -> None:
    del scaler
    delay = 2
    await api.create(LLMD_PATH, llmd("qwen", autoscaled(replicas=0, delay=delay)))
    first, second = gateways
    first.inflight[MODEL] = 3
    second.waiting[MODEL] = 2  # 5 requests over both gateways, 2 per replica -> 3 replicas
    first.inflight["not-ours"] = 50

    body = await _replicas_become(api, "qwen", 3)
    assert _scale_patches(api, "qwen"), "spec.replicas must be written through /scale"

    async def sts_follows() -> bool:
        sts = await api.get(f"{STS_PATH}/qwen") or {}
        return bool(sts.get("spec", {}).get("replicas") == 3)

    await eventually(sts_follows, what="the StatefulSet at 3 replicas")

    async def shown() -> dict[str, Any] | None:
        view = ((await _resource(api, "qwen")).get("status") or {}).get("autoscaling") or {}
        return view if view.get("desiredReplicas") == 3 and view.get("demand") == 5 else None

    view = await eventually(shown, what="status.autoscaling at 3 replicas, demand 5")
    assert view["lastScaleTime"]
    up = await eventually(lambda: _events(api, "ScaledUp"), what="a ScaledUp Event")
    assert up[0]["involvedObject"]["name"] == "qwen"
    assert up[0]["involvedObject"]["uid"] == body["metadata"]["uid"]
    assert "0 -> 3 replicas" in up[0]["message"]

    loop = asyncio.get_running_loop()
    quiet_from = loop.time()
    first.inflight[MODEL] = 0
    second.waiting[MODEL] = 0
    await _replicas_become(api, "qwen", 0)
    # A lower bound the rule implies (a slow machine only makes it later): the last tick that
    # still saw demand is at most one interval before the switch.
    assert loop.time() - quiet_from >= delay - INTERVAL
    down = await eventually(lambda: _events(api, "ScaledDown"), what="a ScaledDown Event")
    assert any(event["message"].startswith("3 -> ") for event in down)  # maybe 3 -> 1 -> 0

    async def scaled_to_zero() -> bool:
        status = (await _resource(api, "qwen")).get("status") or {}
        view = status.get("autoscaling") or {}
        return status.get("phase") == "ScaledToZero" and view.get("desiredReplicas") == 0

    await eventually(scaled_to_zero, what="phase ScaledToZero")


async def test_an_unreadable_gateway_never_scales_down(
    api: Api, gateways: list[Gateway], scaler: Operator
) -> None:
    del scaler
    first, second = gateways
    first.broken = True
    await api.create(LLMD_PATH, llmd("qwen", autoscaled(replicas=2, delay=1)))
    await first.scraped(3)  # the autoscaler looks at the resource from here on
    await second.scraped(8)  # 8 ticks of zero demand from the readable half: > 3 delays

    body = await _resource(api, "qwen")
    assert body["spec"]["replicas"] == 2
    assert not _scale_patches(api, "qwen")
    view = (body.get("status") or {}).get("autoscaling") or {}
    assert view.get("desiredReplicas") == 2
    assert view.get("demand") == 0

    second.waiting[MODEL] = 9  # what can be read still scales up: 9 / 2 -> 5, capped at 4
    await _replicas_become(api, "qwen", 4)
    second.waiting[MODEL] = 0
    first.broken = False  # data complete again: now the delay may pass and scale it down
    await _replicas_become(api, "qwen", 0)


async def test_a_restart_does_not_scale_down_right_after_it_starts(
    api: Api, gateways: list[Gateway], kubeconfig: pathlib.Path
) -> None:
    del kubeconfig
    delay = 3
    first = gateways[0]
    first.broken = True  # the first operator sees missing data only: it holds at 2
    await api.create(LLMD_PATH, llmd("qwen", autoscaled(replicas=2, delay=delay)))
    before = Operator(SETTINGS)
    await before.start()
    try:
        await first.scraped(int(2 * delay / INTERVAL))  # the resource idle for over the delay
    finally:
        await before.stop()
    assert (await _resource(api, "qwen"))["spec"]["replicas"] == 2

    first.broken = False
    loop = asyncio.get_running_loop()
    started = loop.time()  # taken before the operator's own start: a lower bound stays one
    after = Operator(SETTINGS)
    await after.start()
    try:
        await _replicas_become(api, "qwen", 0)
        assert loop.time() - started >= delay  # not one scale-down within the delay of a start
    finally:
        await after.stop()
    assert len(_scale_patches(api, "qwen")) == 1  # no flap: one write, 2 -> 0


async def test_without_autoscaling_replicas_are_left_alone(
    api: Api, gateways: list[Gateway], scaler: Operator
) -> None:
    del scaler
    spec = autoscaled(replicas=1, delay=0)
    del spec["autoscaling"]
    await api.create(LLMD_PATH, llmd("fixed", spec))
    gateways[0].inflight[MODEL] = 40

    async def reconciled() -> bool:
        status = (await _resource(api, "fixed")).get("status") or {}
        return bool(status.get("phase"))

    await eventually(reconciled, what="the resource reconciled")
    await asyncio.sleep(5 * INTERVAL)  # a handful of ticks; nothing may happen in any of them
    body = await _resource(api, "fixed")
    assert body["spec"]["replicas"] == 1
    assert "autoscaling" not in (body.get("status") or {})
    assert not _scale_patches(api, "fixed")
    assert gateways[0].scrapes == 0
