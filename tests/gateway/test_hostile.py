"""Hostile clients (issue #19): every attack a tenant of a shared gateway could try, each with the
safe answer, checked on what the ENGINE received (through recording proxies), not only on what
the client got back.

The shared gateway (`gw`) runs the real CLI as a subprocess in front of fake engines behind
`RecordingProxy`s (see `hostile_fixtures`). Cases that need other settings or deployments start
their own gateway; memory cases measure the gateway process's RSS while a misbehaving engine
(`tests.fakes.misbehaving`) or a client sends far too much.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.misbehaving import MODES, MisbehavingEngine
from tests.fakes.process import FakeEngine
from tests.fakes.recording import RecordingProxy
from tests.fakes.servers import GatewayProcess, free_port
from tests.gateway.hostile_fixtures import (
    A_MODELS,
    CHAT,
    KEY_A,
    KEY_ALL,
    MAX_TOKENS,
    OLLAMA_A,
    QUIET_AUTH_LIMIT,
    VLLM_A,
    VLLM_B,
    EngineStack,
    PeakRss,
    assert_capped,
    base_config,
    bearer,
    body_for,
    deep_array,
    deployment,
    engine_stack,
    keys,
    log_path,
    running_gateway,
)

MiB = 1024 * 1024
RSS_BOUND = 32 * MiB
"""How much the gateway's resident memory may grow while it refuses something huge."""


@pytest.fixture(scope="module")
def stack() -> Iterator[EngineStack]:
    with engine_stack() as engines:
        yield engines


@pytest.fixture(scope="module")
def gw(stack: EngineStack) -> Iterator[GatewayProcess]:
    """The shared gateway: every deployment of `base_config`, default settings."""
    with running_gateway(base_config(stack), env=QUIET_AUTH_LIMIT) as running:
        yield running


@pytest.fixture
def engines(stack: EngineStack) -> EngineStack:
    """The engine stack with empty recordings."""
    stack.clear()
    return stack


def post(
    gw: GatewayProcess, path: str, body: Any, key: str | None = KEY_A, **kwargs: Any
) -> httpx.Response:
    headers = {**(bearer(key) if key else {}), **kwargs.pop("headers", {})}
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=60, **kwargs)


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object, after checking its shape."""
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, response.text
    return error


def ollama_error(response: httpx.Response) -> str:
    """The Ollama error message, after checking the shape `{"error": "..."}`."""
    body = response.json()
    assert set(body) == {"error"}, response.text
    assert isinstance(body["error"], str)
    return body["error"]


def assert_error(response: httpx.Response, path: str, status: int, code: str | None) -> None:
    """`status`, in the dialect's shape; on OpenAI routes with `code`."""
    assert response.status_code == status, response.text[:500]
    if path.startswith("/api/"):
        ollama_error(response)
    else:
        assert openai_error(response)["code"] == code


def nothing_reached(engines: EngineStack) -> None:
    assert engines.recorded_bodies() == []


# ================================================================ cross-model


CROSS_MODEL = [
    pytest.param(
        "/api/chat",
        {"model": "model-a", "options": {"model": VLLM_B}, "messages": CHAT, "stream": False},
        "model-a",
        False,
        id="api-chat-translated-options.model",
    ),
    pytest.param(
        "/api/generate",
        {"model": "model-a", "options": {"model": "model-b"}, "prompt": "x", "stream": False},
        "model-a",
        False,
        id="api-generate-translated-options.model",
    ),
    pytest.param(
        "/api/chat",
        {"model": "ollama-a", "options": {"model": "secret-b:7b"}, "messages": CHAT},
        "ollama-a",
        True,
        id="api-chat-native-options.model",
    ),
    pytest.param(
        "/api/chat",
        {"model": "model-a", "options": {"stream": True}, "messages": CHAT, "stream": False},
        "model-a",
        False,
        id="api-chat-translated-options.stream",
    ),
    pytest.param(
        "/api/generate",
        {"model": "model-a", "options": {"stream": False}, "prompt": "x"},
        "model-a",
        True,
        id="api-generate-translated-options.stream-false",
    ),
    pytest.param(
        "/api/chat",
        {"model": "ollama-a", "options": {"stream": True}, "messages": CHAT, "stream": False},
        "ollama-a",
        False,
        id="api-chat-native-options.stream",
    ),
    pytest.param(
        "/api/embed",
        {"model": "model-a", "options": {"model": VLLM_B}, "input": "x"},
        "model-a",
        False,
        id="api-embed-translated-options.model",
    ),
    pytest.param(
        "/v1/chat/completions",
        {
            "model": "model-a",
            "messages": CHAT,
            "extra_body": {"model": VLLM_B},
            "extra": {"model": VLLM_B, "nested": {"model": VLLM_B}},
            "metadata": {"model": VLLM_B},
            "served_model_name": VLLM_B,
        },
        "model-a",
        False,
        id="chat-nested-extra-fields",
    ),
    pytest.param(
        "/v1/chat/completions",
        {
            "model": "model-a",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True, "model": VLLM_B, "stream": False},
        },
        "model-a",
        True,
        id="chat-stream_options-model-and-stream",
    ),
    pytest.param(
        "/v1/chat/completions",
        {
            "model": "model-a",
            "messages": CHAT,
            "stream": False,
            "stream_options": {"include_usage": True, "stream": True},
        },
        "model-a",
        False,
        id="chat-stream_options-on-whole-answer",
    ),
    pytest.param(
        "/v1/completions",
        {"model": "openai-a", "prompt": "x", "models": [VLLM_B], "model_name": VLLM_B},
        "openai-a",
        False,
        id="completions-openai-kind-array-and-sibling",
    ),
    pytest.param(
        "/v1/embeddings",
        {"model": "model-a", "input": ["x"], "extra_body": {"model": VLLM_B}},
        "model-a",
        False,
        id="embeddings-extra_body",
    ),
    pytest.param(
        "/v1/responses",
        {
            "model": "model-a",
            "input": "x",
            "metadata": {"model": VLLM_B},
            "models": [VLLM_B, "model-b"],
            "text": {"model": VLLM_B},
        },
        "model-a",
        False,
        id="catch-all-responses-other-fields",
    ),
]


