"""Cloud Run parity on the simulated cluster (issue #8): scale to zero and back, driven by
demand, with no request lost. The real operator (its autoscaler reading the gateways' metrics)
and real gateways (holding requests while a replica starts), fake engines on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.sim.cluster import SimCluster, llmdeployment

MODEL = "qwen2.5:0.5b"
FAST = {"RELAIS_OPERATOR_AUTOSCALE_INTERVAL_S": "0.5"}
SLOW_ENGINE = {"first_token_delay_ms": 50, "token_delay_ms": 50, "tokens": 40}  # ~2 s a stream

pytestmark = pytest.mark.timeout(240)


def autoscaled(**autoscaling: Any) -> dict[str, Any]:
    policy = {"minReplicas": 0, "maxReplicas": 3, "targetRequests": 2, "scaleDownDelaySeconds": 2}
    return llmdeployment(
        "qwen",
        MODEL,
        replicas=0,
        autoscaling=policy | autoscaling,
        routing={"strategy": "LeastLoad"},
    )


@contextlib.asynccontextmanager
async def cluster(**kwargs: Any) -> AsyncIterator[SimCluster]:
    async with SimCluster(operator_env=FAST, **kwargs) as sim:
        yield sim


async def chat(url: str, *, stream: bool = False, client_timeout_s: float = 120) -> str:
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, timeout=client_timeout_s
    ) as client:
        if not stream:
            answer = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            return answer.choices[0].message.content or ""
        chunks = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def spec_replicas(sim: SimCluster) -> int:
    return int(((await sim.get("qwen")) or {}).get("spec", {}).get("replicas") or 0)


async def test_cold_start_with_one_request_and_with_twenty() -> None:
    async with cluster(start_delay_s=1.0) as sim:
        await sim.apply(autoscaled())
        gateway = await sim.start_gateway()
        assert await chat(gateway)  # waits for the replica the gateway asked for
        assert await spec_replicas(sim) >= 1
        await sim.wait_phase("qwen", "ScaledToZero")  # idle: back to zero after the delay
        answers = await asyncio.gather(*(chat(gateway, stream=n % 2 == 0) for n in range(20)))
        assert all(answers)


async def test_overflow_and_timeout_answer_503_with_retry_after() -> None:
    env = {"RELAIS_GATEWAY_MAX_WAITING_REQUESTS": "2", "RELAIS_GATEWAY_COLD_START_TIMEOUT_S": "2"}
    async with cluster(start_delay_s=30.0, gateway_env=env) as sim:
        await sim.apply(autoscaled())
        gateway = await sim.start_gateway()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(3))
            )
        assert sorted(a.status_code for a in answers) == [503, 503, 503]
        assert all(a.headers.get("retry-after") for a in answers)
        messages = sorted(a.json()["error"]["message"] for a in answers)
        assert "already wait" in messages[0] or "already wait" in messages[-1]
        assert any("became ready within" in m for m in messages)


async def test_a_client_that_leaves_while_waiting_never_reaches_an_engine() -> None:
    async with cluster(start_delay_s=3.0) as sim:
        # A long scale-down delay: the replica the request asked for stays, so the test can see
        # that nothing reached it after its client left.
        await sim.apply(autoscaled(scaleDownDelaySeconds=120))
        gateway = await sim.start_gateway()
        with pytest.raises(openai.APITimeoutError):
            await chat(gateway, client_timeout_s=0.5)
        await sim.wait_ready("qwen", 1)  # the replica it asked for still comes up
        stats = await sim.engine_stats("qwen")
        assert all(s["requests"] == 0 for s in stats.values())


async def test_a_burst_scales_up_to_max_and_idle_goes_back_to_zero() -> None:
    async with cluster(start_delay_s=0.5, engine_switches=SLOW_ENGINE) as sim:
        await sim.apply(autoscaled(maxReplicas=3, targetRequests=2))
        gateway = await sim.start_gateway()
        burst = [asyncio.create_task(chat(gateway, stream=True)) for _ in range(10)]
        await sim.wait_for(lambda: _at_least(sim, 3), "3 replicas (maxReplicas)")
        assert all(await asyncio.gather(*burst))
        assert await spec_replicas(sim) == 3  # never above maxReplicas
        llmd = await sim.wait_phase("qwen", "ScaledToZero")
        assert llmd["status"]["autoscaling"]["desiredReplicas"] == 0
        await sim.wait_replicas("qwen", 0)


async def _at_least(sim: SimCluster, n: int) -> bool:
    return len(sim.replicas("qwen")) >= n


async def test_over_max_concurrent_requests_requests_queue() -> None:
    async with cluster(start_delay_s=0.5, engine_switches=SLOW_ENGINE) as sim:
        body = autoscaled(minReplicas=1, maxReplicas=1)
        body["spec"]["requestLimits"] = {"maxConcurrentRequests": 1}
        body["spec"]["replicas"] = 1
        await sim.apply(body)
        await sim.wait_ready("qwen", 1)
        gateway = await sim.start_gateway()
        answers = await asyncio.gather(*(chat(gateway, stream=True) for _ in range(4)))
        assert all(answers)
        stats = await sim.engine_stats("qwen")
        assert sum(s["requests"] for s in stats.values()) == 4


async def test_an_operator_restart_mid_burst_does_not_scale_down() -> None:
    async with cluster(start_delay_s=0.5, engine_switches=SLOW_ENGINE) as sim:
        await sim.apply(autoscaled(maxReplicas=2, targetRequests=2, scaleDownDelaySeconds=4))
        gateway = await sim.start_gateway()
        stop = asyncio.Event()

        async def keep_busy() -> int:
            done = 0
            while not stop.is_set():
                assert await chat(gateway, stream=True)
                done += 1
            return done

        workers = [asyncio.create_task(keep_busy()) for _ in range(4)]
        await sim.wait_for(lambda: _at_least(sim, 2), "2 replicas")
        await sim.stop_operator(kill=True)
        await sim.start_operator()
        seen = []
        for _ in range(8):  # 4 s: the restarted operator must not scale down meanwhile
            seen.append(await spec_replicas(sim))
            await asyncio.sleep(0.5)
        stop.set()
        assert all(await asyncio.gather(*workers))
        assert min(seen) == 2, seen
        await sim.wait_phase("qwen", "ScaledToZero")


async def test_two_gateways_sum_their_demand() -> None:
    async with cluster(start_delay_s=0.5, engine_switches=SLOW_ENGINE) as sim:
        await sim.apply(autoscaled(maxReplicas=3, targetRequests=3))
        gateways = [await sim.start_gateway(), await sim.start_gateway()]
        burst = [
            asyncio.create_task(chat(gateways[n % 2], stream=True)) for n in range(8)
        ]  # 4 waiting on each gateway: demand 8 over both, target 3 -> 3 replicas
        await sim.wait_for(lambda: _at_least(sim, 3), "3 replicas from both gateways' demand")
        assert all(await asyncio.gather(*burst))
