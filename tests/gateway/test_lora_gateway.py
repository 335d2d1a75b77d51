"""LoRA adapters through the real gateway on loopback, in front of fake vLLM replicas that serve
them (`tests/fakes/lora.py`): the official clients by both names, what the engine received,
listings and allowlists, holding while an adapter loads, removal, replica choice and the retry
of a replica that lost its adapter."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import ollama
import openai
import pytest
import yaml
from langchain_openai import ChatOpenAI
from relais_gateway.config import StaticDeployment, load_static_config
from relais_gateway.routing.kubernetes import KubeAccess, KubernetesSource
from relais_gateway.routing.registry import Adapter, Backend, MemorySource, StaticSource

from tests.fakes.process import FakeEngine
from tests.fakes.recording import RecordingProxy
from tests.gateway.conftest import GatewayFactory, GatewayServer
from tests.gateway.test_kubernetes import (
    LLMD,
    SLICES,
    api,
    endpoint_slice,
    eventually,
    llmd,
)

BASE = "qwen"
LOADED = ("support-bot", "sql-writer")
DECLARED = (*LOADED, "late-bot")  # late-bot: declared, loaded by no replica (yet)
CHAT = "/v1/chat/completions"
HELLO: Any = [{"role": "user", "content": "Hello"}]


def modules(names: Iterable[str]) -> dict[str, str]:
    return {name: f"/cache/adapters/{name}" for name in names}


@pytest.fixture(scope="module")
def lora_fakes() -> Iterator[tuple[FakeEngine, FakeEngine]]:
    """Two fake vLLM replicas serving `qwen` with 2 LoRA slots: one started with the adapters,
    one without any."""
    with (
        FakeEngine("vllm", models=[BASE], max_loras=2, lora_modules=modules(LOADED)) as holder,
        FakeEngine("vllm", models=[BASE], max_loras=2) as bare,
    ):
        yield holder, bare


@pytest.fixture
def holder(lora_fakes: tuple[FakeEngine, FakeEngine]) -> FakeEngine:
    lora_fakes[0].reset_sync()  # also back to its start adapters
    return lora_fakes[0]


@pytest.fixture
def bare(lora_fakes: tuple[FakeEngine, FakeEngine]) -> FakeEngine:
    lora_fakes[1].reset_sync()
    return lora_fakes[1]


def qwen(urls: list[str], routing: str = "PrefixHash", **extra: Any) -> StaticDeployment:
    return StaticDeployment.model_validate(
        {
            "name": BASE,
            "engine": "vllm",
            "servedModelName": BASE,
            "endpoints": urls,
            "routing": {"strategy": routing},
            "adapters": [{"name": name} for name in DECLARED],
            **extra,
        }
    )


def oai(server: GatewayServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def chat_requests(engine: FakeEngine) -> list[dict[str, Any]]:
    return [r["json"] for r in engine.requests_sync() if r["path"] == CHAT]


class LoopSource(MemorySource):
    """An in-memory source a test changes from its own thread, as a watch would."""

    loop: asyncio.AbstractEventLoop

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await super().start()

    def swap(self, backends: list[Backend]) -> None:
        done = threading.Event()

        def apply() -> None:
            self.replace(backends)
            done.set()

        self.loop.call_soon_threadsafe(apply)
        assert done.wait(5)


def vllm_backend(replicas: tuple[str, ...], *adapters: Adapter, **extra: Any) -> Backend:
    return Backend(
        name=BASE, engine="vllm", model=BASE, replicas=replicas, adapters=adapters, **extra
    )


# ---------------------------------------------------------------- the clients, by both names


@pytest.mark.parametrize("name", ["support-bot", "qwen_support-bot"])
def test_the_openai_client_calls_an_adapter_by_either_name(
    start_gateway: GatewayFactory, holder: FakeEngine, name: str
) -> None:
    with RecordingProxy(holder.url) as proxy:
        server = start_gateway([qwen([proxy.url])])
        client = oai(server)
        answer = client.chat.completions.create(model=name, messages=HELLO)
        assert answer.model == name  # named as the client did
        assert answer.choices[0].message.content
        chunks = list(client.chat.completions.create(model=name, messages=HELLO, stream=True))
        assert {c.model for c in chunks} == {name}
        text = client.completions.create(model=name, prompt="Hi", max_tokens=4)
        assert text.model == name
        sent = [body["model"] for body in proxy.bodies() if body]
    assert sent == ["support-bot"] * 3  # the engine always gets the adapter's name


@pytest.mark.parametrize("name", ["sql-writer", "qwen_sql-writer"])
def test_langchain_calls_an_adapter_by_either_name(
    start_gateway: GatewayFactory, holder: FakeEngine, name: str
) -> None:
    server = start_gateway([qwen([holder.url])])
    config: dict[str, Any] = {"base_url": server.url + "/v1", "api_key": "unused"}
    chat = ChatOpenAI(**config | {"model": name, "max_retries": 0})
    reply = chat.invoke("Hello")
    assert reply.content
    assert reply.response_metadata["model_name"] == name
    assert [body["model"] for body in chat_requests(holder)] == ["sql-writer"]


@pytest.mark.parametrize("name", ["support-bot", "qwen_support-bot"])
def test_the_ollama_client_calls_an_adapter_by_either_name(
    start_gateway: GatewayFactory, holder: FakeEngine, name: str
) -> None:
    server = start_gateway([qwen([holder.url])])
    client = ollama.Client(host=server.url)
    answer = client.chat(model=name, messages=HELLO)
    assert answer.model == name
    assert answer.message.content
    streamed = list(client.generate(model=name, prompt="Hi", stream=True))
    assert {part.model for part in streamed} == {name}
    assert {body["model"] for body in chat_requests(holder)} == {"support-bot"}


# ---------------------------------------------------------------- listings and allowlists

KEYS = {
    "keys": [
        {"name": "base-only", "key": "sk-base", "models": [BASE]},
        {"name": "bot-only", "key": "sk-bot", "models": ["support-bot"]},
        {"name": "all", "key": "sk-all"},
    ]
}


def test_listings_show_adapters_beside_their_base(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    server = start_gateway([qwen([holder.url])])
    cards = {m.id: m for m in oai(server).models.list()}
    assert set(cards) == {BASE, *DECLARED}
    assert all(getattr(cards[name], "parent", None) == BASE for name in DECLARED)
    assert getattr(cards[BASE], "parent", None) is None
    assert oai(server).models.retrieve("qwen_sql-writer").id == "qwen_sql-writer"
    tags = {m.model: m for m in ollama.Client(host=server.url).list().models}
    assert set(tags) == {BASE, *DECLARED}
    details = tags["support-bot"].details
    assert details is not None
    assert details.parent_model == BASE
    anthropic = httpx.get(server.url + "/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert {m["id"] for m in anthropic.json()["data"]} == {BASE, *DECLARED}


def test_an_allowlist_naming_the_base_does_not_grant_its_adapters_nor_the_reverse(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    server = start_gateway([qwen([holder.url])], auth=KEYS)
    base_only, bot_only, everyone = oai(server, "sk-base"), oai(server, "sk-bot"), oai(server)
    everyone.api_key = "sk-all"
    for name in ("support-bot", "qwen_support-bot", "sql-writer"):
        with pytest.raises(openai.NotFoundError) as denied:
            base_only.chat.completions.create(model=name, messages=HELLO)
        assert denied.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            base_only.models.retrieve(name)
    assert base_only.chat.completions.create(model=BASE, messages=HELLO).model == BASE
    with pytest.raises(openai.NotFoundError):
        bot_only.chat.completions.create(model=BASE, messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        bot_only.chat.completions.create(model="qwen_sql-writer", messages=HELLO)
    for name in ("support-bot", "qwen_support-bot"):  # the alias is allowed with the name
        assert bot_only.chat.completions.create(model=name, messages=HELLO).model == name
    assert [m.id for m in base_only.models.list()] == [BASE]
    assert [m.id for m in bot_only.models.list()] == ["support-bot"]
    assert len(everyone.models.list().data) == 1 + len(DECLARED)
    ollama_bot = ollama.Client(host=server.url, headers={"Authorization": "Bearer sk-bot"})
    assert [m.model for m in ollama_bot.list().models] == ["support-bot"]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_bot.chat(model=BASE, messages=HELLO)
    assert refused.value.status_code == 404
    assert {body["model"] for body in chat_requests(holder)} == {BASE, "support-bot"}


# ---------------------------------------------------------------- loading, failed, removed


def test_an_adapter_no_replica_has_loaded_is_a_503_adapter_loading_in_each_dialect(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    server = start_gateway([qwen([holder.url])], adapter_load_wait_s=0.3, retry_after_s=7)
    begun = time.monotonic()
    with pytest.raises(openai.InternalServerError) as loading:
        oai(server).chat.completions.create(model="late-bot", messages=HELLO)
    assert 0.3 <= time.monotonic() - begun < 5  # held for the wait, then answered
    assert loading.value.status_code == 503
    assert loading.value.code == "adapter_loading"
    assert loading.value.response.headers["Retry-After"] == "7"
    native = httpx.post(
        server.url + "/api/chat", json={"model": "qwen_late-bot", "messages": HELLO}
    )
    assert native.status_code == 503
    assert native.headers["Retry-After"] == "7"
    assert "late-bot" in native.json()["error"]
    messages = httpx.post(
        server.url + "/v1/messages",
        json={"model": "late-bot", "max_tokens": 8, "messages": HELLO},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert messages.status_code == 503
    assert messages.json()["error"]["type"] == "overloaded_error"
    assert chat_requests(holder) == []  # nothing reached the engine


def test_a_request_waits_for_the_adapter_to_be_loaded(
    start_gateway: GatewayFactory, holder: FakeEngine, tmp_path: Path
) -> None:
    server = start_gateway([qwen([holder.url])], adapter_load_wait_s=20)
    results: list[Any] = []

    def ask() -> None:
        results.append(oai(server).chat.completions.create(model="late-bot", messages=HELLO))

    waiting = threading.Thread(target=ask)
    waiting.start()
    time.sleep(0.5)
    assert not results  # held, not failed
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    loaded = httpx.post(
        holder.url + "/v1/load_lora_adapter",
        json={"lora_name": "late-bot", "lora_path": str(tmp_path)},
    )
    assert loaded.status_code == 200, loaded.text
    waiting.join(15)
    assert results[0].model == "late-bot"
    assert [body["model"] for body in chat_requests(holder)] == ["late-bot"]


def test_a_failed_adapter_is_a_503_at_once_with_its_reason(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    broken = Adapter("broken-bot", "Failed", "hf://acme/broken: 401 Unauthorized")
    source = LoopSource([vllm_backend((holder.url,), broken)])
    server = start_gateway(source=source, adapter_load_wait_s=30)
    begun = time.monotonic()
    with pytest.raises(openai.InternalServerError) as failed:
        oai(server).chat.completions.create(model="qwen_broken-bot", messages=HELLO)
    assert time.monotonic() - begun < 5
    assert failed.value.code == "adapter_loading"
    assert "401 Unauthorized" in failed.value.message
    assert failed.value.response.headers["Retry-After"]


def test_a_removed_adapter_is_404_like_any_unknown_model(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    adapters = (Adapter("support-bot"), Adapter("sql-writer"))
    source = LoopSource([vllm_backend((holder.url,), *adapters)])
    server = start_gateway(source=source)
    client = oai(server)
    assert client.chat.completions.create(model="support-bot", messages=HELLO).model
    source.swap([vllm_backend((holder.url,), adapters[1])])
    for name in ("support-bot", "qwen_support-bot"):
        with pytest.raises(openai.NotFoundError) as gone:
            client.chat.completions.create(model=name, messages=HELLO)
        assert gone.value.code == "model_not_found"
    assert "support-bot" not in {m.id for m in client.models.list()}


def test_an_adapter_request_waits_through_a_cold_start(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    cold = vllm_backend((), Adapter("support-bot"), autoscaled=True)
    source = LoopSource([cold])
    server = start_gateway(source=source, adapter_load_wait_s=10)
    results: list[Any] = []
    waiting = threading.Thread(
        target=lambda: results.append(
            oai(server).chat.completions.create(model="qwen_support-bot", messages=HELLO)
        )
    )
    waiting.start()
    time.sleep(0.5)
    assert not results
    waiting_metric = httpx.get(server.url + "/metrics").text
    assert 'relais_gateway_waiting_requests{model="qwen"} 1.0' in waiting_metric
    source.swap([vllm_backend((holder.url,), Adapter("support-bot"), autoscaled=True)])
    waiting.join(15)
    assert results[0].model == "qwen_support-bot"


# ---------------------------------------------------------------- which replica


@pytest.mark.parametrize("routing", ["PrefixHash", "LeastLoad"])
def test_a_replica_without_the_adapter_is_never_chosen_while_another_has_it(
    start_gateway: GatewayFactory, holder: FakeEngine, bare: FakeEngine, routing: str
) -> None:
    server = start_gateway([qwen([holder.url, bare.url], routing)])
    client = oai(server)
    for i in range(24):
        question: Any = [{"role": "user", "content": f"question {i}"}]
        client.chat.completions.create(model="support-bot", messages=question)
        client.chat.completions.create(model=BASE, messages=question)
    assert [b["model"] for b in chat_requests(bare)].count("support-bot") == 0
    assert [b["model"] for b in chat_requests(holder)].count("support-bot") == 24
    assert len(chat_requests(bare)) > 0  # the base still goes to both


def test_a_replica_that_lost_the_adapter_is_retried_elsewhere_before_any_byte(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    with (
        FakeEngine("vllm", models=[BASE], max_loras=2, lora_modules=modules(LOADED)) as one,
        FakeEngine("vllm", models=[BASE], max_loras=2, lora_modules=modules(LOADED)) as two,
    ):
        server = start_gateway([qwen([one.url, two.url], "LeastLoad")], adapter_poll_interval_s=300)
        # `two` restarts without its adapters; the gateway's last poll still says it has them.
        gone = httpx.post(two.url + "/v1/unload_lora_adapter", json={"lora_name": "sql-writer"})
        assert gone.status_code == 200, gone.text
        client = oai(server)
        for i in range(6):
            stream = i % 2 == 1
            answer = client.chat.completions.create(
                model="sql-writer",
                messages=[{"role": "user", "content": f"q{i}"}],
                stream=stream,
            )
            if stream:
                assert {c.model for c in answer} == {"sql-writer"}  # type: ignore[union-attr]
            else:
                assert answer.model == "sql-writer"  # type: ignore[union-attr]
        refused = [b for b in chat_requests(two) if b["model"] == "sql-writer"]
        assert len(refused) == 1  # tried once, answered 404, then skipped
        assert len(chat_requests(one)) == 6


def test_metrics_name_the_adapter_and_nothing_a_client_invents(
    start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    server = start_gateway([qwen([holder.url])])
    client = oai(server)
    client.chat.completions.create(model="qwen_support-bot", messages=HELLO)
    client.chat.completions.create(model="support-bot", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="qwen_invented", messages=HELLO)
    text = httpx.get(server.url + "/metrics").text
    requests = 'model="support-bot",route="/v1/chat/completions",status="200"} 2.0'
    assert requests in text
    assert 'kind="completion",model="support-bot"}' in text
    assert 'relais_gateway_time_to_first_token_seconds_count{model="support-bot"} 2.0' in text
    assert 'model="-",route="/v1/chat/completions",status="404"} 1.0' in text
    assert "qwen_support-bot" not in text
    assert "invented" not in text


# ---------------------------------------------------------------- from LLMDeployments


async def test_adapters_come_from_llmdeployments(
    k8s: kmock.KubernetesEmulator, start_gateway: GatewayFactory, holder: FakeEngine
) -> None:
    adapters = [
        {"name": "support-bot", "source": "hf://acme/support-bot"},
        {"name": "sql-writer", "source": "adapters/sql-writer"},
        {"name": "broken-bot", "source": "hf://acme/broken", "revision": "main"},
    ]
    spec: Any = {"model": "Qwen/Qwen2.5-7B-Instruct", "servedModelName": BASE, "lora": {}}
    obj = llmd("qwen", engine="vllm", **spec, adapters=adapters)
    await api(k8s, "POST", LLMD.format(ns="models"), obj)
    failed = {"name": "broken-bot", "state": "Failed", "message": "401 Unauthorized from the Hub"}
    await api(k8s, "PATCH", LLMD.format(ns="models") + "/qwen", {"status": {"adapters": [failed]}})
    await api(k8s, "POST", SLICES.format(ns="models"), endpoint_slice("q", "qwen", holder.url))
    source = KubernetesSource(["models"], KubeAccess(str(k8s.url).rstrip("/")), watch_timeout_s=5)
    server = await asyncio.to_thread(start_gateway, source=source, adapter_load_wait_s=30)
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key="x", max_retries=0
    ) as client:
        listed = {m.id: getattr(m, "parent", None) async for m in client.models.list()}
        assert listed == {BASE: None, "support-bot": BASE, "sql-writer": BASE, "broken-bot": BASE}
        answer = await client.chat.completions.create(model="qwen_sql-writer", messages=HELLO)
        assert answer.model == "qwen_sql-writer"
        assert chat_requests(holder)[-1]["model"] == "sql-writer"
        with pytest.raises(openai.InternalServerError) as broken:
            await client.chat.completions.create(model="broken-bot", messages=HELLO)
        assert "401 Unauthorized from the Hub" in broken.value.message
        await api(k8s, "PATCH", LLMD.format(ns="models") + "/qwen",
                  {"spec": {"adapters": adapters[:1]}})  # fmt: skip

        async def removed() -> bool:
            try:
                await client.chat.completions.create(model="sql-writer", messages=HELLO)
            except openai.NotFoundError:
                return True
            return False

        await eventually(removed)


def test_an_adapter_removed_from_the_static_file_is_404_without_a_restart(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, tmp_path: Path
) -> None:
    """Ollama serves its adapters as models of their own (created at start): no polling."""
    path = tmp_path / "gateway.yaml"
    entry = {"name": "q", "engine": "ollama", "servedModelName": BASE, "model": "qwen2.5:0.5b",
             "endpoints": [ollama_engine.url]}  # fmt: skip
    config = {"deployments": [{**entry, "adapters": [{"name": "support-bot"}]}],
              "auth": {"disabled": True}}  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    source = StaticSource(load_static_config(path).deployments, health_interval_s=0)
    server = start_gateway(source=source, config=path, auth_reload_interval_s=0.1)
    client = ollama.Client(host=server.url)
    assert client.chat(model="qwen_support-bot", messages=HELLO).model == "qwen_support-bot"
    assert ollama_engine.requests_sync()[-1]["json"]["model"] == "support-bot"
    path.write_text(yaml.safe_dump({**config, "deployments": [entry]}))
    deadline = time.monotonic() + 10
    while "support-bot" in {m.model for m in client.list().models}:
        assert time.monotonic() < deadline, "the edit was not picked up"
        time.sleep(0.1)
    for name in ("support-bot", "qwen_support-bot"):
        with pytest.raises(ollama.ResponseError) as gone:
            client.chat(model=name, messages=HELLO)
        assert gone.value.status_code == 404
    path.write_text("deployments: [{name: broken")  # a bad edit keeps what is in force
    time.sleep(0.5)
    assert client.chat(model=BASE, messages=HELLO).model == BASE


def test_two_gateways_send_each_adapter_to_the_same_replica(start_gateway: GatewayFactory) -> None:
    with (
        FakeEngine("vllm", models=[BASE], max_loras=2, lora_modules=modules(LOADED)) as one,
        FakeEngine("vllm", models=[BASE], max_loras=2, lora_modules=modules(LOADED)) as two,
        FakeEngine("vllm", models=[BASE], max_loras=2, lora_modules=modules(LOADED)) as three,
    ):
        fakes = (one, two, three)
        urls = [fake.url for fake in fakes]
        gateways = [start_gateway([qwen(urls)]), start_gateway([qwen(urls[::-1])])]
        for i in range(12):
            for server in gateways:
                for name in ("support-bot", "qwen_sql-writer"):
                    question = [{"role": "user", "content": f"conversation {i}"}]
                    oai(server).chat.completions.create(model=name, messages=question)  # type: ignore[arg-type]
        for adapter in LOADED:
            served = [f for f in fakes if any(b["model"] == adapter for b in chat_requests(f))]
            assert len(served) == 1  # one home, whichever gateway, whatever the conversation
            assert len([b for b in chat_requests(served[0]) if b["model"] == adapter]) == 24
        assert all(fake.lora_sync()["loads"] <= 1 for fake in fakes)  # each loaded once at most


def test_responses_and_messages_reach_an_adapter_too(
    start_gateway: GatewayFactory, holder: FakeEngine, bare: FakeEngine
) -> None:
    server = start_gateway([qwen([bare.url, holder.url])])
    first = oai(server).responses.create(model="qwen_support-bot", input="Hi")
    assert first.model == "qwen_support-bot"
    later = oai(server).responses.create(
        model="qwen_support-bot", input="And?", previous_response_id=first.id
    )
    assert later.output_text
    assert later.model == "qwen_support-bot"
    stored = oai(server).responses.retrieve(first.id)
    assert stored.model == "support-bot"  # stored by the adapter, named by it (not the base)
    messages = httpx.post(
        server.url + "/v1/messages",
        json={"model": "support-bot", "max_tokens": 8, "messages": HELLO},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert messages.status_code == 200, messages.text
    assert messages.json()["model"] == "support-bot"
    sent = [r["json"]["model"] for r in holder.requests_sync() if r["json"]]
    assert sent == ["support-bot"] * 3  # (the retrieval is a GET)
    assert not [r for r in bare.requests_sync() if r["json"]]