def engine_streams(path: str, body: dict[str, Any]) -> Any:
    """Whether the engine will stream: Ollama's native routes stream unless told not to."""
    return body.get("stream", path.startswith("/api/"))


@pytest.mark.parametrize(("path", "body", "served", "stream"), CROSS_MODEL)
def test_only_the_top_level_model_reaches_the_engine(
    gw: GatewayProcess,
    engines: EngineStack,
    path: str,
    body: dict[str, Any],
    served: str,
    stream: bool,
) -> None:
    """A key allowed only model A names B everywhere but in `model`: the engine gets A, and the
    stream mode the gateway decided (the body's `stream`, never a nested one)."""
    response = post(gw, path, body)
    assert response.status_code != 500
    if path != "/v1/responses":  # the fake vLLM serves no /v1/responses: its 404 is passed on
        assert response.status_code == 200, response.text[:500]
    proxy = engines.proxy_of(served)
    received = proxy.forwarded()
    assert received, "nothing reached the engine"
    expected = {"model-a": VLLM_A, "openai-a": VLLM_A, "ollama-a": OLLAMA_A}[served]
    for record in received:
        assert record.json["model"] == expected, record.json
        assert engine_streams(record.path, record.json) is stream, record.json
    others = [p for p in engines.proxies if p is not proxy]
    assert all(p.forwarded() == [] for p in others)


def test_duplicate_model_keys_reach_the_engine_as_the_gateway_read_them(
    gw: GatewayProcess, engines: EngineStack
) -> None:
    """`{"model": "model-b", "model": "model-a"}`: whichever one the gateway authorises is the one
    the engine gets; a parser disagreement must not smuggle B past the allowlist."""
    raw = (
        b'{"model": "model-b", "messages": [{"role": "user", "content": "hi"}], "model": "model-a"}'
    )
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        content=raw,
        headers={**bearer(KEY_A), "content-type": "application/json"},
        timeout=60,
    )
    received = engines.vllm_proxy.forwarded()
    if response.status_code == 200:
        assert len(received) == 1
        assert b"model-b" not in received[0].body
        assert received[0].json["model"] == VLLM_A
    else:
        assert response.status_code in (400, 404), response.text
        assert received == []


FORBIDDEN_ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/models/{model}"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
]


def ask_for(gw: GatewayProcess, method: str, route: str, model: str) -> httpx.Response:
    if method == "GET":
        url = gw.url + route.format(model=model)
        return httpx.get(url, headers=bearer(KEY_A), timeout=60)
    body = {"model": model} if route == "/api/show" else body_for(route, model)
    return post(gw, route, body)


