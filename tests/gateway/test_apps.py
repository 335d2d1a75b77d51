"""Apps work unchanged: the official `openai` and `ollama` clients and LangChain, through the
gateway, against every engine that has each feature (issue #7).

Engines: Ollama (native API for Ollama clients, its `/v1` routes for OpenAI clients), TGI
(Messages API) and vLLM (OpenAI-compatible server); Ollama clients in front of TGI and vLLM go
through the gateway's translation. The fakes model each engine's documented wire format.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import ollama
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_ollama import ChatOllama, OllamaEmbeddings
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import (
    OLLAMA_MODEL,
    TGI_MODEL,
    VLLM_MODEL,
    GatewayFactory,
    GatewayServer,
    deployment,
)

ALL = [OLLAMA_MODEL, TGI_MODEL, VLLM_MODEL]
EMBEDDERS = [OLLAMA_MODEL, VLLM_MODEL]
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
def apps(
    start_gateway: GatewayFactory,
    ollama_engine: FakeEngine,
    tgi_engine: FakeEngine,
    vllm_engine: FakeEngine,
) -> GatewayServer:
    ollama_engine.configure_sync(models=[OLLAMA_MODEL])  # it has pulled this one model
    return start_gateway(
        [
            deployment("qwen", "ollama", OLLAMA_MODEL, [ollama_engine.url]),
            deployment("llama", "tgi", TGI_MODEL, [tgi_engine.url]),
            deployment("qwen-vllm", "vllm", VLLM_MODEL, [vllm_engine.url]),
        ]
    )


def engine_of(model: str, *fakes: FakeEngine) -> FakeEngine:
    return fakes[ALL.index(model)]


def oai(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def olm(server: GatewayServer) -> ollama.Client:
    return ollama.Client(host=server.url)


# ---------------------------------------------------------------- the openai SDK


@pytest.mark.parametrize("model", ALL)
def test_openai_tools_round_trip(apps: GatewayServer, model: str) -> None:
    client = oai(apps)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    call = (first.choices[0].message.tool_calls or [])[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert first.choices[0].finish_reason in ("tool_calls", "stop")  # TGI says stop
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22C and sunny"},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert (second.choices[0].message.content or "").startswith("The tool returned 22C and sunny")


@pytest.mark.parametrize("model", ALL)
def test_openai_streamed_tool_call_deltas(apps: GatewayServer, model: str) -> None:
    stream: Any = oai(apps).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        stream=True,
    )
    name, arguments = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                name += (delta.function.name or "") if delta.function else ""
                arguments += (delta.function.arguments or "") if delta.function else ""
    assert name == "get_weather"
    assert set(json.loads(arguments)) == {"city"}


@pytest.mark.parametrize("model", ALL)
def test_openai_parse_with_a_pydantic_model(apps: GatewayServer, model: str) -> None:
    parsed = oai(apps).chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "A city"}], response_format=City
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City)


@pytest.mark.parametrize("model", EMBEDDERS)
def test_openai_embeddings(apps: GatewayServer, model: str) -> None:
    answer = oai(apps).embeddings.create(model=model, input=["one", "two"])
    assert [d.index for d in answer.data] == [0, 1]
    assert len(answer.data[0].embedding) == 8
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.model == model


def test_openai_embeddings_on_tgi_is_a_clear_501(apps: GatewayServer) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        oai(apps).embeddings.create(model=TGI_MODEL, input="x")
    assert caught.value.status_code == 501
    body: Any = caught.value.body
    assert body["code"] == "not_supported"
    assert "tgi" in body["message"]


@pytest.mark.parametrize("model", ALL)
def test_openai_image_url_parts(apps: GatewayServer, model: str) -> None:
    answer = oai(apps).chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            }
        ],
    )
    assert (answer.choices[0].message.content or "").startswith("I see 1 image.")


@pytest.mark.parametrize("model", [TGI_MODEL, VLLM_MODEL])
def test_openai_logprobs(apps: GatewayServer, model: str) -> None:
    answer = oai(apps).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=3,
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == 3
    assert len(logprobs.content[0].top_logprobs) == 2


def test_openai_n_choices_and_extra_body_on_vllm(
    apps: GatewayServer, vllm_engine: FakeEngine
) -> None:
    answer = oai(apps).chat.completions.create(
        model=VLLM_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias={"42": 1},
        extra_body={"top_k": 5, "repetition_penalty": 1.1, "my_new_field": {"x": 1}},
    )
    assert [c.index for c in answer.choices] == [0, 1]
    seen = vllm_engine.requests_sync()[-1]["json"]
    expected = {
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "top_k": 5,
        "repetition_penalty": 1.1,
        "logit_bias": {"42": 1},
        "my_new_field": {"x": 1},
    }
    assert {key: seen[key] for key in expected} == expected  # forwarded, known or not


# ---------------------------------------------------------------- the ollama client


@pytest.mark.parametrize("model", ALL)
def test_ollama_chat_with_tools(apps: GatewayServer, model: str) -> None:
    client = olm(apps)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat(model=model, messages=messages, tools=[WEATHER])
    calls = first.message.tool_calls or []
    assert calls[0].function.name == "get_weather"
    assert set(calls[0].function.arguments) == {"city"}
    messages += [first.message, {"role": "tool", "content": "rainy", "tool_name": "get_weather"}]
    second = client.chat(model=model, messages=messages, tools=[WEATHER])
    assert (second.message.content or "").startswith("The tool returned rainy")
    streamed = list(client.chat(model=model, messages=messages[:1], tools=[WEATHER], stream=True))
    assert [c.function.name for p in streamed for c in p.message.tool_calls or []] == [
        "get_weather"
    ]
    assert streamed[-1].done


@pytest.mark.parametrize("model", ALL)
def test_ollama_chat_with_images(apps: GatewayServer, model: str) -> None:
    answer = olm(apps).chat(
        model=model, messages=[{"role": "user", "content": "What is this?", "images": [PNG]}]
    )
    assert (answer.message.content or "").startswith("I see 1 image.")


@pytest.mark.parametrize("model", EMBEDDERS)
def test_ollama_embed(apps: GatewayServer, model: str) -> None:
    client = olm(apps)
    answer = client.embed(model=model, input=["one", "two"])
    assert len(answer.embeddings) == 2
    assert len(answer.embeddings[0]) == 8
    legacy = client.embeddings(model=model, prompt="one")
    assert list(legacy.embedding) == pytest.approx(list(answer.embeddings[0]))


def test_ollama_embed_on_tgi_is_a_clear_error(apps: GatewayServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        olm(apps).embed(model=TGI_MODEL, input="x")
    assert caught.value.status_code == 501


@pytest.mark.parametrize("model", ALL)
def test_ollama_show_ps_list(apps: GatewayServer, model: str) -> None:
    client = olm(apps)
    shown = client.show(model)
    assert shown.details is not None
    assert shown.capabilities
    assert model in {m.model for m in client.ps().models}
    assert model in {m.model for m in client.list().models}


@pytest.mark.parametrize("model", [OLLAMA_MODEL, VLLM_MODEL])
def test_ollama_think(
    apps: GatewayServer, model: str, ollama_engine: FakeEngine, vllm_engine: FakeEngine
) -> None:
    engine_of(model, ollama_engine, ollama_engine, vllm_engine).configure_sync(reasoning=True)
    answer = olm(apps).chat(model=model, messages=[{"role": "user", "content": "hi"}], think=True)
    assert answer.message.thinking
    assert answer.message.content
    parts = list(
        olm(apps).chat(
            model=model, messages=[{"role": "user", "content": "hi"}], think=True, stream=True
        )
    )
    assert "".join(p.message.thinking or "" for p in parts)


def test_ollama_root_and_model_management(apps: GatewayServer, ollama_engine: FakeEngine) -> None:
    assert httpx.get(apps.url + "/").text == "Ollama is running"
    assert httpx.head(apps.url + "/").status_code == 200
    with pytest.raises(ollama.ResponseError) as caught:
        olm(apps).pull(OLLAMA_MODEL)
    assert caught.value.status_code == 403
    assert "LLMDeployment" in caught.value.error
    assert httpx.request("DELETE", apps.url + "/api/delete", json={"model": "x"}).status_code == 403
    assert not [r for r in ollama_engine.requests_sync() if r["path"] == "/api/pull"]


def test_a_served_name_reaches_ollama_as_its_tag(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    """An Ollama deployment whose servedModelName differs from its model (issue #7)."""
    ollama_engine.configure_sync(models=[OLLAMA_MODEL])
    server = start_gateway(
        [deployment("q", "ollama", "assistant", [ollama_engine.url], engine_model=OLLAMA_MODEL)]
    )
    native = olm(server).chat(model="assistant", messages=[{"role": "user", "content": "hi"}])
    assert native.model == "assistant"
    compat = oai(server).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hi"}]
    )
    assert compat.model == "assistant"
    assert {r["json"]["model"] for r in ollama_engine.requests_sync()} == {OLLAMA_MODEL}
    assert olm(server).show("assistant").details is not None


