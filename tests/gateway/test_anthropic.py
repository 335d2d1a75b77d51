"""The Anthropic Messages API through the gateway (issue #17), with the official `anthropic` SDK
and LangChain's ChatAnthropic, unmodified: against vLLM, which serves Messages itself
(forwarded), and TGI, which does not (translated to Chat Completions and back)."""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import httpx
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import (
    MAX_TOKENS,
    TGI_MODEL,
    VLLM_MODEL,
    GatewayFactory,
    GatewayServer,
    deployment,
)

KEY = "sk-claude"
MODELS = [VLLM_MODEL, TGI_MODEL]
PNG = base64.b64encode(
    base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
).decode()
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HELLO: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server(
    start_gateway: GatewayFactory, vllm_engine: FakeEngine, tgi_engine: FakeEngine
) -> GatewayServer:
    auth = {
        "keys": [
            {"name": "claude", "key": KEY, "models": MODELS},
            {"name": "slow", "key": "sk-slow", "requestsPerMinute": 1},
        ]
    }
    return start_gateway(
        [
            deployment("v", "vllm", VLLM_MODEL, [vllm_engine.url]),
            deployment("t", "tgi", TGI_MODEL, [tgi_engine.url]),
            deployment("other", "vllm", "other", [vllm_engine.url], engine_model=VLLM_MODEL),
        ],
        auth=auth,
    )


def client(server: GatewayServer, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def engine_of(model: str, vllm_engine: FakeEngine, tgi_engine: FakeEngine) -> FakeEngine:
    return vllm_engine if model == VLLM_MODEL else tgi_engine


@pytest.mark.parametrize("model", MODELS)
def test_create_whole_and_streamed(
    server: GatewayServer,
    vllm_engine: FakeEngine,
    tgi_engine: FakeEngine,
    model: str,
) -> None:
    sdk = client(server)
    message = sdk.messages.create(model=model, max_tokens=4096, messages=HELLO, system="Be brief")
    assert message.model == model
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens <= MAX_TOKENS
    with sdk.messages.stream(model=model, max_tokens=16, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.content[0].type == "text"
    sent = engine_of(model, vllm_engine, tgi_engine).requests_sync()
    path = "/v1/messages" if model == VLLM_MODEL else "/v1/chat/completions"
    assert [r["path"] for r in sent] == [path, path]  # native where served, else translated
    assert sent[0]["json"]["max_tokens"] == MAX_TOKENS  # 4096 capped to the deployment's limit
    assert sent[1]["json"]["stream"] is True


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_round_trip(server: GatewayServer, model: str) -> None:
    sdk = client(server)
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.messages.create(
        model=model, max_tokens=64, messages=ask, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather"
    assert "city" in call.input
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    second = sdk.messages.create(
        model=model,
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],
    )
    assert second.content[0].type == "text"


@pytest.mark.parametrize("model", MODELS)
def test_an_image_block(server: GatewayServer, model: str) -> None:
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    content: Any = [image, {"type": "text", "text": "What is this?"}]
    message = client(server).messages.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": content}]
    )
    assert message.content


def test_count_tokens_and_models(server: GatewayServer) -> None:
    sdk = client(server)
    counted = sdk.messages.count_tokens(model=VLLM_MODEL, messages=HELLO)
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.APIStatusError) as not_served:
        sdk.messages.count_tokens(model=TGI_MODEL, messages=HELLO)
    assert not_served.value.status_code == 501
    models = [m.id for m in sdk.models.list()]
    assert models == sorted(MODELS)  # the key's models only, in Anthropic's shape
    assert sdk.models.retrieve(VLLM_MODEL).id == VLLM_MODEL


def test_errors_in_anthropic_shape(server: GatewayServer) -> None:
    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        client(server, "sk-wrong").messages.create(model=VLLM_MODEL, max_tokens=8, messages=HELLO)
    assert unauthenticated.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    with pytest.raises(anthropic.NotFoundError) as forbidden:  # the key may not use "other"
        client(server).messages.create(model="other", max_tokens=8, messages=HELLO)
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client(server).messages.create(model="nope", max_tokens=8, messages=HELLO)
    assert forbidden.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert forbidden.value.message.replace("other", "nope") == unknown.value.message
    with pytest.raises(anthropic.BadRequestError) as invalid:
        client(server).messages.create(model=VLLM_MODEL, max_tokens=8, messages=[])
    assert invalid.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    slow = client(server, "sk-slow")
    slow.messages.create(model=VLLM_MODEL, max_tokens=8, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError):
        slow.messages.create(model=VLLM_MODEL, max_tokens=8, messages=HELLO)
    raw = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        content=b"{not json",
    )
    assert raw.json()["type"] == "error"


def test_langchain_chat_anthropic_with_tools(server: GatewayServer) -> None:
    for model in MODELS:
        chat = ChatAnthropic(  # type: ignore[call-arg]
            model_name=model, base_url=server.url, api_key=KEY, max_tokens=64, max_retries=0
        )
        tool_chat = chat.bind_tools([WEATHER], tool_choice="any")
        asked = HumanMessage("What is the weather in Paris?")
        answer = tool_chat.invoke([asked])
        assert answer.tool_calls
        call = answer.tool_calls[0]
        assert call["name"] == "get_weather"
        result = ToolMessage("sunny", tool_call_id=call["id"])
        final = tool_chat.invoke([asked, answer, result])
        assert final.content is not None


def test_server_errors_in_anthropic_shape(
    start_gateway: GatewayFactory, tgi_engine: FakeEngine
) -> None:
    tgi_engine.configure_sync(status=500)
    server = start_gateway(
        [deployment("t", "tgi", TGI_MODEL, [tgi_engine.url]), deployment("c", "tgi", "cold", [])]
    )
    sdk = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as failed:  # the engine's 500: a 502
        sdk.messages.create(model=TGI_MODEL, max_tokens=8, messages=HELLO)
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as cold:  # no ready replica: a 503
        sdk.messages.create(model="cold", max_tokens=8, messages=HELLO)
    assert cold.value.status_code == 503
    assert cold.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert cold.value.response.headers["retry-after"]