@pytest.mark.parametrize("forbidden", ["model-b", "ollama-b"])
@pytest.mark.parametrize(("method", "route"), FORBIDDEN_ROUTES)
def test_forbidden_model_answers_exactly_as_an_unknown_one(
    gw: GatewayProcess, engines: EngineStack, method: str, route: str, forbidden: str
) -> None:
    """A model the key may not use is indistinguishable from one that does not exist."""
    denied = ask_for(gw, method, route, forbidden)
    unknown = ask_for(gw, method, route, "no-such-model")
    assert denied.status_code == unknown.status_code == 404, (denied.text, unknown.text)
    assert denied.json() == json.loads(unknown.text.replace("no-such-model", forbidden))
    if route.startswith("/api/"):
        assert denied.json() == {"error": f"model '{forbidden}' not found"}
    else:
        assert denied.json() == {
            "error": {
                "message": f"model '{forbidden}' not found",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
    nothing_reached(engines)


def test_model_lists_show_only_allowed_models(gw: GatewayProcess) -> None:
    listed = httpx.get(gw.url + "/v1/models", headers=bearer(KEY_A), timeout=30).json()
    assert {m["id"] for m in listed["data"]} == set(A_MODELS)
    tags = httpx.get(gw.url + "/api/tags", headers=bearer(KEY_A), timeout=30).json()
    assert {m["name"] for m in tags["models"]} == set(A_MODELS)


@pytest.mark.parametrize(
    "name",
    [
        "Model-B",
        "MODEL-B",
        "model-b ",
        " model-b",
        "model-b\u200b",
        "model\u2010b",
        VLLM_B,
        "model-b/",
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_lookalike_names_never_reach_another_model(
    gw: GatewayProcess, engines: EngineStack, path: str, name: str
) -> None:
    """Case, spaces, invisible characters and B's engine name: unknown to key A (404), and the
    engine never hears of B."""
    response = post(gw, path, body_for(path, name))
    assert response.status_code == 404, response.text[:300]
    nothing_reached(engines)


@pytest.mark.parametrize("stream", [False, True])
def test_forbidden_model_stream_is_404_too(
    gw: GatewayProcess, engines: EngineStack, stream: bool
) -> None:
    for path in ("/v1/chat/completions", "/api/chat"):
        denied = post(gw, path, body_for(path, "model-b", stream=stream))
        assert denied.status_code == 404, denied.text[:300]
    nothing_reached(engines)


# ================================================================ token cap


TOKEN_CAP = [
    pytest.param("/v1/chat/completions", "model-a", {"max_tokens": 100000}, id="chat-max_tokens"),
    pytest.param(
        "/v1/chat/completions", "model-a", {"max_tokens": 100000.0}, id="chat-max_tokens-float"
    ),
    pytest.param(
        "/v1/chat/completions",
        "model-a",
        {"max_completion_tokens": 100000},
        id="chat-max_completion_tokens",
    ),
    pytest.param(
        "/v1/chat/completions",
        "model-a",
        {"max_tokens": 10, "max_completion_tokens": 100000},
        id="chat-both-fields",
    ),
    pytest.param("/v1/completions", "model-a", {"max_tokens": 1e5}, id="completions-float"),
    pytest.param(
        "/v1/responses", "model-a", {"max_output_tokens": 100000}, id="responses-max_output_tokens"
    ),
    pytest.param(
        "/v1/responses",
        "model-a",
        {"max_output_tokens": 100000.0},
        id="responses-max_output_tokens-float",
    ),
    pytest.param("/v1/chat/completions", "ollama-a", {"max_tokens": 100000}, id="chat-on-ollama"),
    pytest.param("/v1/chat/completions", "tgi-a", {"max_tokens": 100000}, id="chat-on-tgi"),
    pytest.param(
        "/api/chat", "model-a", {"options": {"num_predict": 100000}}, id="api-chat-translated"
    ),
    pytest.param(
        "/api/chat", "ollama-a", {"options": {"num_predict": 100000.0}}, id="api-chat-native-float"
    ),
    pytest.param(
        "/api/chat", "ollama-a", {"options": {"num_predict": -1}}, id="api-chat-native-infinite"
    ),
    pytest.param(
        "/api/generate", "ollama-a", {"options": {"num_predict": -2}}, id="api-generate-fill-ctx"
    ),
    pytest.param(
        "/api/chat",
        "model-a",
        {"options": {"max_tokens": 100000}},
        id="api-chat-options.max_tokens",
    ),
    pytest.param(
        "/api/generate",
        "model-a",
        {"options": {"max_completion_tokens": 100000}},
        id="api-generate-options.max_completion_tokens",
    ),
    pytest.param(
        "/api/generate",
        "tgi-a",
        {"options": {"max_tokens": 100000.0, "num_predict": 100000}},
        id="api-generate-tgi-options",
    ),
    pytest.param(
        "/api/chat",
        "ollama-a",
        {"options": {"max_tokens": 100000, "max_completion_tokens": 100000}},
        id="api-chat-native-openai-names",
    ),
    pytest.param("/v1/chat/completions", "model-a", {}, id="chat-nothing-asked"),
    pytest.param("/v1/completions", "model-a", {}, id="completions-nothing-asked"),
    pytest.param("/v1/responses", "model-a", {}, id="responses-nothing-asked"),
    pytest.param("/api/chat", "ollama-a", {}, id="api-chat-native-nothing-asked"),
    pytest.param("/api/generate", "model-a", {}, id="api-generate-translated-nothing-asked"),
]


@pytest.mark.parametrize(("path", "served", "extra"), TOKEN_CAP)
def test_engine_never_receives_more_than_max_tokens(
    gw: GatewayProcess, engines: EngineStack, path: str, served: str, extra: dict[str, Any]
) -> None:
    """`maxTokensPolicy: Cap` (the default): whatever field the client asks in, int or float,
    the engine reads at most 64; when nothing is asked the engine gets the limit."""
    response = post(gw, path, body_for(path, served, **extra))
    assert response.status_code != 500
    if path != "/v1/responses":
        assert response.status_code == 200, response.text[:500]
    received = engines.proxy_of(served).forwarded()
    assert received, "nothing reached the engine"
    for record in received:
        assert_capped(record.path, record.json)


@pytest.mark.parametrize(
    ("path", "served", "extra", "field", "value"),
    [
        pytest.param("/v1/chat/completions", "model-a", {"max_tokens": 10}, None, 10, id="chat"),
        pytest.param(
            "/v1/responses",
            "model-a",
            {"max_output_tokens": 12},
            "max_output_tokens",
            12,
            id="responses",
        ),
        pytest.param(
            "/api/chat",
            "ollama-a",
            {"options": {"num_predict": 9}},
            "num_predict",
            9,
            id="api-chat-native",
        ),
    ],
)
def test_an_ask_under_the_cap_reaches_the_engine_unchanged(
    gw: GatewayProcess,
    engines: EngineStack,
    path: str,
    served: str,
    extra: dict[str, Any],
    field: str | None,
    value: int,
) -> None:
    post(gw, path, body_for(path, served, **extra))
    [record] = engines.proxy_of(served).forwarded()
    if field == "num_predict":
        assert record.json["options"]["num_predict"] == value
    elif field is not None:
        assert record.json[field] == value
    else:
        limits = [record.json.get(f) for f in ("max_tokens", "max_completion_tokens")]
        assert value in limits, record.json
        assert all(v in (None, value) for v in limits), record.json


@pytest.mark.parametrize(
    ("path", "served", "extra"),
    [
        pytest.param("/v1/chat/completions", "model-a", {"max_tokens": 5.5}, id="chat"),
        pytest.param(
            "/v1/chat/completions", "model-a", {"max_completion_tokens": 5.5}, id="chat-mct"
        ),
        pytest.param("/v1/completions", "model-a", {"max_tokens": 5.5}, id="completions"),
        pytest.param("/v1/responses", "model-a", {"max_output_tokens": 5.5}, id="responses"),
        pytest.param("/api/chat", "ollama-a", {"options": {"num_predict": 5.5}}, id="api-chat"),
        pytest.param(
            "/api/generate", "model-a", {"options": {"num_predict": 5.5}}, id="api-generate"
        ),
    ],
)
def test_non_integral_token_limit_is_400(
    gw: GatewayProcess, engines: EngineStack, path: str, served: str, extra: dict[str, Any]
) -> None:
    response = post(gw, path, body_for(path, served, **extra))
    assert response.status_code == 400, response.text[:500]
    if path.startswith("/api/"):
        ollama_error(response)
    else:
        openai_error(response)
    nothing_reached(engines)


@pytest.fixture(scope="module")
def reject_gw(stack: EngineStack) -> Iterator[GatewayProcess]:
    """A gateway whose deployments reject, rather than cap, an ask over `maxTokens`."""
    policy = {"maxTokensPolicy": "Reject"}
    config = {
        "deployments": [
            deployment("model-a", "vllm", VLLM_A, stack.vllm_proxy.url, **policy),
            deployment("ollama-a", "ollama", OLLAMA_A, stack.ollama_proxy.url, **policy),
        ],
        "auth": keys(),
    }
    with running_gateway(config, env=QUIET_AUTH_LIMIT) as running:
        yield running


@pytest.mark.parametrize(
    ("path", "served", "extra"),
    [
        pytest.param("/v1/chat/completions", "model-a", {"max_tokens": 65}, id="chat"),
        pytest.param(
            "/v1/chat/completions", "model-a", {"max_completion_tokens": 1e5}, id="chat-mct-float"
        ),
        pytest.param("/v1/completions", "model-a", {"max_tokens": 100000}, id="completions"),
        pytest.param("/v1/responses", "model-a", {"max_output_tokens": 100000}, id="responses"),
        pytest.param("/api/chat", "ollama-a", {"options": {"num_predict": 100000}}, id="native"),
        pytest.param(
            "/api/generate", "model-a", {"options": {"num_predict": 100000}}, id="translated"
        ),
    ],
)
def test_reject_policy_refuses_an_ask_over_the_limit(
    reject_gw: GatewayProcess,
    engines: EngineStack,
    path: str,
    served: str,
    extra: dict[str, Any],
) -> None:
    response = post(reject_gw, path, body_for(path, served, **extra))
    assert_error(response, path, 400, "max_tokens_exceeded")
    nothing_reached(engines)


def test_reject_policy_forwards_an_ask_at_the_limit(
    reject_gw: GatewayProcess, engines: EngineStack
) -> None:
    response = post(
        reject_gw,
        "/v1/chat/completions",
        body_for("/v1/chat/completions", "model-a", max_tokens=MAX_TOKENS),
    )
    assert response.status_code == 200, response.text
    [record] = engines.vllm_proxy.forwarded()
    assert record.json["max_tokens"] == MAX_TOKENS


# ================================================================ amplification


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_ollama_options_n_never_reaches_an_openai_engine(
    gw: GatewayProcess, engines: EngineStack, path: str
) -> None:
    """Translation forwards Ollama options only: `n`/`best_of` multiply the engine's work."""
    options = {"n": 500, "best_of": 500, "temperature": 0.25}
    response = post(gw, path, body_for(path, "model-a", options=options))
    assert response.status_code == 200, response.text[:500]
    [record] = engines.vllm_proxy.forwarded()
    assert "n" not in record.json, record.json
    assert "best_of" not in record.json, record.json
    assert "n" not in (record.json.get("options") or {}), record.json


@pytest.mark.parametrize(
    ("path", "extra", "params"),
    [
        pytest.param(
            "/v1/completions", {"prompt": ["x"] * 50, "n": 128}, {"n", "prompt"}, id="50x128"
        ),
        pytest.param("/v1/completions", {"prompt": ["x"] * 5, "n": 4}, {"n", "prompt"}, id="5x4"),
        pytest.param(
            "/v1/completions",
            {"prompt": "x", "n": 1, "best_of": 500},
            {"best_of", "n"},
            id="best_of",
        ),
        pytest.param(
            "/v1/completions", {"prompt": [[1, 2]] * 17}, {"prompt"}, id="17-token-prompts"
        ),
        pytest.param("/v1/chat/completions", {"n": 500}, {"n"}, id="chat-n-500"),
        pytest.param("/v1/chat/completions", {"n": 17}, {"n"}, id="chat-n-17"),
    ],
)
def test_too_many_sequences_is_400(
    gw: GatewayProcess, engines: EngineStack, path: str, extra: dict[str, Any], params: set[str]
) -> None:
    """`maxSequencesPerRequest` (default 16) = prompts x max(n, best_of)."""
    response = post(gw, path, body_for(path, "model-a", **extra))
    assert response.status_code == 400, response.text[:500]
    error = openai_error(response)
    assert error["code"] == "too_many_sequences"
    assert error["param"] in params
    nothing_reached(engines)


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        pytest.param("/v1/completions", {"prompt": ["x"] * 4, "n": 4}, id="4x4"),
        pytest.param("/v1/chat/completions", {"n": 16}, id="chat-n-16"),
    ],
)
def test_sixteen_sequences_pass(
    gw: GatewayProcess, engines: EngineStack, path: str, extra: dict[str, Any]
) -> None:
    response = post(gw, path, body_for(path, "model-a", **extra))
    assert response.status_code == 200, response.text[:500]
    [record] = engines.vllm_proxy.forwarded()
    assert record.json["n"] == extra["n"]


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/v1/embeddings", "model-a"),
        ("/v1/embeddings", "ollama-a"),
        ("/api/embed", "ollama-a"),
        ("/api/embed", "model-a"),
    ],
)
def test_too_many_embedding_inputs_is_400(
    gw: GatewayProcess, engines: EngineStack, path: str, served: str
) -> None:
    """`maxInputsPerRequest` (default 256)."""
    response = post(gw, path, {"model": served, "input": [f"x{i}" for i in range(1000)]})
    assert_error(response, path, 400, "too_many_inputs")
    if not path.startswith("/api/"):
        assert openai_error(response)["param"] == "input"
    nothing_reached(engines)


