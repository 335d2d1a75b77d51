"""The OpenAI dialect: `/v1/...` routes, forwarded to every engine's OpenAI-compatible server.

The body is forwarded as the client sent it. The gateway owns a few fields: `model` (renamed to
the engine's own name), the `max_tokens` default and cap from `requestLimits`, and the usage chunk
of streams (asked for when the client did not, read for metrics, then dropped). The models below
validate only what the gateway reads; every other field reaches the engine untouched.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from relais_gateway.deps import (
    CallerDep,
    GatewayDep,
    caller_of,
    gateway_of,
    note_model,
    request_body,
)
from relais_gateway.dialects.common import (
    Json,
    check,
    json_response,
    read_json,
    stream,
    whole,
)
from relais_gateway.engines import CHAT, COMPLETIONS, EMBEDDINGS
from relais_gateway.errors import InvalidRequest, ModelNotFound, NotFound
from relais_gateway.prefix import chat_prefix, prompt_prefix
from relais_gateway.registry import Backend
from relais_gateway.relay import RawRelay, SseRelay, renamer
from relais_gateway.service import Gateway, check_json_schema, check_structured

router = APIRouter(prefix="/v1", tags=["OpenAI"])

SSE = "text/event-stream"
FORWARDABLE = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-.]+)*")
"""The `/v1/...` paths the catch-all route forwards: plain segments, no dot segments."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Owned(BaseModel):
    """Fields Relais reads; `extra="allow"`: everything else is forwarded as sent."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(_Owned):
    include_usage: bool = False


class JsonSchemaFormat(_Owned):
    name: str = "output"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class ResponseFormat(_Owned):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatMessage(_Owned):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _Generation(_Owned):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)


class ChatCompletionRequest(_Generation):
    """POST /v1/chat/completions: tools, images, logprobs, n... all reach the engine."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Generation):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Owned):
    """POST /v1/embeddings."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]


class AnyModelRequest(_Owned):
    """Any other POST /v1/... route with a JSON body naming a `model` (e.g. /v1/responses)."""

    model: str = Field(min_length=1)
    stream: bool | None = False


def _structured(fmt: ResponseFormat | None) -> tuple[bool, dict[str, Any] | None]:
    """(the answer must be JSON, its schema) from `response_format`."""
    if fmt is None or fmt.type == "text":
        return False, None
    if fmt.type == "json_object":
        return True, None
    if fmt.json_schema is None:
        raise InvalidRequest(
            "response_format.json_schema is required for type json_schema",
            param="response_format.json_schema",
        )
    schema = fmt.json_schema.schema_
    check_json_schema(schema, "response_format.json_schema.schema")
    return True, schema


def _admit(request: Request, model: str, max_tokens: int | None) -> tuple[Gateway, Backend]:
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    note_model(request, gateway, model)
    return gateway, gateway.admit(caller, model, max_tokens)


def _prepare(body: Json, backend: Backend, *, limit_tokens: bool) -> Json:
    """The fields Relais owns, set for the engine; the body otherwise as the client sent it."""
    body["model"] = backend.upstream_model
    unset = body.get("max_tokens") is None and body.get("max_completion_tokens") is None
    if limit_tokens and backend.max_tokens is not None and unset:
        body["max_tokens"] = backend.max_tokens
    return backend.kind.adapt_openai(body)


async def _forward(
    request: Request,
    gateway: Gateway,
    backend: Backend,
    path: str,
    body: Json,
    *,
    prefix: str = "",
    schema: tuple[bool, dict[str, Any] | None] = (False, None),
    raw: bool = False,
) -> Response:
    """Forward `body` to `path`; answer with the engine's bytes (the model renamed back)."""
    gateway.require(backend, path)
    rename = renamer(backend.upstream_model, backend.model)
    if body.get("stream"):
        options = body.get("stream_options")
        asked = isinstance(options, dict) and bool(options.get("include_usage"))
        if not raw and not asked:  # usage feeds the token metrics; the client did not ask for it
            body["stream_options"] = {**(options or {}), "include_usage": True}
        reader: RawRelay | SseRelay = (
            RawRelay(rename)
            if raw
            else SseRelay(rename, strip_usage=not asked, add_usage=asked, chat=path == CHAT)
        )
        return await stream(gateway, backend, path, body, request, reader, SSE, SSE_HEADERS, prefix)
    reply = await whole(gateway, backend, path, body, request, prefix)
    data = _parsed(reply.body) if not raw or path == EMBEDDINGS else None
    if data is not None:
        _count(gateway, backend, data)
        if schema[0]:
            for choice in data.get("choices") or ():
                message = choice.get("message") or {}
                if not message.get("tool_calls"):
                    check_structured(str(message.get("content") or ""), schema[1])
    content = rename(reply.body) if rename is not None else reply.body
    return json_response(content, media_type=reply.content_type)


