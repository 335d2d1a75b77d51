"""Every row of the validation table, in both error shapes, and the API-key checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import (
    MAX_TOKENS,
    OLLAMA_MODEL,
    TGI_MODEL,
    VLLM_MODEL,
    GatewayFactory,
    GatewayServer,
    deployment,
)

CHAT = [{"role": "user", "content": "hi"}]


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object, after checking the shape."""
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until `predicate()` holds (generous: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def post(gateway: GatewayServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(gateway.url + path, **{"timeout": 30, **kwargs})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json_openai(gateway: GatewayServer, path: str) -> None:
    response = post(
        gateway, path, content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "malformed JSON" in openai_error(response)["message"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_malformed_json_ollama(gateway: GatewayServer, path: str) -> None:
    response = post(
        gateway, path, content=b"not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert "malformed JSON" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": OLLAMA_MODEL}, "messages"),
        ({"model": OLLAMA_MODEL, "messages": []}, "messages"),
        (
            {"model": OLLAMA_MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            "messages.0.role",
        ),
        ({"model": OLLAMA_MODEL, "messages": CHAT, "temperature": 5}, "temperature"),
        ({"model": OLLAMA_MODEL, "messages": CHAT, "max_tokens": "many"}, "max_tokens"),
        ({"model": OLLAMA_MODEL, "messages": CHAT, "n": 0}, "n"),
        ({"messages": CHAT}, "model"),
        ([1, 2, 3], None),
    ],
)
def test_schema_violation_names_the_field(
    gateway: GatewayServer, body: Any, field: str | None
) -> None:
    response = post(gateway, "/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = openai_error(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    if field:
        assert field in error["message"]


def test_schema_violation_ollama(gateway: GatewayServer) -> None:
    body = {"model": OLLAMA_MODEL, "prompt": "x", "options": {"top_p": 7}}
    response = post(gateway, "/api/generate", json=body)
    assert response.status_code == 400
    assert "options.top_p" in response.json()["error"]


def test_invalid_json_schema_in_request(gateway: GatewayServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}
    response = post(
        gateway,
        "/v1/chat/completions",
        json={"model": OLLAMA_MODEL, "messages": CHAT, "response_format": fmt},
    )
    assert response.status_code == 400
    assert openai_error(response)["param"] == "response_format.json_schema.schema"


def test_unknown_model(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    body: Any = caught.value.body
    assert body["code"] == "model_not_found"
    with pytest.raises(ollama.ResponseError) as oll:
        ollama.Client(host=gateway.url).chat(model="gpt-99", messages=CHAT)
    assert oll.value.status_code == 404
    assert "not found" in oll.value.error


@pytest.mark.parametrize("model", [OLLAMA_MODEL, TGI_MODEL])
def test_max_tokens_over_the_limit_is_capped(
    gateway: GatewayServer, ollama_engine: FakeEngine, tgi_engine: FakeEngine, model: str
) -> None:
    """The default policy (Cap): a larger ask is lowered to the limit, on both dialects."""
    engine = ollama_engine if model == OLLAMA_MODEL else tgi_engine
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=10 * MAX_TOKENS
    )
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= MAX_TOKENS
    ollama.Client(host=gateway.url).generate(
        model=model, prompt="x", options={"num_predict": 10 * MAX_TOKENS}
    )
    sent = [r["json"] for r in engine.requests_sync() if r["method"] == "POST"]
    assert len(sent) == 2
    assert sent[0]["max_tokens"] == MAX_TOKENS
    assert MAX_TOKENS in (sent[1].get("max_tokens"), sent[1].get("options", {}).get("num_predict"))
    text = httpx.get(gateway.url + "/metrics").text
    assert f'relais_gateway_capped_requests_total{{model="{model}"}} 2.0' in text


def test_max_tokens_policy_reject(start_gateway: GatewayFactory, ollama_engine: FakeEngine) -> None:
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url], maxTokensPolicy="Reject")]
    )
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=OLLAMA_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=65
        )
    assert caught.value.code == "max_tokens_exceeded"
    with pytest.raises(ollama.ResponseError) as oll:
        ollama.Client(host=server.url).generate(
            model=OLLAMA_MODEL, prompt="x", options={"num_predict": MAX_TOKENS + 1}
        )
    assert oll.value.status_code == 400
    assert not ollama_engine.requests_sync()