def test_256_embedding_inputs_pass(gw: GatewayProcess, engines: EngineStack) -> None:
    inputs = [f"x{i}" for i in range(256)]
    response = post(gw, "/v1/embeddings", {"model": "model-a", "input": inputs})
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["data"]) == 256


@pytest.mark.parametrize(("n", "queued"), [(1, False), (4, True)])
def test_sequences_count_against_max_concurrent_requests(n: int, queued: bool) -> None:
    """With `maxConcurrentRequests: 4`, a request with n=4 occupies the model: a second request
    reaches the engine only after the first one's answer (1.5 s later); with n=1 at once."""
    with (
        FakeEngine("vllm", models=[VLLM_A], delay_ms=1500) as slow,
        RecordingProxy(slow.url) as proxy,
        running_gateway(
            {
                "deployments": [
                    deployment("model-a", "vllm", VLLM_A, proxy.url, maxConcurrentRequests=4)
                ],
                "auth": {"disabled": True},
            }
        ) as running,
    ):
        url = running.url + "/v1/chat/completions"
        first: list[httpx.Response] = []
        body = {"model": "model-a", "messages": CHAT}
        thread = threading.Thread(
            target=lambda: first.append(httpx.post(url, json={**body, "n": n}, timeout=60))
        )
        thread.start()
        deadline = time.monotonic() + 20
        while not proxy.forwarded():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = httpx.post(url, json=body, timeout=60)
        thread.join(timeout=60)
        assert first[0].status_code == second.status_code == 200
        one, two = proxy.forwarded()
        gap = two.at - one.at
        if queued:
            assert gap >= 1.3, f"the second request reached the engine after {gap:.2f} s"
        else:
            assert gap < 1.0, f"the second request waited {gap:.2f} s"