# ---------------------------------------------------------------- LangChain


@pytest.mark.parametrize("model", ALL)
def test_langchain_openai_tools_and_structured_output(apps: GatewayServer, model: str) -> None:
    config: dict[str, Any] = {"base_url": apps.url + "/v1", "api_key": "unused", "max_retries": 0}
    chat = ChatOpenAI(**config | {"model": model})
    reply = chat.bind_tools([WEATHER]).invoke([HumanMessage("Weather in Paris?")])
    assert reply.tool_calls[0]["name"] == "get_weather"
    result = ToolMessage("sunny", tool_call_id=reply.tool_calls[0]["id"])
    after = chat.bind_tools([WEATHER]).invoke([HumanMessage("Weather?"), reply, result])
    assert str(after.content).startswith("The tool returned sunny")
    city = chat.with_structured_output(City).invoke("A city")
    assert isinstance(city, City)


@pytest.mark.parametrize("model", EMBEDDERS)
def test_langchain_openai_embeddings(apps: GatewayServer, model: str) -> None:
    # check_embedding_ctx_length=False: otherwise the client downloads tiktoken's tables.
    config: dict[str, Any] = {"base_url": apps.url + "/v1", "api_key": "unused", "max_retries": 0}
    embeddings = OpenAIEmbeddings(model=model, check_embedding_ctx_length=False, **config)
    vectors = embeddings.embed_documents(["one", "two"])
    assert [len(v) for v in vectors] == [8, 8]
    assert embeddings.embed_query("one") == pytest.approx(vectors[0])


@pytest.mark.parametrize("model", ALL)
def test_langchain_ollama_tools(apps: GatewayServer, model: str) -> None:
    chat = ChatOllama(model=model, base_url=apps.url)
    reply = chat.bind_tools([WEATHER]).invoke("Weather in Paris?")
    assert reply.tool_calls[0]["name"] == "get_weather"
    assert set(reply.tool_calls[0]["args"]) == {"city"}


@pytest.mark.parametrize("model", EMBEDDERS)
def test_langchain_ollama_embeddings(apps: GatewayServer, model: str) -> None:
    vectors = OllamaEmbeddings(model=model, base_url=apps.url).embed_documents(["one", "two"])
    assert [len(v) for v in vectors] == [8, 8]
