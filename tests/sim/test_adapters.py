"""LoRA adapters end to end on the simulated cluster: the real operator writes the adapters'
ConfigMap, the real adapter-agent (one process per pod, as its sidecar) loads them into the
pod's vLLM fake, and real gateways route to the replicas that hold them.

Adapters live on each replica's cache volume (the claim's directory, seeded like a disk image),
so `source` is a cache path: nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.process import FakeEngine
from tests.sim.cluster import SimCluster, llmdeployment
from tests.sim.kube import PODS, STATEFULSETS

NS = "default"
BASE = "base"  # the deployment's served model name
ADAPTERS = ("support-bot", "sql-writer", "summarizer")


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    """A cache volume's starting content: three PEFT adapter folders under adapters/."""
    for name in ADAPTERS:
        folder = tmp_path / "adapters" / name
        folder.mkdir(parents=True)
        config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return tmp_path


def vllm(replicas: int, adapters: list[str], **spec: Any) -> dict[str, Any]:
    body = llmdeployment(
        "lora",
        "fake-org/fake-model",
        engine="vllm",
        replicas=replicas,
        servedModelName=BASE,
        lora={"maxAdapters": 2},
        **spec,
    )
    body["spec"]["adapters"] = [{"name": n, "source": f"adapters/{n}"} for n in adapters]
    return body


async def chat(url: str, model: str, text: str = "hi") -> str:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}]
        )
    assert answer.model == model  # named as the client named it
    return answer.choices[0].message.content or ""


async def loaded(url: str) -> set[str]:
    """The LoRA adapters a vLLM (fake) replica lists in /v1/models (they have a `parent`)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as answer:
        cards = (await answer.json())["data"]
    return {card["id"] for card in cards if card.get("parent")}


async def adapter_status(sim: SimCluster) -> dict[str, dict[str, Any]]:
    llmd = await sim.get("lora") or {}
    return {a["name"]: a for a in (llmd.get("status") or {}).get("adapters") or ()}


async def wait_adapters(sim: SimCluster, names: set[str], replicas: int) -> None:
    """Every replica's engine lists exactly `names`, and status says so."""

    async def done() -> bool:
        urls = sim.replicas("lora")
        if len(urls) != replicas:
            return False
        views = await asyncio.gather(*(loaded(url) for url in urls))
        status = await adapter_status(sim)
        ready = {n for n, a in status.items() if a["state"] == "Ready"}
        counts = {status[n].get("readyReplicas") for n in names if n in status}
        return all(v == names for v in views) and ready == names and counts <= {replicas}

    await sim.wait_for(done, f"adapters {sorted(names)} on {replicas} replicas")


async def adapter_requests(sim: SimCluster) -> dict[str, list[dict[str, Any]]]:
    """Replica URL -> the requests its engine got on inference routes (not the agent's)."""
    engines = sim.engines("lora")
    logs = await asyncio.gather(*(engine.requests() for engine in engines))
    return {
        engine.url: [r for r in log if r["path"].endswith("/completions")]
        for engine, log in zip(engines, logs, strict=True)
    }


async def template(sim: SimCluster) -> dict[str, Any]:
    statefulset = await sim.api.get(STATEFULSETS, NS, "lora")
    assert statefulset is not None
    return dict(statefulset["spec"]["template"])


async def pod_uids(sim: SimCluster) -> set[str]:
    pods = await sim.api.list(PODS, NS)
    return {p["metadata"]["uid"] for p in pods if p["metadata"]["name"].startswith("lora-")}


async def test_an_adapter_added_to_a_running_deployment_is_served_everywhere_without_a_restart(
    seed: Path,
) -> None:
    async with SimCluster(cache_seed=seed) as sim:
        await sim.apply(vllm(2, ["support-bot"]))
        await sim.wait_ready("lora", 2)
        await wait_adapters(sim, {"support-bot"}, 2)
        gateway = await sim.start_gateway()
        assert await chat(gateway, "support-bot")
        before_template, before_pods = await template(sim), await pod_uids(sim)

        await sim.apply(vllm(2, ["support-bot", "sql-writer"]))
        await wait_adapters(sim, {"support-bot", "sql-writer"}, 2)

        async def served() -> bool:
            with contextlib.suppress(openai.APIStatusError):
                return bool(await chat(gateway, "sql-writer"))
            return False

        await sim.wait_for(served, "sql-writer through the gateway")
        assert await chat(gateway, f"{BASE}_sql-writer")  # KubeAI's name for it
        assert await chat(gateway, BASE)
        # No restart: the same pods, and the StatefulSet's pod template did not change.
        assert await pod_uids(sim) == before_pods
        assert await template(sim) == before_template
        engine_models = {
            r["json"]["model"] for log in (await adapter_requests(sim)).values() for r in log
        }
        assert engine_models == {"support-bot", "sql-writer", BASE}  # the engine's own names

        # Removed: unloaded from every replica, and a 404 like any unknown model.
        await sim.apply(vllm(2, ["sql-writer"]))
        await wait_adapters(sim, {"sql-writer"}, 2)

        async def gone() -> bool:
            try:
                await chat(gateway, "support-bot")
            except openai.NotFoundError:
                return True
            return False

        await sim.wait_for(gone, "support-bot answered 404")
        assert await pod_uids(sim) == before_pods


