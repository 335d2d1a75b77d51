"""Pure unit tests: config, auth, balancer, engine adapters, dialect conversions, error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
import pydantic
import pytest
from aiohttp.base_protocol import BaseProtocol
from relais_gateway.auth import Authenticator, TokenBucket
from relais_gateway.balancer import Balancer
from relais_gateway.canonical import Finish, GenerationRequest
from relais_gateway.config import AuthConfig, StaticConfig
from relais_gateway.dialects import ollama as ollama_dialect
from relais_gateway.dialects import openai as openai_dialect
from relais_gateway.dialects.common import ChunkStreamResponse
from relais_gateway.engines import ENGINES
from relais_gateway.errors import (
    AuthenticationFailed,
    InvalidModelOutput,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    from_engine_status,
    render_error,
)
from relais_gateway.main import parse_args
from relais_gateway.registry import StaticSource
from relais_gateway.router import before_network_wait, read_upstream
from relais_gateway.service import check_structured
from relais_gateway.settings import Settings
from starlette.types import Message


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- config


def test_static_config_requires_an_explicit_auth_choice() -> None:
    with pytest.raises(pydantic.ValidationError, match="auth"):
        StaticConfig.model_validate({"deployments": []})
    with pytest.raises(pydantic.ValidationError, match="disabled: true"):
        StaticConfig.model_validate({"auth": {}})
    with pytest.raises(pydantic.ValidationError, match="not both"):
        AuthConfig.model_validate({"disabled": True, "keys": [{"name": "a", "key": "k"}]})
    assert StaticConfig.model_validate({"auth": {"disabled": True}}).auth.disabled


def test_static_config_validates_deployments() -> None:
    bad_url = {"name": "a", "servedModelName": "m", "endpoints": ["ftp://x"]}
    with pytest.raises(pydantic.ValidationError, match="http"):
        StaticConfig.model_validate({"deployments": [bad_url], "auth": {"disabled": True}})
    twice = [{"name": n, "servedModelName": "m"} for n in ("a", "b")]
    with pytest.raises(pydantic.ValidationError, match="unique"):
        StaticConfig.model_validate({"deployments": twice, "auth": {"disabled": True}})
    with pytest.raises(ValueError, match="unknown engine"):
        StaticSource(
            StaticConfig.model_validate(
                {
                    "deployments": [{"name": "a", "servedModelName": "m", "engine": "x"}],
                    "auth": {"disabled": True},
                }
            ).deployments
        )


def test_cli_flags_become_settings() -> None:
    args = parse_args(
        [
            "--source",
            "kubernetes",
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--auth-file",
            "/k",
            "--port",
            "9000",
        ]
    )
    settings = Settings(**args)
    assert settings.namespaces == ["a", "b"]
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"
    assert parse_args(["--config", "x.yaml"])["source"] == "static"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAIS_GATEWAY_MAX_BODY_BYTES", "123")
    monkeypatch.setenv("RELAIS_GATEWAY_FIRST_BYTE_TIMEOUT_S", "2.5")
    settings = Settings()
    assert (settings.max_body_bytes, settings.first_byte_timeout_s) == (123, 2.5)


# ---------------------------------------------------------------- auth


def test_token_bucket_refills() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock)
    assert all(bucket.take() == 0.0 for _ in range(60))
    wait = bucket.take()
    assert wait == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.take() == 0.0


def test_authenticator() -> None:
    auth = Authenticator(
        AuthConfig.model_validate(
            {"keys": [{"name": "a", "key": "sk-a", "models": ["m1"], "requestsPerMinute": 1}]}
        ),
        Clock(),
    )
    with pytest.raises(AuthenticationFailed):
        auth.authenticate(None)
    with pytest.raises(AuthenticationFailed):
        auth.authenticate("sk-b")
    caller = auth.authenticate("sk-a")
    assert caller.name == "a"
    with pytest.raises(PermissionDenied):
        auth.authorize(caller, "m2")
    auth.authorize(caller, "m1")
    with pytest.raises(RateLimited) as limited:
        auth.authorize(caller, "m1")
    assert limited.value.headers["Retry-After"] == "60"
    assert Authenticator(AuthConfig(disabled=True)).authenticate(None).name == "anonymous"


# ---------------------------------------------------------------- balancer


def test_balancer_least_outstanding_and_ejection() -> None:
    clock = Clock()
    balancer = Balancer(cooldown_s=10, clock=clock)
    replicas = ("a", "b", "c")
    balancer.begin_replica("a")
    balancer.begin_replica("b")
    assert balancer.pick(replicas) == "c"
    balancer.begin_replica("c")
    balancer.begin_replica("c")
    assert balancer.pick(replicas) in {"a", "b"}
    balancer.eject("a")
    assert balancer.pick(replicas) == "b"
    assert balancer.pick(replicas, exclude=["b"]) == "c"
    assert balancer.pick(["a"]) == "a"  # all ejected: still try rather than certain 503
    assert balancer.pick([]) is None
    clock.now += 11
    assert not balancer.is_ejected("a")


def test_balancer_spreads_ties() -> None:
    balancer = Balancer(cooldown_s=1)
    picks = {balancer.pick(("a", "b", "c")) for _ in range(6)}
    assert picks == {"a", "b", "c"}


# ---------------------------------------------------------------- engines


async def lines_of(*lines: bytes) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


async def drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in iterator]


def chat_req(**kwargs: Any) -> GenerationRequest:
    return GenerationRequest(
        kind="chat", model="m", stream=True, messages=[{"role": "user", "content": "x"}], **kwargs
    )


def test_engine_table_is_open() -> None:
    assert {"ollama", "tgi", "openai"} <= set(ENGINES)
    for name, engine in ENGINES.items():
        assert engine.name == name


def test_ollama_adapter() -> None:
    engine = ENGINES["ollama"]
    path, body = engine.prepare(chat_req(max_tokens=5, json_mode=True))
    assert path == "/api/chat"
    assert body["options"] == {"num_predict": 5}
    assert body["format"] == "json"
    events = asyncio.run(
        drain(
            engine.decode_stream(
                lines_of(
                    b'{"message":{"role":"assistant","content":"he"},"done":false}\n',
                    b"\n",
                    b'{"message":{"role":"assistant","content":""},"done":true,'
                    b'"done_reason":"length","prompt_eval_count":3,"eval_count":1}\n',
                ),
                chat_req(),
            )
        )
    )
    assert events == ["he", Finish("length", 3, 1)]
    with pytest.raises(UpstreamError, match="boom"):
        asyncio.run(drain(engine.decode_stream(lines_of(b'{"error":"boom"}\n'), chat_req())))
    with pytest.raises(UpstreamError, match="ended"):
        asyncio.run(drain(engine.decode_stream(lines_of(), chat_req())))


def test_openai_and_tgi_adapters() -> None:
    schema = {"type": "object"}
    _, generic = ENGINES["openai"].prepare(chat_req(json_schema=schema))
    assert generic["response_format"]["json_schema"]["schema"] == schema
    assert generic["stream_options"] == {"include_usage": True}
    _, tgi = ENGINES["tgi"].prepare(chat_req(json_schema=schema))
    assert tgi["response_format"] == {"type": "json", "value": schema}
    events = asyncio.run(
        drain(
            ENGINES["tgi"].decode_stream(
                lines_of(
                    b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n',
                    b"\n",
                    b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n',
                    b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}\n',
                    b"data: [DONE]\n",
                ),
                chat_req(),
            )
        )
    )
    assert events == ["a", Finish("length", 2, 1)]


def test_engine_statuses_map_to_gateway_errors() -> None:
    assert from_engine_status(503, "x").status == 503
    assert isinstance(from_engine_status(502, "x"), UpstreamError)
    assert from_engine_status(502, "x").retryable  # type: ignore[attr-defined]
    assert from_engine_status(422, "x").status == 400
    assert from_engine_status(500, "x").status == 502
    assert from_engine_status(429, "x").headers["Retry-After"] == "1"


# ---------------------------------------------------------------- dialects and errors


def test_openai_chat_conversion() -> None:
    body = openai_dialect.ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "max_completion_tokens": 3,
            "stop": "END",
            "response_format": {"type": "json_object"},
        }
    )
    req = openai_dialect.chat_request(body)
    assert req.messages == [{"role": "user", "content": "ab"}]
    assert (req.max_tokens, req.stop, req.json_mode) == (3, ["END"], True)
    image = openai_dialect.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    )
    with pytest.raises(InvalidRequest, match="text only"):
        openai_dialect.chat_request(image)


def test_ollama_conversion() -> None:
    body = ollama_dialect.GenerateRequest.model_validate(
        {"model": "m", "prompt": "p", "system": "s", "options": {"num_predict": -1, "seed": 4}}
    )
    req = ollama_dialect.generate_request(body)
    assert (req.prompt, req.max_tokens, req.seed, req.stream) == ("s\n\np", None, 4, True)
    with pytest.raises(InvalidRequest, match="JSON schema"):
        ollama_dialect.chat_request(
            ollama_dialect.ChatRequest.model_validate({"model": "m", "format": {"type": 5}})
        )


def test_structured_output_check() -> None:
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    check_structured('{"a": 1}', schema)
    with pytest.raises(InvalidModelOutput, match="at a"):
        check_structured('{"a": "x"}', schema)
    with pytest.raises(InvalidModelOutput, match="not valid JSON"):
        check_structured("{", None)


def test_error_shapes() -> None:
    error = InvalidRequest("bad", param="max_tokens", code="c")
    status, _, body = render_error(error, "/v1/chat/completions")
    assert status == 400
    assert orjson.loads(body) == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "c",
        }
    }
    assert render_error(error, "/api/chat")[2] == b'{"error":"bad"}'


async def test_stream_chunks_leave_together_and_before_each_network_wait() -> None:
    """What one upstream read produced goes out in one write, before the reader waits again."""
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    reader.feed_data(b"a\nb\n")
    sent: list[Message] = []

    async def chunks() -> AsyncGenerator[bytes, None]:
        while data := await read_upstream(reader, 5):
            for line in data.split(b"\n"):
                if line:
                    yield line

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("more_body"):  # the reader flushed before waiting: more data arrives
            reader.feed_data(b"c\n")
            reader.feed_eof()

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    response = ChunkStreamResponse(chunks(), "text/plain", {})
    await response({"type": "http"}, receive, send)
    bodies = [(m.get("body"), m.get("more_body", False)) for m in sent[1:]]
    assert bodies == [(b"ab", True), (b"c", False)]
    assert before_network_wait.get() is None