def test_body_over_the_size_limit(start_gateway: GatewayFactory, ollama_engine: FakeEngine) -> None:
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url])], max_body_bytes=2000
    )
    big = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = post(server, "/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert openai_error(response)["code"] == "payload_too_large"

    def chunks() -> Any:  # no Content-Length: the limit is counted while reading
        yield b'{"model": "' + OLLAMA_MODEL.encode() + b'", "prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    chunked = post(server, "/api/generate", content=chunks())
    assert chunked.status_code == 413
    assert "limit" in chunked.json()["error"]
    assert ollama_engine.requests_sync() == []
    small = post(
        server, "/api/generate", json={"model": OLLAMA_MODEL, "prompt": "x", "stream": False}
    )
    assert small.status_code == 200


def test_unknown_route_and_method_are_shaped(gateway: GatewayServer) -> None:
    missing = httpx.get(gateway.url + "/nothing")
    assert missing.status_code == 404
    # Any POST /v1/... naming a model is forwarded; another method there is a 405.
    not_post = httpx.get(gateway.url + "/v1/nothing")
    assert not_post.status_code == 405
    openai_error(not_post)
    wrong = httpx.get(gateway.url + "/api/chat")
    assert wrong.status_code == 405
    assert set(wrong.json()) == {"error"}


KEYS = {
    "keys": [
        {"name": "team-a", "key": "sk-team-a", "models": [OLLAMA_MODEL]},
        {"name": "team-b", "key": "sk-team-b", "requestsPerMinute": 2},
    ]
}


@pytest.fixture
def keyed(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> GatewayServer:
    return start_gateway(
        [
            deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url]),
            deployment("l", "tgi", TGI_MODEL, [tgi_engine.url]),
        ],
        auth=KEYS,
    )


def test_missing_and_bad_key(keyed: GatewayServer) -> None:
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    missing = post(keyed, "/v1/chat/completions", json=body)
    assert missing.status_code == 401
    assert openai_error(missing)["type"] == "authentication_error"
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=OLLAMA_MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(ollama.ResponseError) as oll:
        ollama.Client(host=keyed.url).chat(model=OLLAMA_MODEL, messages=CHAT)
    assert oll.value.status_code == 401
    basic = post(keyed, "/api/chat", json=body, headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401
    assert "malformed" in basic.json()["error"]


def test_model_not_allowed_for_key(keyed: GatewayServer) -> None:
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-team-a", max_retries=0)
    assert [m.id for m in client.models.list()] == [OLLAMA_MODEL]
    client.chat.completions.create(model=OLLAMA_MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as forbidden:  # exactly as an unknown model
        client.chat.completions.create(model=TGI_MODEL, messages=[{"role": "user", "content": "x"}])
    assert forbidden.value.body == {
        "message": f"model {TGI_MODEL!r} not found",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    ollama_client = ollama.Client(host=keyed.url, headers={"Authorization": "Bearer sk-team-a"})
    with pytest.raises(ollama.ResponseError) as oll:
        ollama_client.chat(model=TGI_MODEL, messages=CHAT)
    assert oll.value.status_code == 404


def test_rate_limit_gives_retry_after(keyed: GatewayServer) -> None:
    headers = {"Authorization": "Bearer sk-team-b"}
    body = {"model": TGI_MODEL, "messages": CHAT}
    statuses = [post(keyed, "/v1/chat/completions", json=body, headers=headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    limited = statuses[-1]
    assert int(limited.headers["retry-after"]) >= 1
    assert openai_error(limited)["code"] == "rate_limit_exceeded"
    other = post(
        keyed,
        "/v1/chat/completions",
        json={"model": OLLAMA_MODEL, "messages": CHAT},
        headers={"Authorization": "Bearer sk-team-a"},
    )
    assert other.status_code == 200  # buckets are per key


def test_no_ready_replica(start_gateway: GatewayFactory) -> None:
    server = start_gateway([deployment("q", "ollama", OLLAMA_MODEL, [])])
    response = post(server, "/v1/chat/completions", json={"model": OLLAMA_MODEL, "messages": CHAT})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert openai_error(response)["code"] == "no_ready_replica"
    ollama_response = post(server, "/api/generate", json={"model": OLLAMA_MODEL, "prompt": "x"})
    assert ollama_response.status_code == 503
    assert "no ready replica" in ollama_response.json()["error"]


def test_over_the_concurrency_limit_requests_wait_in_line(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    ollama_engine.configure_sync(token_delay_ms=150)
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url], maxConcurrentRequests=1)]
    )
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    results: list[int] = []

    def waiter() -> None:
        results.append(post(server, "/api/chat", json={**body, "stream": False}).status_code)

    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=30) as slow:
        assert slow.status_code == 200
        thread = threading.Thread(target=waiter)
        thread.start()
        wait_until(lambda: server.gateway.admission.waiting.get(OLLAMA_MODEL) == 1)
        assert server.gateway.balancer.inflight(OLLAMA_MODEL) == 1  # the limit holds
        slow.read()
    thread.join(timeout=30)
    assert results == [200]
    assert server.gateway.admission.waiting[OLLAMA_MODEL] == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert f'relais_gateway_waiting_requests{{model="{OLLAMA_MODEL}"}} 0.0' in metrics
    assert f'relais_gateway_wait_seconds_count{{model="{OLLAMA_MODEL}"}} 1.0' in metrics


@pytest.mark.parametrize(
    ("settings", "why"),
    [({"max_waiting_requests": 0}, "queue is full"), ({"queue_timeout_s": 0.3}, "no slot within")],
)
def test_past_the_queue_bounds_429_with_retry_after(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, settings: dict[str, Any], why: str
) -> None:
    ollama_engine.configure_sync(token_delay_ms=400)
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url], maxConcurrentRequests=1)],
        **settings,
    )
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=30) as slow:
        busy = post(server, "/api/chat", json=body)
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "5"
        assert why in busy.json()["error"]
        openai_busy = post(server, "/v1/chat/completions", json=body)
        assert openai_error(openai_busy)["code"] == "concurrency_limit_exceeded"
        assert slow.status_code == 200
        slow.read()
    assert post(server, "/api/chat", json={**body, "stream": False}).status_code == 200