# ================================================================ admin routes


ADMIN_PATHS = [
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/v1/sleep",
    "/v1/wake_up",
    "/v1/reset_prefix_cache",
    "/v1/start_profile",
    "/v1/stop_profile",
    "/v1/collective_rpc",
    "/v1/files",
    "/v1/fine_tuning/jobs",
    "/v1/batches",
    "/v1/models/model-a",
    "/v1/pull",
]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_routes_are_404_and_never_forwarded(
    gw: GatewayProcess, engines: EngineStack, path: str
) -> None:
    body = {
        "model": "model-a",
        "lora_name": "evil",
        "lora_path": "/tmp/evil",
        "method": "shutdown",
        "level": 2,
    }
    response = post(gw, path, body, key=KEY_ALL)
    assert response.status_code == 404, response.text[:500]
    assert openai_error(response)["code"] == "not_found"
    nothing_reached(engines)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "model-a", "input": "hi"}),
        ("/v1/rerank", {"model": "model-a", "query": "q", "documents": ["a", "b"]}),
    ],
)
def test_inference_routes_still_forward(
    gw: GatewayProcess, engines: EngineStack, path: str, body: dict[str, Any]
) -> None:
    response = post(gw, path, body)
    assert response.status_code != 500
    [record] = engines.vllm_proxy.forwarded()
    assert (record.method, record.path) == ("POST", path)
    assert record.json["model"] == VLLM_A


NOT_INFERENCE_RAW_PATHS = [
    "/v1/../api/pull",
    "/v1/%2e%2e/api/pull",
    "/v1/%2E%2E/%2E%2E/api/delete",
    "/v1/chat/../load_lora_adapter",
    "/v1/./load_lora_adapter",
    "/v1/load_lora_adapter/",
    "/v1/LOAD_LORA_ADAPTER",
    "/v1/load_lora_adapter%00",
    "/v1/load_lora_adapter?x=/v1/chat/completions",
    "/v1/chat%2fcompletions/../../sleep",
    "/v1/%2fapi/pull",
    "/v1/models/..%2f..%2fapi%2fpull",
]


@pytest.mark.parametrize("raw_path", NOT_INFERENCE_RAW_PATHS)
def test_path_tricks_reach_no_engine(
    gw: GatewayProcess, engines: EngineStack, raw_path: str
) -> None:
    """Paths sent exactly as written (no client-side normalisation): dot segments, encoded
    slashes, case, NUL. None may reach an engine's admin or model-management routes."""
    host, port = raw_request(gw)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    body = json.dumps({"model": "model-a", "name": OLLAMA_A, "lora_name": "evil"})
    headers = {**bearer(KEY_ALL), "Content-Type": "application/json"}
    try:
        connection.request("POST", raw_path, body=body, headers=headers)
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status in (400, 404), status
    nothing_reached(engines)


def test_client_credentials_never_reach_an_engine(gw: GatewayProcess, engines: EngineStack) -> None:
    """The tenant's key (and cookies) stay at the gateway: engines and their logs never see
    them."""
    headers = {**bearer(KEY_A), "x-api-key": KEY_A, "Cookie": f"session={KEY_A}"}
    for path, served in [
        ("/v1/chat/completions", "model-a"),
        ("/api/chat", "ollama-a"),
        ("/api/generate", "model-a"),
        ("/v1/chat/completions", "tgi-a"),
    ]:
        response = post(gw, path, body_for(path, served), key=None, headers=headers)
        assert response.status_code == 200, response.text[:300]
    records = [r for proxy in engines.proxies for r in proxy.forwarded()]
    assert len(records) == 4
    for record in records:
        for name, value in record.headers:
            assert KEY_A not in value, f"{name} carried the client's key to {record.path}"
        assert KEY_A.encode() not in record.body