async def test_a_restarted_replica_gets_its_adapters_back_before_it_takes_adapter_traffic(
    seed: Path,
) -> None:
    # The agent of a new pod starts 2 s after its engine is Ready: a window in which the replica
    # serves the base model only, and the gateway must not send it adapter requests.
    async with SimCluster(cache_seed=seed, agent_delay_s=2.0) as sim:
        await sim.apply(vllm(2, ["support-bot"], routing={"strategy": "LeastLoad"}))
        await sim.wait_ready("lora", 2)
        await wait_adapters(sim, {"support-bot"}, 2)
        gateway = await sim.start_gateway()
        failures: list[BaseException] = []
        answered = 0

        async def traffic() -> None:
            nonlocal answered
            while True:
                try:
                    await chat(gateway, "support-bot", text=f"turn {answered}")
                    answered += 1
                except openai.APIError as exc:
                    failures.append(exc)
                await asyncio.sleep(0.02)

        workers = [asyncio.create_task(traffic()) for _ in range(3)]
        try:

            async def flowing() -> bool:
                return answered >= 10

            await sim.wait_for(flowing, "traffic flowing")
            first = await sim.api.get(PODS, NS, "lora-1")
            assert first is not None
            await sim.api.delete(PODS, NS, "lora-1")

            async def restarted() -> FakeEngine | None:
                running = [r for r in sim.kubelet.replicas.values() if r.pod == "lora-1"]
                fresh = [r for r in running if r.uid != first["metadata"]["uid"] and r.running]
                return fresh[0].engine if fresh else None

            engine = await sim.wait_for(restarted, "lora-1 running again")
            await sim.wait_ready("lora", 2)
            await wait_adapters(sim, {"support-bot"}, 2)

            async def new_replica_used() -> bool:
                log = await engine.requests()
                return any(r["path"].endswith("/completions") for r in log)

            await sim.wait_for(new_replica_used, "adapter traffic on the restarted replica")
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        assert failures == []
        # The restarted replica's engine: the load came first, then adapter requests, none of
        # them refused (a refusal would be vLLM's 404 for an adapter it has not loaded).
        log = await engine.requests()
        paths = [r["path"] for r in log]
        first_load = paths.index("/v1/load_lora_adapter")
        first_chat = next(
            i
            for i, r in enumerate(log)
            if r["path"].endswith("/completions") and r["json"].get("model") == "support-bot"
        )
        assert first_load < first_chat
        stats = await engine.stats()
        assert stats["failures"] == 0


async def test_two_gateways_route_one_adapters_conversations_to_the_same_replica(
    seed: Path,
) -> None:
    async with SimCluster(cache_seed=seed) as sim:
        await sim.apply(vllm(3, list(ADAPTERS)))
        await sim.wait_ready("lora", 3)
        await wait_adapters(sim, set(ADAPTERS), 3)
        gateways = [await sim.start_gateway(), await sim.start_gateway()]
        for turn in range(12):
            gateway = gateways[turn % 2]
            for adapter in ADAPTERS:
                await chat(gateway, adapter, text=f"conversation {turn} about {adapter}")
        where: dict[str, set[str]] = {}
        for url, log in (await adapter_requests(sim)).items():
            for request in log:
                where.setdefault(request["json"]["model"], set()).add(url)
        assert set(where) == set(ADAPTERS)
        for adapter, urls in where.items():
            assert len(urls) == 1, f"{adapter} went to {sorted(urls)}"


async def test_an_adapter_that_fails_to_load_shows_in_status_and_nothing_else_breaks(
    seed: Path,
) -> None:
    async with SimCluster(cache_seed=seed) as sim:
        body = vllm(1, ["support-bot"])
        body["spec"]["adapters"].append({"name": "broken", "source": "adapters/not-there"})
        await sim.apply(body)
        await sim.wait_ready("lora", 1)

        async def failed() -> dict[str, Any] | None:
            broken = (await adapter_status(sim)).get("broken")
            return broken if broken and broken["state"] == "Failed" else None

        broken = await sim.wait_for(failed, "the broken adapter Failed in status")
        assert "not-there" in broken["message"]
        await wait_adapters(sim, {"support-bot"}, 1)
        gateway = await sim.start_gateway()
        assert await chat(gateway, BASE)

        async def served() -> bool:
            with contextlib.suppress(openai.APIStatusError):
                return bool(await chat(gateway, "support-bot"))
            return False

        await sim.wait_for(served, "support-bot served beside the broken one")
        with pytest.raises(openai.APIStatusError) as caught:
            await chat(gateway, "broken")
        assert caught.value.status_code == 503
        assert caught.value.response.headers.get("retry-after")
        llmd = await sim.get("lora") or {}
        assert llmd["status"]["phase"] == "Ready"
