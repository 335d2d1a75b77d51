"""The cross-model and token-cap sweep (issue #19): every generation route, both dialects, each
engine kind, against every way of naming another model and every way of asking for more tokens.

Only the top-level `model` is honoured, and only within the key's allowlist; every output-token
limit an engine reads is at most the deployment's `maxTokens`. Both are checked on what each
engine received (the recording proxies), for a key allowed only the A models. One engine stack
and one gateway serve the whole module, so the sweep stays well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.servers import GatewayProcess
from tests.gateway.hostile_fixtures import (
    ENGINE_NAME,
    GENERATION_ROUTES,
    KEY_A,
    OLLAMA_B,
    OLLAMA_ROUTES,
    OPENAI_ROUTES,
    QUIET_AUTH_LIMIT,
    VLLM_B,
    EngineStack,
    assert_capped,
    base_config,
    bearer,
    body_for,
    engine_stack,
    running_gateway,
)

ENGINES = {"vllm": "model-a", "ollama": "ollama-a", "tgi": "tgi-a"}
"""Engine kind -> the served model (allowed for KEY_A) the sweep asks for."""
OTHER = {"vllm": (VLLM_B, "model-b"), "ollama": (OLLAMA_B, "ollama-b"), "tgi": (VLLM_B, "model-b")}
"""Engine kind -> another model, as its engine calls it and as clients do (forbidden to KEY_A)."""


@pytest.fixture(scope="module")
def stack() -> Iterator[EngineStack]:
    with engine_stack() as engines:
        yield engines


@pytest.fixture(scope="module")
def gw(stack: EngineStack) -> Iterator[GatewayProcess]:
    with running_gateway(base_config(stack), env=QUIET_AUTH_LIMIT, log_level="warning") as gw:
        yield gw


@pytest.fixture(scope="module")
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers=bearer(KEY_A), timeout=60) as client:
        yield client


@pytest.fixture
def engines(stack: EngineStack) -> EngineStack:
    stack.clear()
    return stack


# ---------------------------------------------------------------- naming another model

Trick = Callable[[dict[str, Any], str], dict[str, Any] | bytes]
"""(a valid body for model A, another model's name) -> the hostile body (or raw JSON bytes)."""


def _options(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**body, "options": {**(body.get("options") or {}), **extra}}


def _duplicate_first(body: dict[str, Any], other: str) -> bytes:
    """`{"model": B, ..., "model": A}`: the key appears twice, B first."""
    rest = json.dumps({k: v for k, v in body.items() if k != "model"})[1:-1]
    first, last = json.dumps(other), json.dumps(body["model"])
    return f'{{"model": {first}, {rest}, "model": {last}}}'.encode()


def _duplicate_last(body: dict[str, Any], other: str) -> bytes:
    """`{"model": A, ..., "model": B}`: the key appears twice, B last."""
    text = json.dumps(body)
    return (text[:-1] + f', "model": {json.dumps(other)}}}').encode()


MODEL_TRICKS: dict[str, Trick] = {
    "options.model": lambda body, other: _options(body, model=other),
    "options.served_model_name": lambda body, other: _options(body, served_model_name=other),
    "served_model_name": lambda body, other: {**body, "served_model_name": other},
    "model_name": lambda body, other: {**body, "model_name": other},
    "stream_options.model": lambda body, other: {
        **body,
        "stream_options": {"include_usage": True, "model": other},
    },
    "metadata.model": lambda body, other: {**body, "metadata": {"model": other}},
    "extra_body.model": lambda body, other: {**body, "extra_body": {"model": other}},
    "models-array": lambda body, other: {**body, "models": [other]},
    "nested-arrays": lambda body, other: {
        **body,
        "extra": [{"model": other}, [{"model": other, "models": [other]}]],
    },
    "duplicate-key-other-first": _duplicate_first,
    "duplicate-key-other-last": _duplicate_last,
}

ALL_ROUTES = OPENAI_ROUTES + OLLAMA_ROUTES


def _route_id(route: str) -> str:
    return route.strip("/").replace("/", ".")


MODEL_CASES = [
    pytest.param(route, kind, trick, spelling, id=f"{_route_id(route)}-{kind}-{trick}-{spelling}")
    for route in ALL_ROUTES
    for kind in ENGINES
    for trick in MODEL_TRICKS
    for spelling in ("engine-name", "served-name")
]


def send(http: httpx.Client, route: str, body: dict[str, Any] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(route, content=body, headers={"content-type": "application/json"})
    return http.post(route, json=body)


@pytest.mark.parametrize(("route", "kind", "trick", "spelling"), MODEL_CASES)
def test_no_way_of_naming_another_model_reaches_it(
    http: httpx.Client, engines: EngineStack, route: str, kind: str, trick: str, spelling: str
) -> None:
    served = ENGINES[kind]
    other = OTHER[kind][0 if spelling == "engine-name" else 1]
    body = MODEL_TRICKS[trick](body_for(route, served), other)
    response = send(http, route, body)
    assert response.status_code < 500 or response.status_code == 501, response.text[:300]
    proxy = engines.proxy_of(served)
    received = proxy.forwarded()
    for record in received:
        assert isinstance(record.json, dict), record.body[:200]
        assert record.json.get("model") == ENGINE_NAME[served], (record.path, record.json)
        top_level_keys = [key for key, _ in json.loads(record.body, object_pairs_hook=list)]
        assert top_level_keys.count("model") == 1, record.body[:300]
    if response.status_code == 200:
        assert received, "a 200 without the engine being asked"
    for other_proxy in engines.proxies:
        if other_proxy is not proxy:
            assert other_proxy.forwarded() == []


# ---------------------------------------------------------------- asking for more tokens

TOKEN_ASKS: dict[str, dict[str, Any]] = {
    "max_tokens": {"max_tokens": 100000},
    "max_tokens-float": {"max_tokens": 100000.0},
    "max_completion_tokens": {"max_completion_tokens": 100000},
    "max_completion_tokens-float": {"max_completion_tokens": 100000.0},
    "max_output_tokens": {"max_output_tokens": 100000},
    "max_output_tokens-float": {"max_output_tokens": 100000.0},
    "options.num_predict": {"options": {"num_predict": 100000}},
    "options.num_predict-float": {"options": {"num_predict": 100000.0}},
    "options.num_predict-infinite": {"options": {"num_predict": -1}},
    "options.num_predict-fill-context": {"options": {"num_predict": -2}},
    "options.max_tokens": {"options": {"max_tokens": 100000}},
    "options.max_tokens-float": {"options": {"max_tokens": 100000.0}},
    "options.max_completion_tokens": {"options": {"max_completion_tokens": 100000}},
    "every-alias-at-once": {
        "max_tokens": 100000,
        "max_completion_tokens": 100000.0,
        "max_output_tokens": 100000,
        "options": {"num_predict": 100000, "max_tokens": 100000.0, "max_completion_tokens": 1e5},
    },
}

STREAMED_ASKS = ("max_tokens-float", "options.num_predict-infinite", "every-alias-at-once")
"""The asks also sent streamed (a stream takes another path through the gateway)."""

TOKEN_CASES = [
    pytest.param(route, kind, ask, False, id=f"{_route_id(route)}-{kind}-{ask}")
    for route in GENERATION_ROUTES
    for kind in ENGINES
    for ask in TOKEN_ASKS
] + [
    pytest.param(route, kind, ask, True, id=f"{_route_id(route)}-{kind}-{ask}-streamed")
    for route in GENERATION_ROUTES
    for kind in ENGINES
    for ask in STREAMED_ASKS
]


@pytest.mark.parametrize(("route", "kind", "ask", "stream"), TOKEN_CASES)
def test_no_way_of_asking_for_more_tokens_gets_them(
    http: httpx.Client, engines: EngineStack, route: str, kind: str, ask: str, stream: bool
) -> None:
    served = ENGINES[kind]
    response = http.post(route, json=body_for(route, served, stream=stream, **TOKEN_ASKS[ask]))
    received = engines.proxy_of(served).forwarded()
    if route == "/v1/responses" and response.status_code == 501:
        # An engine without the Responses API: refused at the gateway, nothing forwarded.
        assert response.json()["error"]["code"] == "not_supported"
        assert received == []
        return
    if route == "/v1/responses":  # the fake vLLM serves no /v1/responses: its 404 is passed on
        assert response.status_code < 500, response.text[:300]
    else:
        assert response.status_code == 200, response.text[:300]
    assert received, "nothing reached the engine"
    for record in received:
        assert_capped(record.path, record.json)
