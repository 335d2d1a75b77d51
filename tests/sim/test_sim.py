"""End to end on the simulated cluster: the real operator and gateways, fake engines on loopback.

Each test starts its own SimCluster (the `sim` fixture); waits are generous, never timed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.sim import world
from tests.sim.cluster import SimCluster, llmdeployment
from tests.sim.kube import CLAIMS, PODS, SERVICES, SLICES, STATEFULSETS

MODEL = "qwen2.5:0.5b"
NS = "default"


async def chat(url: str, model: str = MODEL) -> str:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    return answer.choices[0].message.content or ""


async def stream(url: str) -> tuple[str, str | None]:
    """A streamed chat: (all the text, the finish reason)."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        chunks = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "long"}], stream=True
        )
        text, finish = "", None
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    return text, finish


async def requests_by_engine(sim: SimCluster) -> dict[str, int]:
    return {url: stats["requests"] for url, stats in (await sim.engine_stats("qwen")).items()}


async def ready_qwen(sim: SimCluster, replicas: int = 1) -> dict[str, Any]:
    # LeastLoad: these tests watch requests spread over replicas (PrefixHash would keep sending
    # the tests' one prompt to one replica, which is its point).
    body = llmdeployment("qwen", MODEL, replicas=replicas, routing={"strategy": "LeastLoad"})
    await sim.apply(body)
    return await sim.wait_ready("qwen", replicas)


async def test_one_replica_becomes_ready_and_serves_through_a_gateway(sim: SimCluster) -> None:
    llmd = await ready_qwen(sim)
    assert llmd["status"]["phase"] == "Ready"
    pod = await sim.api.get(PODS, NS, "qwen-0")
    assert pod is not None
    assert pod["status"]["phase"] == "Running"
    assert world.labels(pod)[world.LABEL] == "qwen"
    [url] = sim.replicas("qwen")
    assert urlsplit(url).hostname == pod["status"]["podIP"]
    assert urlsplit(url).hostname.startswith("127.0.0.")  # type: ignore[union-attr]
    assert urlsplit(url).port == 11434  # the engine's own port
    statefulset = await sim.api.get(STATEFULSETS, NS, "qwen")
    assert statefulset is not None
    assert statefulset["status"]["readyReplicas"] == 1
    assert statefulset["status"]["observedGeneration"] == statefulset["metadata"]["generation"]
    scale = await sim.get_scale("qwen")
    assert scale["spec"] == {"replicas": 1}
    assert scale["status"] == {"replicas": 1, "selector": f"{world.LABEL}=qwen"}

    gateway = await sim.start_gateway()
    assert await chat(gateway)
    assert (await requests_by_engine(sim)) == {url: 1}
    # The fake serves the model the pod pulled, and only that one (like Ollama).
    with pytest.raises(openai.NotFoundError):
        await chat(url, model="other-model")


async def test_scale_up_then_down_drains_the_leaving_replica(sim: SimCluster) -> None:
    await ready_qwen(sim)
    gateway = await sim.start_gateway()
    scale = await sim.scale("qwen", 2)
    assert scale["spec"] == {"replicas": 2}
    await sim.wait_ready("qwen", 2)
    first, second = sim.replicas("qwen")
    eps = await sim.endpoint_slice("qwen")
    assert eps is not None
    assert len(eps["endpoints"]) == 2
    assert {e["targetRef"]["name"] for e in eps["endpoints"]} == {"qwen-0", "qwen-1"}

    async def both_used() -> bool:
        await chat(gateway)
        return all(count > 0 for count in (await requests_by_engine(sim)).values())

    await sim.wait_for(both_used, "requests on both replicas")

    # Slow streams, one on each replica (least outstanding spreads them), then scale to 1.
    for engine in sim.engines("qwen"):
        await engine.configure(token_delay_ms=100, tokens=120)
    streams = [asyncio.create_task(stream(gateway)) for _ in range(2)]
    try:

        async def one_each() -> bool:
            stats = await sim.engine_stats("qwen")
            return all(s["in_flight"] == 1 for s in stats.values())

        await sim.wait_for(one_each, "a stream in flight on each replica")
        await sim.scale("qwen", 1)

        async def leaving() -> dict[str, Any] | None:
            eps = await sim.endpoint_slice("qwen")
            by_pod = {e["targetRef"]["name"]: e for e in (eps or {}).get("endpoints", [])}
            gone = by_pod.get("qwen-1", {}).get("conditions")
            return gone if gone and gone["terminating"] else None

        conditions = await sim.wait_for(leaving, "qwen-1 terminating")
        assert conditions == {"ready": False, "serving": True, "terminating": True}
        assert sim.replicas("qwen") == [first, second]  # still running: its stream is not done

        # New requests avoid it: with one stream on each, round robin would alternate.
        async def only_first() -> bool:
            before = await requests_by_engine(sim)
            for _ in range(4):
                await chat(gateway)
            after = await requests_by_engine(sim)
            return after[second] == before[second] and after[first] == before[first] + 4

        await sim.wait_for(only_first, "new requests only on qwen-0")
        results = await asyncio.wait_for(asyncio.gather(*streams), timeout=120)
    finally:
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    for text, finish in results:  # both streams, the one on the leaving replica too, complete
        assert finish == "stop"
        assert len(text.split()) == 120
    await sim.wait_replicas("qwen", 1)
    assert sim.replicas("qwen") == [first]
    assert await sim.api.get(PODS, NS, "qwen-1") is None
    llmd = await sim.wait_ready("qwen", 1)
    assert llmd["status"]["phase"] == "Ready"