def test_a_waiting_client_that_leaves_never_reaches_the_engine(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    ollama_engine.configure_sync(token_delay_ms=300)
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url], maxConcurrentRequests=1)]
    )
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=30) as slow:
        with pytest.raises(httpx.ReadTimeout):
            post(server, "/api/chat", json={**body, "stream": False}, timeout=0.5)
        wait_until(lambda: server.gateway.admission.waiting.get(OLLAMA_MODEL) == 0)
        slow.read()
    assert len(ollama_engine.requests_sync()) == 1


@pytest.mark.parametrize(
    "path", ["/v1/../api/pull", "/v1/x/../../api/pull", "/v1/%2e%2e/api/pull", "/v1/a//b"]
)
def test_forwarded_routes_never_leave_v1(
    gateway: GatewayServer, ollama_engine: FakeEngine, path: str
) -> None:
    body = {"model": OLLAMA_MODEL, "name": "evil"}
    response = httpx.post(gateway.url + path, json=body, timeout=30)
    assert response.status_code in (403, 404, 405)  # 403: the client resolved it to /api/pull
    assert not [r for r in ollama_engine.requests_sync() if r["path"].startswith("/api")]


def test_any_v1_route_naming_a_model_is_forwarded(
    start_gateway: GatewayFactory, vllm_engine: FakeEngine
) -> None:
    gateway = start_gateway([deployment("v", "vllm", VLLM_MODEL, [vllm_engine.url])])
    body = {"model": VLLM_MODEL, "input": "hi", "new_param": [1]}
    response = httpx.post(gateway.url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 200
    sent = [r["json"] for r in vllm_engine.requests_sync() if r["path"] == "/v1/responses"]
    assert sent[-1]["new_param"] == [1]  # forwarded as sent...
    assert sent[-1]["max_output_tokens"] == MAX_TOKENS  # ...with the owned fields written
    rejected = httpx.post(gateway.url + "/v1/score", json={"model": VLLM_MODEL}, timeout=30)
    assert rejected.status_code == 404  # this fake serves no /v1/score: vLLM's own 404
    error = openai_error(rejected)
    assert error["code"] == "engine_rejected_request"
    assert error["message"].startswith("engine answered 404")
    not_served = httpx.post(gateway.url + "/v1/rerank", json={"model": VLLM_MODEL}, timeout=30)
    assert not_served.status_code != 501  # vLLM serves rerank: forwarded
    admin = httpx.post(gateway.url + "/v1/load_lora_adapter", json={"model": VLLM_MODEL})
    assert admin.status_code == 404  # not an inference route: never forwarded
    missing = httpx.post(gateway.url + "/v1/responses", json={"input": "x"}, timeout=30)
    assert openai_error(missing)["param"] == "model"
