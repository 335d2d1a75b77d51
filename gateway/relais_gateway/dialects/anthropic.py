"""The Anthropic Messages dialect: `/v1/messages` and `/v1/messages/count_tokens` (Claude Code,
the `anthropic` SDKs, LangChain's ChatAnthropic).

Engines that serve Messages themselves (vLLM) get the body as sent, with the gateway's owned
fields written last (model, stream, `max_tokens` capped), and their events stream back as
written. For the others (TGI, Ollama's OpenAI routes, any `engine: openai` server)
`translate_anthropic.py` carries the request to Chat Completions and the answer back. Errors on
these routes are Anthropic's shape (`errors.render_error`). `GET /v1/models` answers in
Anthropic's shape when the request carries `anthropic-version`, as the SDK's always does.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from relais_gateway.dialects import translate_anthropic as translate
from relais_gateway.dialects.common import check, json_response, read_json, stream, whole
from relais_gateway.dialects.openai import SSE, SSE_HEADERS, admit, forward
from relais_gateway.edge import deps
from relais_gateway.edge.deps import request_body
from relais_gateway.errors import NotSupported, malformed_answer
from relais_gateway.forward.owned import own_openai
from relais_gateway.routing.engines import CHAT, MESSAGES, ROUTES
from relais_gateway.routing.registry import Backend

router = APIRouter(prefix="/v1", tags=["Anthropic"])

COUNT_TOKENS = "/v1/messages/count_tokens"


class MessagesRequest(BaseModel):
    """POST /v1/messages: the fields Relais reads; every other one reaches the engine."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    stream: StrictBool | None = False


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)


def native(backend: Backend) -> bool:
    """Whether the model's engine serves Messages itself."""
    return MESSAGES in backend.kind.routes


@router.post(
    "/messages",
    summary="Create a message (Anthropic Messages API)",
    tags=["Anthropic"],
    openapi_extra=request_body(MessagesRequest),
)
async def messages(request: Request) -> Response:
    body = read_json(request)
    owned = check(MessagesRequest, body)
    gateway, backend = admit(request, owned.model)
    if native(backend):
        return await forward(request, gateway, backend, MESSAGES, body, raw=True)
    gateway.require(backend, CHAT)
    chat = translate.messages_request(body)
    decided = own_openai(chat, backend, CHAT, ROUTES[CHAT])
    if decided.capped:
        gateway.metrics.capped.labels(backend.label).inc()
    chat = backend.kind.adapt_openai(chat)
    if decided.stream:
        reader = translate.MessagesStreamTranslator(backend.model)
        return await stream(gateway, backend, CHAT, chat, request, reader, SSE, SSE_HEADERS)
    reply = await whole(gateway, backend, CHAT, chat, request)
    with malformed_answer():
        answer = translate.messages_answer(orjson.loads(reply.body), backend.model)
    usage = answer["usage"]
    deps.count_tokens(
        request, gateway, backend.label, usage["input_tokens"], usage["output_tokens"]
    )
    return json_response(answer)


@router.post(
    "/messages/count_tokens",
    summary="Count a message's tokens (Anthropic Messages API; engines that serve Messages)",
    tags=["Anthropic"],
    openapi_extra=request_body(CountTokensRequest),
)
async def count_tokens(request: Request) -> Response:
    body = read_json(request)
    owned = check(CountTokensRequest, body)
    gateway, backend = admit(request, owned.model)
    if not native(backend):
        raise NotSupported(
            f"model {backend.model!r} is served by {backend.engine}, which has no token counting"
            " for Messages (vLLM has)"
        )
    return await forward(request, gateway, backend, COUNT_TOKENS, body, raw=True)


REQUEST_MODELS: tuple[type[BaseModel], ...] = (MessagesRequest, CountTokensRequest)