async def test_scale_to_zero_then_delete_stops_every_process(sim: SimCluster) -> None:
    await ready_qwen(sim, replicas=2)
    gateway = await sim.start_gateway()
    assert await chat(gateway)
    engines = sim.engines("qwen")
    await sim.scale("qwen", 0)
    await sim.wait_phase("qwen", "ScaledToZero")
    await sim.wait_replicas("qwen", 0)

    async def unavailable() -> httpx.Response | None:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                gateway + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            )
        return response if response.status_code == 503 else None

    response = await sim.wait_for(unavailable, "503 from the gateway")
    assert int(response.headers["retry-after"]) >= 1
    kept = {"models-qwen-0", "models-qwen-1"}  # per-replica caches survive scale-down
    assert {world.name(c) for c in await sim.api.list(CLAIMS, NS)} == kept

    await sim.scale("qwen", 1)
    await sim.wait_ready("qwen", 1)
    engines += sim.engines("qwen")
    await sim.delete("qwen")
    await sim.wait_replicas("qwen", 0)

    async def children_gone() -> bool:
        found = [
            await sim.api.get(kind, NS, name)
            for kind, name in ((STATEFULSETS, "qwen"), (SERVICES, "qwen"), (SLICES, "qwen-sim"))
        ]
        pods = [p for p in await sim.api.list(PODS, NS) if world.name(p).startswith("qwen-")]
        return found == [None, None, None] and not pods

    await sim.wait_for(children_gone, "the children garbage-collected")
    # retainOnDelete (the default): the StatefulSet's claims are not owned, so they stay.
    assert {world.name(c) for c in await sim.api.list(CLAIMS, NS)} == kept
    assert sim.replicas("qwen") == []
    async with httpx.AsyncClient(timeout=5) as http:
        for engine in engines:  # every process exited: nothing answers on their addresses
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://{engine.host}:11434/")


async def test_two_gateways_both_route_and_are_endpoints(sim: SimCluster) -> None:
    await ready_qwen(sim)
    gateways = [await sim.start_gateway(), await sim.start_gateway()]
    hosts = [str(urlsplit(url).hostname) for url in gateways]
    assert hosts == ["127.0.1.1", "127.0.1.2"] or len(set(hosts)) == 2
    assert len({urlsplit(url).port for url in gateways}) == 1
    for url in gateways:
        assert await chat(url)
    assert sum((await requests_by_engine(sim)).values()) == 2

    async def published() -> list[str] | None:
        found = await sim.gateway_endpoints()
        return found if sorted(found) == sorted(hosts) else None

    await sim.wait_for(published, "both gateways in the relais-gateway EndpointSlice")
    await sim.stop_gateway(gateways[0])
    await sim.wait_for(
        lambda: _equals(sim.gateway_endpoints(), [hosts[1]]), "the stopped gateway removed"
    )
    assert await chat(gateways[1])


async def test_operator_restart_picks_up_a_scale_made_while_it_was_down(sim: SimCluster) -> None:
    await ready_qwen(sim)
    await sim.stop_operator(kill=True)
    assert not sim.operator_running
    await sim.scale("qwen", 2)
    await asyncio.sleep(1)  # nobody acts on it: the StatefulSet still wants one replica
    statefulset = await sim.api.get(STATEFULSETS, NS, "qwen")
    assert statefulset is not None
    assert statefulset["spec"]["replicas"] == 1
    await sim.start_operator()
    await sim.wait_ready("qwen", 2)


async def _equals(found: Any, expected: Any) -> bool:
    with contextlib.suppress(Exception):
        return bool(await found == expected)
    return False


async def test_a_tgi_replica_runs_on_the_tgi_port(sim: SimCluster) -> None:
    await sim.apply(llmdeployment("tgi", "Qwen/Qwen2.5-0.5B-Instruct", engine="tgi"))
    await sim.wait_ready("tgi", 1)
    [url] = sim.replicas("tgi")
    assert urlsplit(url).port == 8080
    gateway = await sim.start_gateway()
    assert await chat(gateway, model="Qwen/Qwen2.5-0.5B-Instruct")
    assert [stats["requests"] for stats in (await sim.engine_stats("tgi")).values()] == [1]
