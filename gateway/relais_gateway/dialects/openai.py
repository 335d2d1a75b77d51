"""The OpenAI dialect: `/v1/...` routes, forwarded to every engine's OpenAI-compatible server.

The body is forwarded as the client sent it. The gateway owns a few fields (`forward/owned.py`):
`model` (renamed to the engine's own name), `stream`, the output-token limit and the sequences from
`requestLimits`, and the usage chunk of streams (asked for when the client did not, read for
metrics, then dropped). The models below validate only what the gateway reads; every other field
reaches the engine untouched. Only inference routes reach an engine (`engines.ROUTES`).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from relais_gateway.dialects import translate_anthropic
from relais_gateway.dialects.common import (
    Json,
    check,
    json_response,
    read_json,
    stream,
    whole,
)
from relais_gateway.edge.deps import (
    CallerDep,
    GatewayDep,
    caller_of,
    count_tokens,
    gateway_of,
    note_model,
    request_body,
)
from relais_gateway.errors import (
    InvalidRequest,
    ModelNotFound,
    NotFound,
    UpstreamError,
    malformed_answer,
)
from relais_gateway.forward.owned import own_openai
from relais_gateway.forward.relay import RawRelay, Rewrite, SseRelay, renamer, token_count
from relais_gateway.forward.service import Gateway, check_json_schema, check_structured
from relais_gateway.routing.engines import CHAT, COMPLETIONS, EMBEDDINGS, ROUTES
from relais_gateway.routing.prefix import chat_prefix, prompt_prefix
from relais_gateway.routing.registry import Backend

router = APIRouter(prefix="/v1", tags=["OpenAI"])

SSE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Owned(BaseModel):
    """Fields Relais reads; `extra="allow"`: everything else is forwarded as sent."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(_Owned):
    include_usage: StrictBool | None = False


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
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)


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
    stream: StrictBool | None = False


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


def admit(request: Request, model: str) -> tuple[Gateway, Backend]:
    """The caller's backend for `model` (404, 429), noted for the request log and metrics."""
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    note_model(request, gateway, model)
    return gateway, gateway.admit(caller, model)


async def forward(
    request: Request,
    gateway: Gateway,
    backend: Backend,
    path: str,
    body: Json,
    *,
    prefix: str = "",
    schema: tuple[bool, dict[str, Any] | None] = (False, None),
    raw: bool = False,
    rewrite: Rewrite | None = None,
) -> Response:
    """Forward `body` to `path`, its owned fields written last; answer with the engine's bytes
    (the model renamed back)."""
    gateway.require(backend, path)
    owned = own_openai(body, backend, path, ROUTES.get(path))
    if owned.capped:
        gateway.metrics.capped.labels(backend.label).inc()
    body = backend.kind.adapt_openai(body)
    rename = rewrite or renamer(backend.model)
    weight = owned.sequences
    if owned.stream:
        options = body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        if not raw:  # usage feeds the token metrics; dropped again when the client did not ask
            body["stream_options"] = {**(options or {}), "include_usage": True}
        reader: RawRelay | SseRelay = (
            RawRelay(rename)
            if raw
            else SseRelay(rename, strip_usage=not asked, add_usage=asked, chat=path == CHAT)
        )
        return await stream(
            gateway, backend, path, body, request, reader, SSE, SSE_HEADERS, prefix, weight
        )
    reply = await whole(gateway, backend, path, body, request, prefix, weight)
    data = _parsed(reply.body) if not raw or path == EMBEDDINGS else None
    if data is None and (not raw or path == EMBEDDINGS):
        raise UpstreamError("the engine's answer is not a JSON object")
    if data is not None:
        _count(request, gateway, backend, data)
        if schema[0]:
            with malformed_answer():
                _check_choices(data, schema[1])
    content = rename(reply.body)
    return json_response(content, media_type=reply.content_type)


def _check_choices(data: Json, schema: dict[str, Any] | None) -> None:
    for choice in data.get("choices") or ():
        message = choice.get("message") or {}
        if not message.get("tool_calls"):
            check_structured(str(message.get("content") or ""), schema)


def _parsed(body: bytes) -> Json | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _count(request: Request, gateway: Gateway, backend: Backend, data: Json) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        count_tokens(request, gateway, backend.label, prompt, completion)


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI)",
    openapi_extra=request_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    body = read_json(request)
    owned = check(ChatCompletionRequest, body)
    gateway, backend = admit(request, owned.model)
    schema = _structured(owned.response_format)
    prefix = chat_prefix(body["messages"], backend.routing.prefix_char_length)
    return await forward(request, gateway, backend, CHAT, body, prefix=prefix, schema=schema)


