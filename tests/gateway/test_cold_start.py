"""Requests for a model scaled to zero wait for a replica instead of failing (issue #8).

The gateway's Kubernetes source against KMock: the gateway asks for a first replica through the
LLMDeployment's scale subresource, and the test plays the operator and the EndpointSlice
controller by publishing the replica once it "started". End-to-end runs with the real operator
are in tests/sim.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import kmock
import openai
import pytest
from relais_gateway.routing.kubernetes import KubeAccess, KubernetesSource

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import VERBS, GatewayFactory, GatewayServer
from tests.gateway.test_kubernetes import LLMD, SLICES, api, endpoint_slice, eventually, llmd

AUTOSCALED: dict[str, Any] = {"replicas": 0, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
CHAT: dict[str, Any] = {"model": "qwen:latest", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources["relais.dev/v1alpha1/llmdeployments"] = kmock.ResourceInfo(
        kind="LLMDeployment", namespaced=True, verbs=VERBS, subresources={"status", "scale"}
    )
    kmock.resources["discovery.k8s.io/v1/endpointslices"] = kmock.ResourceInfo(
        kind="EndpointSlice", namespaced=True, verbs=VERBS
    )
    return kmock


async def _gateway(
    cluster: kmock.KubernetesEmulator, start_gateway: GatewayFactory, **settings: Any
) -> GatewayServer:
    await api(cluster, "POST", LLMD.format(ns="models"), llmd("qwen", **AUTOSCALED))
    source = KubernetesSource(["models"], KubeAccess(str(cluster.url).rstrip("/")))
    return await asyncio.to_thread(start_gateway, source=source, **settings)


def _scale_patches(cluster: kmock.KubernetesEmulator) -> list[Any]:
    return [
        request.data
        for request in cluster
        if str(request.method.value).upper() == "PATCH" and request.subresource == "scale"
    ]


async def test_a_cold_start_waits_then_streams(
    cluster: kmock.KubernetesEmulator, start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    server = await _gateway(cluster, start_gateway)
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60
    ) as client:
        waiting = [asyncio.create_task(client.chat.completions.create(**CHAT)) for _ in range(5)]
        await eventually(lambda: server.gateway.admission.waiting.get("qwen:latest") == 5)
        assert _scale_patches(cluster) == [{"spec": {"replicas": 1}}]  # asked once, at once
        metrics = (await asyncio.to_thread(httpx.get, server.url + "/metrics")).text
        assert 'relais_gateway_waiting_requests{model="qwen:latest"} 5.0' in metrics
        assert 'relais_gateway_cold_starts_total{model="qwen:latest"} 1.0' in metrics
        assert not ollama_engine.requests_sync()
        # The replica "started": the EndpointSlice controller publishes it.
        await api(
            cluster,
            "POST",
            SLICES.format(ns="models"),
            endpoint_slice("qwen-1", "qwen", ollama_engine.url),
        )
        answers = await asyncio.gather(*waiting)
    assert all(a.choices[0].message.content for a in answers)
    assert server.gateway.admission.waiting["qwen:latest"] == 0


@pytest.mark.parametrize(
    ("settings", "why"),
    [({"cold_start_timeout_s": 0.3}, "became ready within"), ({"max_waiting_requests": 0}, "wait")],
)
async def test_past_the_bounds_503_with_retry_after(
    cluster: kmock.KubernetesEmulator,
    start_gateway: GatewayFactory,
    settings: dict[str, Any],
    why: str,
) -> None:
    server = await _gateway(cluster, start_gateway, **settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert why in response.json()["error"]["message"]
        ollama_style = await http.post("/api/chat", json=CHAT)
        assert ollama_style.status_code == 503
        assert set(ollama_style.json()) == {"error"}


async def test_a_client_that_leaves_while_waiting_never_reaches_an_engine(
    cluster: kmock.KubernetesEmulator, start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    server = await _gateway(cluster, start_gateway)
    async with httpx.AsyncClient(base_url=server.url) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json=CHAT, timeout=0.5)
    await eventually(lambda: server.gateway.admission.waiting.get("qwen:latest") == 0)
    await api(
        cluster, "POST", SLICES.format(ns="models"), endpoint_slice("q", "qwen", ollama_engine.url)
    )
    await eventually(lambda: bool(server.gateway.source.resolve("qwen:latest").replicas))  # type: ignore[union-attr]
    assert not ollama_engine.requests_sync()


async def test_without_autoscaling_no_replica_is_still_an_immediate_503(
    cluster: kmock.KubernetesEmulator, start_gateway: GatewayFactory
) -> None:
    await api(cluster, "POST", LLMD.format(ns="models"), llmd("fixed", replicas=0))
    source = KubernetesSource(["models"], KubeAccess(str(cluster.url).rstrip("/")))
    server = await asyncio.to_thread(start_gateway, source=source)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        body = {**CHAT, "model": "fixed:latest"}
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 503
    assert not _scale_patches(cluster)