RUNTIME_OPTIONS = {
    "num_ctx": 999999,
    "num_gpu": 99,
    "use_mlock": True,
    "num_thread": 64,
    "num_batch": 4096,
    "main_gpu": 3,
    "use_mmap": False,
    "numa": True,
    "low_vram": True,
}


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/api/chat", "ollama-a"),
        ("/api/generate", "ollama-a"),
        ("/api/embed", "ollama-a"),
        ("/api/embeddings", "ollama-a"),
        ("/api/chat", "model-a"),
        ("/api/generate", "model-a"),
    ],
)
def test_ollama_runtime_options_never_reach_an_engine(
    gw: GatewayProcess, engines: EngineStack, path: str, served: str
) -> None:
    options = {**RUNTIME_OPTIONS, "temperature": 0.25}
    body = body_for(path, served, options=options, keep_alive=-1)
    response = post(gw, path, body)
    assert response.status_code == 200, response.text[:500]
    [record] = engines.proxy_of(served).forwarded()
    sent = record.json
    assert "keep_alive" not in sent
    leaked = set(RUNTIME_OPTIONS) & (set(sent) | set(sent.get("options") or {}))
    assert not leaked, f"{sorted(leaked)} reached the engine: {sent}"
    if path in ("/api/chat", "/api/generate"):
        temperature = (sent.get("options") or sent).get("temperature")
        assert temperature == 0.25, sent


def test_deployment_ollama_options_are_what_the_engine_gets(stack: EngineStack) -> None:
    entry = deployment("ollama-a", "ollama", OLLAMA_A, stack.ollama_proxy.url)
    config = {"deployments": [{**entry, "ollamaOptions": {"num_ctx": 8192}}], "auth": keys()}
    with running_gateway(config, env=QUIET_AUTH_LIMIT) as running:
        stack.clear()
        hostile = body_for("/api/chat", "ollama-a", options={"num_ctx": 999999}, keep_alive="24h")
        plain = body_for("/api/generate", "ollama-a")
        assert post(running, "/api/chat", hostile).status_code == 200
        assert post(running, "/api/generate", plain).status_code == 200
        sent = [r.json for r in stack.ollama_proxy.forwarded()]
        assert [s["options"]["num_ctx"] for s in sent] == [8192, 8192], sent
        assert all("keep_alive" not in s for s in sent)


# ================================================================ memory and time


def raw_request(gw: GatewayProcess) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").split(":")
    return host, int(port)


