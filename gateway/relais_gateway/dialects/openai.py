"""The OpenAI dialect: /v1/chat/completions, /v1/completions (JSON or SSE) and /v1/models."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from relais_gateway.auth import Caller
from relais_gateway.canonical import Event, Finish, GenerationRequest
from relais_gateway.deps import (
    CallerDep,
    GatewayDep,
    caller_of,
    gateway_of,
    note_model,
    parse_body,
    request_body,
    request_id,
)
from relais_gateway.dialects.common import (
    ChunkStreamResponse,
    open_stream,
    run_whole,
    stream_error,
)
from relais_gateway.errors import InvalidRequest
from relais_gateway.service import Answer, Gateway, check_json_schema

router = APIRouter(prefix="/v1", tags=["OpenAI"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class JsonSchemaFormat(_Wire):
    name: str = "output"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Wire):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = Field(default=None, max_length=16)
    n: int | None = Field(default=None, ge=1, le=1, description="Only n=1 is supported.")
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    """The body of POST /v1/chat/completions (the fields Relais uses; others are ignored)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    """The body of POST /v1/completions (one prompt)."""

    prompt: str | list[str]


def _stop(stop: str | list[str] | None) -> list[str] | None:
    return [stop] if isinstance(stop, str) else stop


def _text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"content part type {part.type!r} is not supported (text only)",
                param=f"messages.{index}.content",
            )
        parts.append(part.text)
    return "".join(parts)


def _structured(fmt: ResponseFormat | None) -> tuple[dict[str, Any] | None, bool]:
    if fmt is None or fmt.type == "text":
        return None, False
    if fmt.type == "json_object":
        return None, True
    if fmt.json_schema is None:
        raise InvalidRequest(
            "response_format.json_schema is required for type json_schema",
            param="response_format.json_schema",
        )
    schema = fmt.json_schema.schema_
    check_json_schema(schema, "response_format.json_schema.schema")
    return schema, False


def chat_request(body: ChatCompletionRequest) -> GenerationRequest:
    """The canonical request for an OpenAI chat completion."""
    schema, json_mode = _structured(body.response_format)
    messages = [{"role": m.role, "content": _text(m, i)} for i, m in enumerate(body.messages)]
    return GenerationRequest(
        kind="chat",
        model=body.model,
        stream=body.stream,
        messages=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=_stop(body.stop),
        json_schema=schema,
        json_mode=json_mode,
    )


def completion_request(body: CompletionRequest) -> GenerationRequest:
    """The canonical request for an OpenAI (legacy) completion."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("exactly one prompt is supported", param="prompt")
        prompt = prompt[0]
    return GenerationRequest(
        kind="completion",
        model=body.model,
        stream=body.stream,
        prompt=prompt,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=_stop(body.stop),
    )


def _usage(finish: Finish) -> dict[str, int]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


def whole_body(kind: str, rid: str, model: str, answer: Answer) -> dict[str, Any]:
    """A non-streamed OpenAI response body."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": answer.finish.reason}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": answer.text, "refusal": None}
    else:
        choice["text"] = answer.text
    return {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{rid}",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": _usage(answer.finish),
    }


class _SseChunks:
    """Pre-serialised pieces of one stream's chunks, so each token costs one small dumps."""

    def __init__(self, kind: str, rid: str, model: str, include_usage: bool) -> None:
        self.chat = kind == "chat"
        self.include_usage = include_usage
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        head = {
            "id": f"{'chatcmpl' if self.chat else 'cmpl'}-{rid}",
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self.head = head
        self.prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":[{"index":0,'
        self.suffix = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if include_usage else b"}\n\n"
        )

    def role(self) -> bytes:
        return self.prefix + b'"delta":{"role":"assistant","content":""}' + self.suffix

    def text(self, text: str) -> bytes:
        field = b'"delta":{"content":' if self.chat else b'"text":'
        closing = b"}" if self.chat else b""
        return self.prefix + field + orjson.dumps(text) + closing + self.suffix

    def event(self, event: Event) -> bytes:
        return self.text(event) if isinstance(event, str) else self.finish(event)

    def finish(self, finish: Finish) -> bytes:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish.reason}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        last: dict[str, Any] = {**self.head, "choices": [choice]}
        out = _sse(last | ({"usage": None} if self.include_usage else {}))
        if self.include_usage:
            out += _sse({**self.head, "choices": [], "usage": _usage(finish)})
        return out + b"data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def sse(
    chunks: _SseChunks, first: Event, events: AsyncGenerator[Event, None]
) -> AsyncGenerator[bytes, None]:
    """The SSE body: role chunk, text chunks, finish (+usage) chunk, [DONE]; errors as a chunk.

    The role chunk leaves with the first event (one write); every later event leaves at once.
    """
    lead = chunks.role() if chunks.chat else b""
    async with aclosing(events):
        try:
            yield lead + chunks.event(first)
            async for event in events:
                yield chunks.event(event)
        except Exception as exc:  # the stream began: report in-band, as OpenAI does
            yield _sse(stream_error(exc).openai_body())


async def _serve(
    kind: Literal["chat", "completion"],
    req: GenerationRequest,
    include_usage: bool,
    request: Request,
    gateway: Gateway,
    caller: Caller,
) -> Response:
    note_model(request, gateway, req.model)
    backend = gateway.admit(caller, req.model, req.max_tokens)
    rid = request_id(request)
    if not req.stream:
        answer = await run_whole(gateway, backend, req, request)
        return Response(
            orjson.dumps(whole_body(kind, rid, req.model, answer)),
            200,
            media_type="application/json",
        )
    first, events = await open_stream(gateway, backend, req, request)
    chunks = _SseChunks(kind, rid, req.model, include_usage)
    return ChunkStreamResponse(
        sse(chunks, first, events), media_type="text/event-stream", headers=SSE_HEADERS
    )


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI)",
    openapi_extra=request_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    body = parse_body(request, ChatCompletionRequest)
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return await _serve("chat", chat_request(body), include_usage, request, gateway, caller)


@router.post(
    "/completions",
    summary="Create a completion (OpenAI legacy)",
    openapi_extra=request_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    body = parse_body(request, CompletionRequest)
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return await _serve(
        "completion", completion_request(body), include_usage, request, gateway, caller
    )


@router.get("/models", summary="List models (OpenAI)")
async def models(gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    data = [
        {"id": b.model, "object": "model", "created": 0, "owned_by": "relais"}
        for b in gateway.visible_backends(caller)
    ]
    return {"object": "list", "data": data}


REQUEST_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest)