@router.post(
    "/completions",
    summary="Create a completion (OpenAI legacy)",
    openapi_extra=request_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    body = read_json(request)
    owned = check(CompletionRequest, body)
    gateway, backend = admit(request, owned.model)
    prefix = prompt_prefix(body["prompt"], backend.routing.prefix_char_length)
    return await forward(request, gateway, backend, COMPLETIONS, body, prefix=prefix)


@router.post(
    "/embeddings",
    summary="Create embeddings (OpenAI)",
    openapi_extra=request_body(EmbeddingRequest),
)
async def embeddings(request: Request) -> Response:
    body = read_json(request)
    owned = check(EmbeddingRequest, body)
    gateway, backend = admit(request, owned.model)
    return await forward(request, gateway, backend, EMBEDDINGS, body, raw=True)


@router.get("/models", summary="List models (OpenAI; Anthropic's shape with `anthropic-version`)")
async def models(request: Request, gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    visible = gateway.visible_backends(caller)
    if "anthropic-version" in request.headers:
        return translate_anthropic.models_list([b.model for b in visible])
    return {"object": "list", "data": [_model_card(b) for b in visible]}


@router.get("/models/{model:path}", summary="Retrieve a model (OpenAI, or Anthropic's shape)")
async def model(
    model: str, request: Request, gateway: GatewayDep, caller: CallerDep
) -> dict[str, Any]:
    backend = gateway.source.resolve(model)
    if backend is None or not caller.allows(backend.label):
        raise ModelNotFound(f"model {model!r} not found", param="model")
    if "anthropic-version" in request.headers:
        card: dict[str, Any] = translate_anthropic.models_list([backend.model])["data"][0]
        return card
    return _model_card(backend)


CAPABILITIES = {
    "generate": ["chat.completions", "completions"],
    "embed": ["embeddings"],
    None: ["chat.completions", "completions", "embeddings"],
}
"""What a model serves, by its task (None: the engine's own mix), in `/v1/models`."""


def _model_card(backend: Backend) -> dict[str, Any]:
    """A model's card; an adapter's names its base in `parent`, as vLLM's listing does."""
    serves = [
        c for c in CAPABILITIES[backend.task] if f"/v1/{c.replace('.', '/')}" in backend.kind.routes
    ]
    card: dict[str, Any] = {
        "id": backend.model,
        "object": "model",
        "created": 0,
        "owned_by": "relais",
        "capabilities": serves,
    }
    if backend.parent:
        card["parent"] = backend.parent
    return card


@router.post(
    "/{path:path}",
    summary="Any other inference route, routed by `model` (/v1/responses, /v1/rerank, ...)",
    openapi_extra=request_body(AnyModelRequest),
)
async def any_model_route(path: str, request: Request) -> Response:
    target = f"/v1/{path}"
    if target not in ROUTES:
        # Only inference reaches an engine: never adapter loading, sleep, cache resets, RPC...
        raise NotFound(f"no route {target[:100]}")
    body = read_json(request)
    owned = check(AnyModelRequest, body)
    gateway, backend = admit(request, owned.model)
    return await forward(request, gateway, backend, target, body, raw=True)


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    AnyModelRequest,
)


root_router = APIRouter(tags=["vLLM"])


_ANY_BODY = request_body(AnyModelRequest)


@root_router.post("/rerank", summary="Rerank (vLLM, Jina's form)", openapi_extra=_ANY_BODY)
@root_router.post("/v2/rerank", summary="Rerank (vLLM, Cohere's v2 form)", openapi_extra=_ANY_BODY)
@root_router.post("/score", summary="Score sentence pairs (vLLM)", openapi_extra=_ANY_BODY)
@root_router.post("/tokenize", summary="Tokenize (vLLM)", openapi_extra=_ANY_BODY)
@root_router.post("/detokenize", summary="Detokenize (vLLM)", openapi_extra=_ANY_BODY)
async def vllm_route(request: Request) -> Response:
    """vLLM's routes beside `/v1`, routed by `model` and forwarded as sent."""
    body = read_json(request)
    owned = check(AnyModelRequest, body)
    gateway, backend = admit(request, owned.model)
    path: str = request.scope["path"]
    return await forward(request, gateway, backend, path, body, raw=True)