def send_huge_header(gw: GatewayProcess, size: int) -> bytes:
    """Send a request whose one header value is `size` bytes, reading concurrently (the gateway
    may answer and close long before the header ends); everything it answered."""
    sock = socket.create_connection(raw_request(gw), timeout=30)
    received: list[bytes] = []

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                received.append(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        chunk = b"a" * MiB
        for _ in range(size // MiB):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")
    except OSError:
        pass  # closed by the gateway: the point
    reader.join(timeout=30)
    sock.close()
    return b"".join(received)


def test_huge_header_is_431_with_bounded_memory(gw: GatewayProcess) -> None:
    """At the default `max_header_bytes` (64 KiB): a 96 MiB header value is refused early."""
    httpx.get(gw.url + "/healthz", timeout=30)  # warm
    with PeakRss(gw.proc.pid) as rss:
        answer = send_huge_header(gw, 96 * MiB)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / MiB:.1f} MiB"


@pytest.mark.parametrize(("size", "status"), [(70_000, 431), (8_000, 200)])
def test_header_limit_default(gw: GatewayProcess, size: int, status: int) -> None:
    response = httpx.get(gw.url + "/healthz", headers={"X-Big": "a" * size}, timeout=30)
    assert response.status_code == status


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[MisbehavingEngine]:
    with MisbehavingEngine() as engine:
        yield engine


HOSTILE_ENV = {
    **QUIET_AUTH_LIMIT,
    "RELAIS_GATEWAY_MAX_UPSTREAM_LINE_BYTES": str(4 * MiB),
    "RELAIS_GATEWAY_MAX_UPSTREAM_BODY_BYTES": str(16 * MiB),
    "RELAIS_GATEWAY_HEADER_TIMEOUT_S": "1",
    "RELAIS_GATEWAY_BODY_TIMEOUT_S": "1",
    "RELAIS_GATEWAY_FIRST_BYTE_TIMEOUT_S": "2",
    "RELAIS_GATEWAY_STREAM_IDLE_TIMEOUT_S": "2",
}


@pytest.fixture(scope="module")
def bad_gw(misbehaving: MisbehavingEngine) -> Iterator[GatewayProcess]:
    """A gateway in front of the misbehaving engine, with small limits and timeouts: `oa-<mode>`
    (an OpenAI-compatible engine) and `ol-<mode>` (Ollama) for every mode."""
    deployments = []
    for mode in MODES:
        deployments.append(deployment(f"oa-{mode}", "openai", mode, misbehaving.url))
        deployments.append(deployment(f"ol-{mode}", "ollama", mode, misbehaving.url))
    config = {"deployments": deployments, "auth": {"disabled": True}}
    with running_gateway(config, env=HOSTILE_ENV) as running:
        yield running


def sse_events(text: str) -> list[str]:
    return [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]


def ndjson_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def last_event(response: httpx.Response) -> Any:
    """The last SSE data event or NDJSON line, parsed (earlier ones may be an engine's garbage,
    passed on as it sent them)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return json.loads(sse_events(response.text)[-1])
    return json.loads([line for line in response.text.splitlines() if line.strip()][-1])


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_endless_stream_line_ends_in_band_with_bounded_memory(
    bad_gw: GatewayProcess, dialect: str
) -> None:
    """The engine starts well, then sends a 64 MiB line with no newline (limit: 4 MiB)."""
    post(bad_gw, "/v1/chat/completions", body_for("/v1/chat/completions", "oa-ok"), key=None)
    with PeakRss(bad_gw.proc.pid) as rss:
        if dialect == "openai":
            body = body_for("/v1/chat/completions", "oa-endless_line", stream=True)
            response = post(bad_gw, "/v1/chat/completions", body, key=None)
        else:
            body = body_for("/api/chat", "ol-endless_line", stream=True)
            response = post(bad_gw, "/api/chat", body, key=None)
    assert response.status_code == 200
    assert len(response.content) < 64 * 1024, "the endless line reached the client"
    assert "error" in last_event(response), response.text[-500:]
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / MiB:.1f} MiB"


@pytest.mark.parametrize("mode", ["huge_answer", "huge_answer_chunked"])
@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_huge_whole_answer_is_502_with_bounded_memory(
    bad_gw: GatewayProcess, dialect: str, mode: str
) -> None:
    """A 96 MiB answer (limit: 16 MiB), with or without Content-Length."""
    post(bad_gw, "/v1/chat/completions", body_for("/v1/chat/completions", "oa-ok"), key=None)
    path = "/v1/chat/completions" if dialect == "openai" else "/api/chat"
    served = ("oa-" if dialect == "openai" else "ol-") + mode
    with PeakRss(bad_gw.proc.pid) as rss:
        response = post(bad_gw, path, body_for(path, served), key=None)
    assert_error(response, path, 502, "upstream_answer_too_large")
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_status_line(sock: socket.socket) -> bytes:
    """What the peer sends until its first line ends, or until it closes."""
    data = b""
    try:
        while b"\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_stalled_request_headers_are_closed_within_the_header_timeout(
    bad_gw: GatewayProcess,
) -> None:
    with socket.create_connection(raw_request(bad_gw), timeout=8) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aa")
        read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 4.0, f"closed after {elapsed:.2f} s"


def test_stalled_request_body_is_408_within_the_body_timeout(bad_gw: GatewayProcess) -> None:
    with socket.create_connection(raw_request(bad_gw), timeout=8) as sock:
        started = time.monotonic()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        head += b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head + b'{"model": "')
        answer = read_status_line(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < 4.0, f"answered after {elapsed:.2f} s"


# ================================================================ bad input, never 500


DEEP = deep_array(1000)


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/v1/chat/completions", "model-a"),
        ("/v1/completions", "model-a"),
        ("/v1/embeddings", "model-a"),
        ("/v1/responses", "model-a"),
        ("/api/chat", "ollama-a"),
        ("/api/generate", "model-a"),
        ("/api/embed", "ollama-a"),
    ],
)
def test_deeply_nested_json_is_400(
    gw: GatewayProcess, engines: EngineStack, path: str, served: str
) -> None:
    text = json.dumps(body_for(path, served))
    raw = text[:-1] + f', "extra": {{"deep": {DEEP}}}}}'
    response = httpx.post(
        gw.url + path,
        content=raw.encode(),
        headers={**bearer(KEY_A), "content-type": "application/json"},
        timeout=60,
    )
    assert_error(response, path, 400, "json_too_deep")
    nothing_reached(engines)


def token_totals(gw: GatewayProcess) -> dict[tuple[str, str], float]:
    """`relais_gateway_tokens_total` by (model, kind), from /metrics."""
    response = httpx.get(gw.url + "/metrics", timeout=30)
    assert response.status_code == 200
    totals = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "relais_gateway_tokens_total":
                totals[(sample.labels["model"], sample.labels["kind"])] = sample.value
    return totals


@pytest.mark.parametrize("mode", ["negative_usage", "nonnumeric_usage", "huge_usage"])
@pytest.mark.parametrize(
    ("path", "prefix", "stream"),
    [
        ("/v1/chat/completions", "oa-", False),
        ("/v1/chat/completions", "oa-", True),
        ("/v1/completions", "oa-", True),
        ("/api/chat", "ol-", False),
        ("/api/chat", "ol-", True),
        ("/api/generate", "ol-", True),
        ("/api/chat", "oa-", True),
    ],
)
def test_engine_token_counts_never_break_answers_or_metrics(
    bad_gw: GatewayProcess, mode: str, path: str, prefix: str, stream: bool
) -> None:
    """Negative, non-numeric or absurd usage: a normal answer, a whole stream, sane counters."""
    before = token_totals(bad_gw)
    response = post(bad_gw, path, body_for(path, prefix + mode, stream=stream), key=None)
    assert response.status_code == 200, response.text[:500]
    if stream and path.startswith("/v1/"):
        events = sse_events(response.text)
        assert events[-1] == "[DONE]", response.text[-500:]
        assert not any('"error"' in e for e in events)
    elif stream:
        lines = ndjson_lines(response.text)
        assert lines[-1]["done"] is True, lines[-1]
        assert not any("error" in line for line in lines)
    else:
        assert "error" not in response.json()
    after = token_totals(bad_gw)
    for key, value in after.items():
        assert math.isfinite(value), f"{key} = {value}"
        assert value >= before.get(key, 0.0), f"{key} went down: {before.get(key)} -> {value}"


@pytest.mark.parametrize(
    ("path", "served", "stream"),
    [
        ("/v1/chat/completions", "oa-malformed_stream", True),
        ("/api/chat", "ol-malformed_stream", True),
        ("/api/chat", "oa-malformed_stream", True),
        ("/v1/chat/completions", "oa-stall", True),
        ("/api/chat", "ol-stall", True),
    ],
)
def test_broken_engine_stream_ends_in_band(
    bad_gw: GatewayProcess, path: str, served: str, stream: bool
) -> None:
    response = post(bad_gw, path, body_for(path, served, stream=stream), key=None)
    assert response.status_code == 200, response.text[:500]
    assert "error" in last_event(response), response.text[-500:]


@pytest.mark.parametrize(
    ("path", "served", "status"),
    [
        ("/v1/chat/completions", "oa-malformed_stream", 502),
        ("/api/chat", "ol-malformed_stream", 502),
        ("/v1/chat/completions", "oa-stall", 504),
        ("/api/chat", "ol-stall", 504),
    ],
)
def test_broken_whole_engine_answer_is_not_500(
    bad_gw: GatewayProcess, path: str, served: str, status: int
) -> None:
    response = post(bad_gw, path, body_for(path, served), key=None)
    assert response.status_code == status, response.text[:500]


# ================================================================ leaks


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
    ],
)
def test_no_key_is_401_before_the_body_is_read(gw: GatewayProcess, path: str) -> None:
    response = httpx.post(
        gw.url + path, content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_error(response, path, 401, "invalid_api_key")


def test_metrics_on_their_own_port(stack: EngineStack) -> None:
    port = free_port()
    env = {**QUIET_AUTH_LIMIT, "RELAIS_GATEWAY_METRICS_PORT": str(port)}
    with running_gateway(base_config(stack), env=env) as running:
        deadline = time.monotonic() + 20
        while True:
            try:
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nothing listens on the metrics port"
                time.sleep(0.1)
        assert metrics.status_code == 200
        assert "relais_gateway_requests" in metrics.text
        on_api = httpx.get(running.url + "/metrics", timeout=10)
        assert on_api.status_code == 404


def test_keys_in_query_strings_never_reach_the_logs(stack: EngineStack) -> None:
    env = {**QUIET_AUTH_LIMIT, "RELAIS_GATEWAY_ACCESS_LOG": "true"}
    with running_gateway(base_config(stack), env=env, log_level="debug") as running:
        body = body_for("/v1/chat/completions", "model-a")
        for name in ("api_key", "key", "apikey", "token"):
            query = f"?{name}={KEY_ALL}"
            httpx.post(running.url + "/v1/chat/completions" + query, json=body, timeout=30)
            httpx.get(running.url + "/v1/models" + query, headers=bearer(KEY_A), timeout=30)
            httpx.post(running.url + "/api/chat" + query, json=body, timeout=30)
            httpx.get(running.url + "/api/tags" + query, timeout=30)
            httpx.get(running.url + "/v1/models/model-a/" + query, timeout=30)
        time.sleep(0.5)  # request lines are written at the end of an event-loop turn
        log = log_path(running).read_text(errors="replace")
    assert "/v1/chat/completions" in log, "the gateway logged no request line"
    assert KEY_ALL not in log
    assert KEY_ALL[: len(KEY_ALL) // 2] not in log


@pytest.mark.parametrize(
    "values", [(KEY_ALL, KEY_ALL), (KEY_ALL, KEY_A)], ids=["same-key", "two-keys"]
)
def test_two_authorization_headers_are_400(
    gw: GatewayProcess, engines: EngineStack, values: tuple[str, str]
) -> None:
    headers = [("Authorization", f"Bearer {value}") for value in values]
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json=body_for("/v1/chat/completions", "model-a"),
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 400, response.text
    nothing_reached(engines)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({**bearer(KEY_A), "x-api-key": KEY_ALL}, 400, id="differ"),
        pytest.param({**bearer(KEY_A), "x-api-key": KEY_A}, 200, id="same"),
        pytest.param({"x-api-key": KEY_A}, 200, id="x-api-key-alone"),
        pytest.param({"x-api-key": "sk-wrong"}, 401, id="x-api-key-wrong"),
        pytest.param({**bearer("sk-wrong"), "x-api-key": KEY_A}, 400, id="wrong-bearer"),
    ],
)
def test_bearer_and_x_api_key(
    gw: GatewayProcess, engines: EngineStack, headers: dict[str, str], status: int
) -> None:
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json=body_for("/v1/chat/completions", "model-a"),
        headers=headers,
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert len(engines.vllm_proxy.forwarded()) == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/"),
        ("GET", "/api/tags/"),
        ("POST", "/v1/chat/completions/"),
        ("GET", "/v1/models//"),
        ("GET", "/healthz/"),
    ],
)
def test_no_redirect_reflects_the_host_header(gw: GatewayProcess, method: str, path: str) -> None:
    response = httpx.request(
        method,
        gw.url + path,
        headers={**bearer(KEY_A), "Host": "evil.example"},
        json={"model": "model-a"} if method == "POST" else None,
        follow_redirects=False,
        timeout=30,
    )
    assert "evil.example" not in response.headers.get("location", "")
    assert "evil.example" not in response.text


@pytest.mark.parametrize("value", ["false", "true"])
@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/v1/chat/completions", "model-a"),
        ("/v1/completions", "model-a"),
        ("/v1/responses", "model-a"),
        ("/v1/chat/completions", "ollama-a"),
        ("/api/chat", "ollama-a"),
        ("/api/generate", "ollama-a"),
        ("/api/chat", "model-a"),
        ("/api/generate", "tgi-a"),
    ],
)
def test_stream_as_a_string_is_400(
    gw: GatewayProcess, engines: EngineStack, path: str, served: str, value: str
) -> None:
    response = post(gw, path, body_for(path, served, stream=value))
    assert response.status_code == 400, response.text[:500]
    if path.startswith("/api/"):
        ollama_error(response)
    else:
        assert openai_error(response)["param"] == "stream"
    nothing_reached(engines)


def test_repeated_auth_failures_throttle_the_address(stack: EngineStack) -> None:
    """Past `AUTH_FAILURES_PER_MINUTE` failures, the address gets 429 `too_many_auth_failures`
    for the rest of the window, even with the right key; another address is not affected."""
    env = {"RELAIS_GATEWAY_AUTH_FAILURES_PER_MINUTE": "5"}
    with running_gateway(base_config(stack), env=env) as running:
        url = running.url + "/v1/models"
        for _ in range(5):
            assert httpx.get(url, headers=bearer("sk-guess"), timeout=30).status_code == 401
        throttled = httpx.get(url, headers=bearer("sk-guess"), timeout=30)
        assert throttled.status_code == 429
        assert openai_error(throttled)["code"] == "too_many_auth_failures"
        assert int(throttled.headers["Retry-After"]) >= 1
        right_key = httpx.get(url, headers=bearer(KEY_A), timeout=30)
        assert right_key.status_code == 429
        assert openai_error(right_key)["code"] == "too_many_auth_failures"
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            assert other.get(url, headers=bearer(KEY_A), timeout=30).status_code == 200
