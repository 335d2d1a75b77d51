"""Pure unit tests: config, auth, balancer, the engine table, engine errors, error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import orjson
import pydantic
import pytest
from aiohttp.base_protocol import BaseProtocol
from relais_gateway.config import AuthConfig, StaticConfig, load_auth_file
from relais_gateway.dialects.common import ChunkStreamResponse
from relais_gateway.errors import (
    AuthenticationFailed,
    InvalidModelOutput,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    engine_message,
    from_engine_status,
    render_error,
)
from relais_gateway.forward.service import check_structured
from relais_gateway.forward.upstream import before_network_wait, read_upstream
from relais_gateway.main import parse_args
from relais_gateway.policy.auth import Authenticator, TokenBucket
from relais_gateway.policy.reload import AuthReloader
from relais_gateway.routing.balancer import Balancer
from relais_gateway.routing.engines import ENGINES, ROUTES
from relais_gateway.routing.registry import StaticSource
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
    unknown = [{"name": "a", "servedModelName": "m", "engine": "x"}]
    with pytest.raises(pydantic.ValidationError, match=r"deployments\.0\.engine"):
        StaticConfig.model_validate({"deployments": unknown, "auth": {"disabled": True}})
    named = StaticConfig.model_validate(
        {
            "deployments": [
                {"name": "a", "servedModelName": "qwen", "model": "qwen2.5:7b", "engine": "vllm"}
            ],
            "auth": {"disabled": True},
        }
    )
    backend = StaticSource(named.deployments).resolve("qwen")
    assert backend is not None
    assert (backend.model, backend.upstream_model, backend.routing.strategy) == (
        "qwen",
        "qwen2.5:7b",
        "PrefixHash",
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
    assert not caller.allows("m2")
    assert caller.allows("m1")
    auth.limit_rate(caller)
    with pytest.raises(RateLimited) as limited:
        auth.limit_rate(caller)
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


# ---------------------------------------------------------------- engines and engine errors


def test_engine_table() -> None:
    assert set(ENGINES) == {"ollama", "tgi", "vllm", "openai"}
    for name, engine in ENGINES.items():
        assert engine.name == name
    assert [n for n, e in ENGINES.items() if e.native_ollama] == ["ollama"]
    assert "/v1/embeddings" not in ENGINES["tgi"].routes
    for engine in ENGINES.values():
        assert engine.routes <= set(ROUTES)  # no engine serves anything beyond inference


def test_tgi_takes_its_own_grammar_form() -> None:
    schema = {"type": "object"}
    adapt = ENGINES["tgi"].adapt_openai
    given = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert adapt({"response_format": given})["response_format"] == {"type": "json", "value": schema}
    assert adapt({"response_format": {"type": "json_object"}})["response_format"] == {
        "type": "json",
        "value": {"type": "object"},
    }
    untouched = {"response_format": {"type": "text"}, "tools": [{"type": "function"}]}
    assert adapt(dict(untouched)) == untouched
    body = {"response_format": given}
    assert ENGINES["vllm"].adapt_openai(dict(body)) == body  # OpenAI's form, forwarded as is


def test_engine_statuses_map_to_gateway_errors() -> None:
    assert from_engine_status(503, b"x").status == 503
    assert isinstance(from_engine_status(502, b"x"), UpstreamError)
    assert from_engine_status(502, b"x").retryable  # type: ignore[attr-defined]
    assert from_engine_status(422, b"x").status == 422  # the engine's own 4xx is passed on
    assert from_engine_status(500, b"x").status == 502
    assert from_engine_status(429, b"x").headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "openai-style", "type": "x"}}', "openai-style"),
        (b'{"error": "ollama-style"}', "ollama-style"),
        (b'{"error": "tgi-style", "error_type": "validation"}', "tgi-style"),
        (b'{"object": "error", "message": "old vllm"}', "old vllm"),
        (b"plain text", "plain text"),
    ],
)
def test_engine_error_messages_are_read_from_every_shape(body: bytes, message: str) -> None:
    assert engine_message(body) == message


# ---------------------------------------------------------------- checks and errors


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


def test_auth_file_reload_swaps_keys_and_keeps_them_on_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text("keys: [{name: a, key: sk-a, requestsPerMinute: 1}]\n")
    authenticator = Authenticator(load_auth_file(path))
    results: list[bool] = []
    reloader = AuthReloader(path, load_auth_file, authenticator, 1.0, results.append)
    caller = authenticator.authenticate("sk-a")
    assert authenticator.limit_rate(caller) is None  # the one request of this minute
    reloader.apply(reloader.read())
    assert results == []  # unchanged file: nothing to do
    path.write_text("keys: [{name: a, key: sk-a, requestsPerMinute: 1}, {name: b, key: sk-b}]\n")
    reloader.apply(reloader.read())
    assert results == [True]
    assert authenticator.authenticate("sk-b").name == "b"
    with pytest.raises(RateLimited):  # same key, same rate: its bucket was kept, not refilled
        authenticator.limit_rate(authenticator.authenticate("sk-a"))
    path.write_text("keys: [{name: c}]\n")
    reloader.apply(reloader.read())
    assert results == [True, False]
    assert authenticator.authenticate("sk-b").name == "b"
    path.write_text("disabled: true\n")
    reloader.apply(reloader.read())
    assert authenticator.authenticate(None).name == "anonymous"