def _parsed(body: bytes) -> Json | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _count(gateway: Gateway, backend: Backend, data: Json) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        prompt = int(usage.get("prompt_tokens") or 0)
        gateway.metrics.count_tokens(
            backend.model, prompt, int(usage.get("completion_tokens") or 0)
        )


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI)",
    openapi_extra=request_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    body = read_json(request)
    owned = check(ChatCompletionRequest, body)
    gateway, backend = _admit(request, owned.model, owned.max_completion_tokens or owned.max_tokens)
    schema = _structured(owned.response_format)
    prefix = chat_prefix(body["messages"], backend.routing.prefix_char_length)
    body = _prepare(body, backend, limit_tokens=True)
    return await _forward(request, gateway, backend, CHAT, body, prefix=prefix, schema=schema)


@router.post(
    "/completions",
    summary="Create a completion (OpenAI legacy)",
    openapi_extra=request_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    body = read_json(request)
    owned = check(CompletionRequest, body)
    gateway, backend = _admit(request, owned.model, owned.max_tokens)
    prefix = prompt_prefix(body["prompt"], backend.routing.prefix_char_length)
    body = _prepare(body, backend, limit_tokens=True)
    return await _forward(request, gateway, backend, COMPLETIONS, body, prefix=prefix)


@router.post(
    "/embeddings",
    summary="Create embeddings (OpenAI)",
    openapi_extra=request_body(EmbeddingRequest),
)
async def embeddings(request: Request) -> Response:
    body = read_json(request)
    owned = check(EmbeddingRequest, body)
    gateway, backend = _admit(request, owned.model, None)
    body = _prepare(body, backend, limit_tokens=False)
    return await _forward(request, gateway, backend, EMBEDDINGS, body, raw=True)


@router.get("/models", summary="List models (OpenAI)")
async def models(gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    data = [_model_card(b) for b in gateway.visible_backends(caller)]
    return {"object": "list", "data": data}


@router.get("/models/{model:path}", summary="Retrieve a model (OpenAI)")
async def model(model: str, gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    backend = gateway.source.resolve(model)
    if backend is None or not caller.allows(model):
        raise ModelNotFound(f"model {model!r} not found", param="model")
    return _model_card(backend)


def _model_card(backend: Backend) -> dict[str, Any]:
    return {"id": backend.model, "object": "model", "created": 0, "owned_by": "relais"}


@router.post(
    "/{path:path}",
    summary="Any other OpenAI-compatible route, routed by `model` (e.g. /v1/responses)",
    openapi_extra=request_body(AnyModelRequest),
)
async def any_model_route(path: str, request: Request) -> Response:
    if not FORWARDABLE.fullmatch(path) or any(part in (".", "..") for part in path.split("/")):
        # Never let a path climb out of /v1/ on the engine (e.g. to Ollama's /api/pull).
        raise NotFound(f"no route /v1/{path[:100]}")
    body = read_json(request)
    owned = check(AnyModelRequest, body)
    limit = _first_int(body, "max_output_tokens", "max_completion_tokens", "max_tokens")
    gateway, backend = _admit(request, owned.model, limit)
    body["model"] = backend.upstream_model
    return await _forward(request, gateway, backend, f"/v1/{path}", body, raw=True)


def _first_int(body: Json, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    AnyModelRequest,
)
