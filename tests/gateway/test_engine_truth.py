"""What the gateway learns from the engine and the deployment (issue #14): what a model serves,
and the engine's own error fields, reach the client in its dialect."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest
from relais_gateway.config import StaticDeployment
from relais_gateway.errors import EngineRejected, from_engine_status

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import VLLM_MODEL, GatewayFactory, deployment

CHAT = [{"role": "user", "content": "hi"}]


def _with_task(name: str, model: str, url: str, task: str) -> StaticDeployment:
    entry = deployment(name, "vllm", model, [url], engine_model=VLLM_MODEL)
    return entry.model_copy(update={"task": task})


def test_an_embedding_model_refuses_chat_in_each_dialect(
    start_gateway: GatewayFactory, vllm_engine: FakeEngine
) -> None:
    server = start_gateway(
        [
            _with_task("e", "embedder", vllm_engine.url, "embed"),
            _with_task("g", "writer", vllm_engine.url, "generate"),
        ]
    )
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="embedder", messages=CHAT)  # type: ignore[arg-type]
    assert chat.value.code == "unsupported_for_model"
    assert "serves embeddings only" in chat.value.message
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model="writer", input="x")
    assert "serves text generation only" in embed.value.message
    assert client.embeddings.create(model="embedder", input="x").data[0].embedding
    with pytest.raises(ollama.ResponseError) as native:
        ollama.Client(host=server.url).chat(model="embedder", messages=CHAT)
    assert native.value.status_code == 400
    assert "serves embeddings only" in native.value.error
    assert not [r for r in vllm_engine.requests_sync() if r["path"] == "/v1/chat/completions"]
    cards = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert cards["embedder"]["capabilities"] == ["embeddings"]
    assert cards["writer"]["capabilities"] == ["chat.completions", "completions"]
    shown = ollama.Client(host=server.url).show("embedder")
    assert shown.capabilities == ["embedding"]


def test_engine_errors_keep_their_param_and_code(
    start_gateway: GatewayFactory, vllm_engine: FakeEngine
) -> None:
    """vLLM names the offending field in `param`: the client sees it, not null."""
    entry = deployment("v", "vllm", "alias", [vllm_engine.url], engine_model="not-served")
    server = start_gateway([entry])
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="alias", messages=CHAT)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "model"
    assert "does not exist" in body["message"]


def test_engine_error_fields_are_read_whatever_the_shape() -> None:
    vllm = b'{"error": {"message": "bad", "type": "BadRequestError", "param": "max_tokens",'
    vllm += b' "code": 400}}'
    error = from_engine_status(400, vllm)
    assert isinstance(error, EngineRejected)
    assert (error.param, error.code) == ("max_tokens", "engine_rejected_request")
    named = from_engine_status(400, b'{"error": {"message": "m", "code": "context_too_long"}}')
    assert named.code == "context_too_long"
    assert from_engine_status(422, b'{"error": "Input validation error"}').param is None
    hostile = from_engine_status(400, b'{"error": {"message": "m", "param": {"x": 1}}}')
    assert hostile.param is None  # engine fields are never trusted to be strings
    assert len(from_engine_status(400, b"x" * 100_000).message) < 600


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank", "/score", "/tokenize", "/detokenize"])
def test_vllm_routes_beside_v1_reach_vllm_only(
    start_gateway: GatewayFactory, vllm_engine: FakeEngine, ollama_engine: FakeEngine, path: str
) -> None:
    server = start_gateway(
        [
            deployment("v", "vllm", "v", [vllm_engine.url], engine_model=VLLM_MODEL),
            deployment("o", "ollama", "o", [ollama_engine.url]),
        ]
    )
    forwarded = httpx.post(server.url + path, json={"model": "v", "query": "q", "prompt": "x"})
    assert forwarded.status_code != 501  # vLLM serves it: forwarded (this fake answers its 404)
    refused = httpx.post(server.url + path, json={"model": "o", "query": "q"})
    assert refused.status_code == 501
    assert refused.json()["error"]["code"] == "not_supported"
    assert not ollama_engine.requests_sync()
