"""What Open WebUI (0.12) sends, replayed through the real gateway (issue #15).

The request shapes below are Open WebUI's: its background tasks (title, follow-ups, tags) ask for
1000 output tokens, its connection check calls `/api/version` (Ollama connection), its admin
"Unload" sends an empty generate with `keep_alive: 0`, and its direct connections call the
gateway from the browser (CORS). Each test asserts what the engine received, not only what the
client got.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import (
    MAX_TOKENS,
    OLLAMA_MODEL,
    TGI_ENGINE_MODEL,
    TGI_MODEL,
    VLLM_MODEL,
    GatewayFactory,
    GatewayServer,
    deployment,
)

KEY = "sk-webui"
AUTH = {"keys": [{"name": "webui", "key": KEY}]}
BEARER = {"Authorization": f"Bearer {KEY}"}
TITLE_PROMPT = "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat."
TASKS = ["title_generation", "follow_up_generation", "tags_generation"]
ORIGIN = "https://webui.example.com"


@pytest.fixture
def webui_gateway(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> GatewayServer:
    return start_gateway(
        [
            deployment("qwen", "ollama", OLLAMA_MODEL, [ollama_engine.url]),
            deployment("llama", "tgi", TGI_MODEL, [tgi_engine.url]),
        ],
        auth=AUTH,
        cors_allow_origins=[ORIGIN],
    )


def posted(engine: FakeEngine) -> list[dict[str, Any]]:
    return [r["json"] for r in engine.requests_sync() if r["method"] == "POST"]


@pytest.mark.parametrize("task", TASKS)
def test_background_tasks_over_the_limit_are_capped(
    webui_gateway: GatewayServer, ollama_engine: FakeEngine, tgi_engine: FakeEngine, task: str
) -> None:
    """OpenAI connection (max_completion_tokens 1000) and Ollama connection (num_predict 1000):
    answered, with at most the deployment's maxTokens asked of the engine."""
    openai_body = {
        "model": TGI_MODEL,
        "messages": [{"role": "user", "content": TITLE_PROMPT}],
        "stream": False,
        "max_completion_tokens": 1000,
        "metadata": {"task": task, "chat_id": "c1"},
    }
    answer = httpx.post(
        webui_gateway.url + "/v1/chat/completions", json=openai_body, headers=BEARER, timeout=30
    )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert posted(tgi_engine)[-1]["max_completion_tokens"] == MAX_TOKENS
    assert posted(tgi_engine)[-1]["metadata"] == {"task": task, "chat_id": "c1"}  # forwarded
    ollama_body = {
        "model": OLLAMA_MODEL,
        "messages": [{"role": "user", "content": TITLE_PROMPT}],
        "stream": False,
        "options": {"num_predict": 1000},
    }
    native = httpx.post(webui_gateway.url + "/api/chat", json=ollama_body, headers=BEARER)
    assert native.status_code == 200
    assert native.json()["done"] is True
    assert posted(ollama_engine)[-1]["options"]["num_predict"] == MAX_TOKENS


def test_connection_check_with_a_wrong_key_fails(webui_gateway: GatewayServer) -> None:
    """Open WebUI's "Verify connection" for an Ollama connection is GET /api/version."""
    url = webui_gateway.url
    assert httpx.get(url + "/api/version").status_code == 200  # health checks need no key
    assert httpx.get(url + "/api/version", headers=BEARER).status_code == 200
    wrong = httpx.get(url + "/api/version", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401
    assert httpx.get(url + "/", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert httpx.get(url + "/api/tags", headers=BEARER).json()["models"]


@pytest.mark.parametrize("model", [OLLAMA_MODEL, TGI_MODEL])
def test_unload_never_evicts_and_keep_alive_never_reaches_the_engine(
    webui_gateway: GatewayServer,
    ollama_engine: FakeEngine,
    tgi_engine: FakeEngine,
    model: str,
) -> None:
    engine = ollama_engine if model == OLLAMA_MODEL else tgi_engine
    unload = httpx.post(
        webui_gateway.url + "/api/generate",
        json={"model": model, "keep_alive": 0},
        headers=BEARER,
    )
    assert unload.status_code == 200
    assert unload.json()["done_reason"] == "unload"
    assert unload.json()["model"] == model
    assert posted(engine) == []  # nothing was forwarded: nothing was evicted
    load = httpx.post(webui_gateway.url + "/api/generate", json={"model": model}, headers=BEARER)
    assert load.json()["done_reason"] == "load"
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "keep_alive": "5m",
    }
    assert httpx.post(webui_gateway.url + "/api/chat", json=chat, headers=BEARER).is_success
    assert all("keep_alive" not in body for body in posted(engine))
    assert posted(engine)  # the chat itself went through


def test_cors_preflight_and_a_streamed_chat_from_a_browser(
    webui_gateway: GatewayServer,
) -> None:
    preflight = httpx.options(
        webui_gateway.url + "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    other = httpx.options(
        webui_gateway.url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers
    body = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {**BEARER, "Origin": ORIGIN}
    with httpx.stream(
        "POST", webui_gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as stream:
        assert stream.headers["access-control-allow-origin"] == ORIGIN
        assert "X-Request-ID" in stream.headers["access-control-expose-headers"]
        assert "data: [DONE]" in stream.read().decode()
    denied = httpx.post(
        webui_gateway.url + "/v1/chat/completions", json=body, headers={"Origin": ORIGIN}
    )
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == ORIGIN  # the page can read why


def test_cors_is_off_by_default(start_gateway: GatewayFactory, ollama_engine: FakeEngine) -> None:
    server = start_gateway([deployment("qwen", "ollama", OLLAMA_MODEL, [ollama_engine.url])])
    preflight = httpx.options(
        server.url + "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize("engine", ["tgi", "vllm", "ollama"])
def test_the_served_name_always(
    start_gateway: GatewayFactory,
    tgi_engine: FakeEngine,
    vllm_engine: FakeEngine,
    ollama_engine: FakeEngine,
    engine: str,
) -> None:
    """A static deployment with no `model:`: the engine answers with its own id, the client
    sees the name it asked for, in whole answers, every stream line, and errors."""
    fake = {"tgi": tgi_engine, "vllm": vllm_engine, "ollama": ollama_engine}[engine]
    engine_name = {"tgi": TGI_ENGINE_MODEL, "vllm": VLLM_MODEL, "ollama": OLLAMA_MODEL}[engine]
    entry = deployment("d", engine, "my-assistant", [fake.url], engine_model=engine_name)
    if engine == "tgi":  # the config gives no `model:`: TGI still answers with its model id
        entry = entry.model_copy(update={"model": None})
    server = start_gateway([entry])
    chat = {"model": "my-assistant", "messages": [{"role": "user", "content": "hi"}]}
    whole = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=30).json()
    assert whole["model"] == "my-assistant"
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={**chat, "stream": True}
    ) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data:") and "{" in line]
    assert lines
    assert all('"model":"my-assistant"' in line.replace(" ", "") for line in lines)
    native = httpx.post(server.url + "/api/chat", json={**chat, "stream": True}).text
    assert all('"my-assistant"' in line for line in native.splitlines() if line)
    assert engine_name not in native
