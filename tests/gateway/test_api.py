"""Both dialects over both engines, through the official `openai` and `ollama` clients."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import (
    MAX_TOKENS,
    OLLAMA_MODEL,
    TGI_ENGINE_MODEL,
    TGI_MODEL,
    GatewayServer,
    deployment,
)

MODELS = [OLLAMA_MODEL, TGI_MODEL]
WORDS = ["Relais", "fake", "engine", "says", "hello", "from", "a", "deterministic"]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


def oai(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def olm(gateway: GatewayServer) -> ollama.Client:
    return ollama.Client(host=gateway.url)


def engine_for(model: str, ollama_engine: FakeEngine, tgi_engine: FakeEngine) -> FakeEngine:
    return ollama_engine if model == OLLAMA_MODEL else tgi_engine


@pytest.mark.parametrize("model", MODELS)
def test_openai_chat(gateway: GatewayServer, model: str) -> None:
    answer = oai(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert answer.object == "chat.completion"
    assert answer.model == model
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == " ".join(WORDS[:5])
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5


@pytest.mark.parametrize("model", MODELS)
def test_openai_chat_stream_with_usage(gateway: GatewayServer, model: str) -> None:
    stream = oai(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(WORDS)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(WORDS)


@pytest.mark.parametrize("model", MODELS)
def test_openai_stream_ends_with_done(gateway: GatewayServer, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    # Forwarded as the engine wrote it: Ollama writes `data: `, TGI `data:`.
    assert events[-1].replace(" ", "") == "data:[DONE]"
    assert all(line.startswith("data:") for line in events)
    assert "usage" not in json.loads(events[-2][5:])  # asked for by the gateway, not passed on


@pytest.mark.parametrize("model", MODELS)
def test_openai_completions(gateway: GatewayServer, model: str) -> None:
    client = oai(gateway)
    answer = client.completions.create(model=model, prompt="Once upon", max_tokens=3)
    assert answer.object == "text_completion"
    assert answer.choices[0].text == " ".join(WORDS[:3])
    assert answer.usage is not None
    streamed = client.completions.create(model=model, prompt="Once upon", stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == " ".join(WORDS)


@pytest.mark.parametrize("model", MODELS)
def test_ollama_chat_and_generate(gateway: GatewayServer, model: str) -> None:
    client = olm(gateway)
    chat = client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=False)
    assert chat.message.content == " ".join(WORDS)
    assert chat.done
    assert chat.done_reason == "stop"
    assert chat.eval_count == len(WORDS)
    parts = list(client.generate(model=model, prompt="hi", stream=True))
    assert "".join(p.response or "" for p in parts) == " ".join(WORDS)
    assert [p.done for p in parts] == [False] * len(WORDS) + [True]
    whole = client.generate(model=model, prompt="hi", options={"num_predict": 2})
    assert whole.response == " ".join(WORDS[:2])
    assert whole.done_reason == "length"


@pytest.mark.parametrize("model", MODELS)
def test_ollama_streams_ndjson_by_default(gateway: GatewayServer, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gateway.url + "/api/chat", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert "".join(line["message"]["content"] for line in lines) == " ".join(WORDS)


def test_ollama_empty_prompt_loads(gateway: GatewayServer) -> None:
    answer = olm(gateway).generate(model=OLLAMA_MODEL)
    assert answer.done
    assert answer.done_reason == "load"


@pytest.mark.parametrize("model", MODELS)
def test_params_pass_through_openai(
    gateway: GatewayServer, model: str, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> None:
    oai(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_tokens=7,
        temperature=0.3,
        top_p=0.9,
        seed=42,
        stop=["END"],
    )
    request = engine_for(model, ollama_engine, tgi_engine).requests_sync()[-1]
    assert request["path"] == "/v1/chat/completions"  # every engine's OpenAI-compatible route
    seen = request["json"]
    expected = {"max_tokens": 7, "temperature": 0.3, "top_p": 0.9, "seed": 42, "stop": ["END"]}
    assert {k: seen[k] for k in expected} == expected
    assert seen["model"] == (OLLAMA_MODEL if model == OLLAMA_MODEL else TGI_ENGINE_MODEL)
    assert seen["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("model", MODELS)
def test_params_pass_through_ollama(
    gateway: GatewayServer, model: str, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> None:
    olm(gateway).generate(
        model=model,
        prompt="hi",
        options={"num_predict": 9, "temperature": 0.5, "top_p": 0.8, "seed": 7, "stop": ["x"]},
    )
    seen = engine_for(model, ollama_engine, tgi_engine).requests_sync()[-1]["json"]
    if model == OLLAMA_MODEL:
        assert seen["options"] == {
            "num_predict": 9,
            "temperature": 0.5,
            "top_p": 0.8,
            "seed": 7,
            "stop": ["x"],
        }
        assert seen["prompt"] == "hi"
    else:  # translated: a templated generate is a chat turn on an OpenAI-only engine
        assert (seen["max_tokens"], seen["temperature"], seen["seed"]) == (9, 0.5, 7)
        assert (seen["top_p"], seen["stop"]) == (0.8, ["x"])
        assert seen["messages"] == [{"role": "user", "content": "hi"}]


def test_max_tokens_defaults_to_the_deployment_limit(
    gateway: GatewayServer, ollama_engine: FakeEngine
) -> None:
    olm(gateway).chat(model=OLLAMA_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert ollama_engine.requests_sync()[-1]["json"]["options"]["num_predict"] == MAX_TOKENS


@pytest.mark.parametrize("model", MODELS)
def test_structured_output_openai(
    gateway: GatewayServer, model: str, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> None:
    answer = oai(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "a city"}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}},
    )
    content = answer.choices[0].message.content
    assert content is not None
    assert set(json.loads(content)) == {"city", "population"}
    seen = engine_for(model, ollama_engine, tgi_engine).requests_sync()[-1]["json"]
    if model == OLLAMA_MODEL:  # forwarded as sent
        assert seen["response_format"]["json_schema"]["schema"] == SCHEMA
    else:  # TGI's own grammar form
        assert seen["response_format"] == {"type": "json", "value": SCHEMA}


@pytest.mark.parametrize("model", MODELS)
def test_structured_output_ollama(
    gateway: GatewayServer, model: str, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> None:
    client = olm(gateway)
    answer = client.generate(model=model, prompt="a city", format=SCHEMA)
    assert set(json.loads(answer.response or "")) == {"city", "population"}
    seen = engine_for(model, ollama_engine, tgi_engine).requests_sync()[-1]
    if model == OLLAMA_MODEL:
        assert seen["json"]["format"] == SCHEMA
    else:
        assert seen["path"] == "/v1/chat/completions"
        assert seen["json"]["response_format"] == {"type": "json", "value": SCHEMA}
    json_mode = client.chat(model=model, messages=[{"role": "user", "content": "x"}], format="json")
    assert isinstance(json.loads(json_mode.message.content or ""), dict)


@pytest.mark.parametrize("model", MODELS)
def test_structured_output_mismatch_is_a_clear_error(
    gateway: GatewayServer, model: str, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> None:
    engine_for(model, ollama_engine, tgi_engine).configure_sync(invalid_json=True)
    with pytest.raises(openai.APIStatusError) as caught:
        oai(gateway).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "a city"}],
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}},
        )
    assert caught.value.status_code == 502
    assert "does not match the JSON schema" in caught.value.message
    body: Any = caught.value.body
    assert body["code"] == "invalid_structured_output"


def test_models_and_tags(gateway: GatewayServer) -> None:
    assert sorted(m.id for m in oai(gateway).models.list()) == sorted(MODELS)
    tags = olm(gateway).list()
    assert sorted(m.model or "" for m in tags.models) == sorted(MODELS)
    assert httpx.get(gateway.url + "/api/version").json()["version"]


def test_request_id_is_accepted_propagated_and_returned(
    gateway: GatewayServer, ollama_engine: FakeEngine
) -> None:
    body = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": "req-123"}
    )
    assert response.headers["x-request-id"] == "req-123"
    assert ollama_engine.requests_sync()[-1]["headers"]["X-Request-ID"] == "req-123"
    generated = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    rid = generated.headers["x-request-id"]
    assert len(rid) == 32
    assert ollama_engine.requests_sync()[-1]["headers"]["X-Request-ID"] == rid


def test_health_ready_docs(gateway: GatewayServer) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    assert httpx.get(gateway.url + "/docs").status_code == 200
    spec = httpx.get(gateway.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/api/chat", "/api/generate"} <= set(spec["paths"])


def test_metrics(gateway: GatewayServer) -> None:
    client = oai(gateway)
    client.chat.completions.create(model=OLLAMA_MODEL, messages=[{"role": "user", "content": "x"}])
    list(
        client.chat.completions.create(
            model=TGI_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    text = httpx.get(gateway.url + "/metrics").text
    route = 'route="/v1/chat/completions"'
    key = 'key="anonymous"'  # auth is off here; with keys, the key's configured name
    assert (
        f'relais_gateway_requests_total{{{key},model="{OLLAMA_MODEL}",{route},status="200"}} 1.0'
        in text
    )
    assert 'model="-"' in text  # unknown model names never become label values
    assert "nope" not in text
    assert f'relais_gateway_time_to_first_token_seconds_count{{model="{TGI_MODEL}"}} 1.0' in text
    assert f'relais_gateway_tokens_total{{{key},kind="completion",model="{TGI_MODEL}"}}' in text
    assert "relais_gateway_request_duration_seconds_bucket" in text
    assert "relais_gateway_inflight_requests{endpoint=" in text


def test_generic_openai_engine(start_gateway: Any, tgi_engine: FakeEngine) -> None:
    """The third engine-table entry: any OpenAI-compatible server (vLLM, llama.cpp)."""
    server = start_gateway([deployment("vllm", "openai", "served-by-vllm", [tgi_engine.url])])
    schema_format: Any = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}
    answer = oai(server).chat.completions.create(
        model="served-by-vllm",
        messages=[{"role": "user", "content": "a city"}],
        response_format=schema_format,
    )
    assert set(json.loads(answer.choices[0].message.content or "")) == {"city", "population"}
    seen = tgi_engine.requests_sync()[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["json"]["response_format"]["json_schema"]["schema"] == SCHEMA
    parts = list(olm(server).generate(model="served-by-vllm", prompt="x", stream=True))
    assert "".join(p.response or "" for p in parts) == " ".join(WORDS)
    assert tgi_engine.requests_sync()[-1]["path"] == "/v1/chat/completions"
    raw = olm(server).generate(
        model="served-by-vllm", prompt="x", raw=True, options={"num_predict": 2}
    )
    assert raw.response == " ".join(WORDS[:2])
    assert tgi_engine.requests_sync()[-1]["path"] == "/v1/completions"
