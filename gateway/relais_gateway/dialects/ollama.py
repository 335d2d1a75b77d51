"""The Ollama dialect: /api/chat, /api/generate (NDJSON streams by default), /api/tags, version."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
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
    started,
)
from relais_gateway.dialects.common import (
    ChunkStreamResponse,
    open_stream,
    run_whole,
    stream_error,
)
from relais_gateway.errors import InvalidRequest
from relais_gateway.service import Gateway, check_json_schema

router = APIRouter(prefix="/api", tags=["Ollama"])

NDJSON = "application/x-ndjson"


def _relais_version() -> str:
    try:
        return version("relais")
    except PackageNotFoundError:
        return "0.0.0"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(BaseModel):
    """Ollama `options`; the sampling ones Relais passes on are typed, others are ignored."""

    model_config = ConfigDict(extra="allow")
    num_predict: int | None = Field(default=None, ge=-2)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: list[str] | None = Field(default=None, max_length=16)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


Format = Literal["json", ""] | dict[str, Any]


class ChatRequest(_Wire):
    """The body of POST /api/chat."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    format: Format | None = None
    options: Options | None = None


class GenerateRequest(_Wire):
    """The body of POST /api/generate."""

    model: str = Field(min_length=1)
    prompt: str = ""
    system: str | None = None
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    images: list[str] | None = None


def _structured(fmt: Format | None) -> tuple[dict[str, Any] | None, bool]:
    if isinstance(fmt, dict):
        check_json_schema(fmt, "format")
        return fmt, False
    return None, fmt == "json"


def _sampling(options: Options | None) -> dict[str, Any]:
    if options is None:
        return {}
    num_predict = options.num_predict
    return {
        "max_tokens": num_predict if num_predict is not None and num_predict > 0 else None,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "seed": options.seed,
        "stop": options.stop,
    }


def chat_request(body: ChatRequest) -> GenerationRequest:
    """The canonical request for an Ollama chat."""
    for i, message in enumerate(body.messages):
        if message.images:
            raise InvalidRequest("images are not supported", param=f"messages.{i}.images")
    schema, json_mode = _structured(body.format)
    return GenerationRequest(
        kind="chat",
        model=body.model,
        stream=body.stream,
        messages=[{"role": m.role, "content": m.content} for m in body.messages],
        json_schema=schema,
        json_mode=json_mode,
        **_sampling(body.options),
    )


def generate_request(body: GenerateRequest) -> GenerationRequest:
    """The canonical request for an Ollama generate (a system prompt leads the prompt)."""
    if body.images:
        raise InvalidRequest("images are not supported", param="images")
    schema, json_mode = _structured(body.format)
    prompt = f"{body.system}\n\n{body.prompt}" if body.system else body.prompt
    return GenerationRequest(
        kind="completion",
        model=body.model,
        stream=body.stream,
        prompt=prompt,
        json_schema=schema,
        json_mode=json_mode,
        **_sampling(body.options),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _piece(chat: bool, text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}} if chat else {"response": text}


def final_line(chat: bool, model: str, text: str, finish: Finish, t0: float) -> dict[str, Any]:
    """The `done: true` object (whole answer for non-streamed requests)."""
    elapsed_ns = int((time.perf_counter() - t0) * 1e9)
    return {
        "model": model,
        "created_at": _now(),
        **_piece(chat, text),
        "done": True,
        "done_reason": finish.reason,
        "total_duration": elapsed_ns,
        "load_duration": 0,
        "prompt_eval_count": finish.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": finish.completion_tokens,
        "eval_duration": elapsed_ns,
    }


async def ndjson(
    chat: bool, model: str, t0: float, first: Event, events: AsyncGenerator[Event, None]
) -> AsyncGenerator[bytes, None]:
    """The NDJSON body: a line per text delta, then the `done` line; errors as `{"error": ...}`."""
    head = orjson.dumps({"model": model})[:-1] + b',"created_at":'
    field = b',"message":{"role":"assistant","content":' if chat else b',"response":'
    tail = b'},"done":false}\n' if chat else b',"done":false}\n'

    def line(event: Event) -> bytes:
        if isinstance(event, str):
            return head + orjson.dumps(_now()) + field + orjson.dumps(event) + tail
        return orjson.dumps(final_line(chat, model, "", event, t0)) + b"\n"

    async with aclosing(events):
        try:
            yield line(first)
            async for event in events:
                yield line(event)
        except Exception as exc:  # the stream began: report in-band, as Ollama does
            yield orjson.dumps({"error": stream_error(exc).message}) + b"\n"


def _loaded(chat: bool, model: str) -> Response:
    """Ollama answers an empty prompt by loading the model; Relais models are always loaded."""
    body = {"model": model, "created_at": _now(), **_piece(chat, ""), "done": True}
    return Response(orjson.dumps(body | {"done_reason": "load"}), media_type="application/json")


async def _serve(
    chat: bool, req: GenerationRequest, request: Request, gateway: Gateway, caller: Caller
) -> Response:
    note_model(request, gateway, req.model)
    backend = gateway.admit(caller, req.model, req.max_tokens)
    if (chat and not req.messages) or (not chat and not req.prompt):
        return _loaded(chat, req.model)
    t0 = started(request)
    if not req.stream:
        answer = await run_whole(gateway, backend, req, request)
        body = final_line(chat, req.model, answer.text, answer.finish, t0)
        return Response(orjson.dumps(body), media_type="application/json")
    first, events = await open_stream(gateway, backend, req, request)
    return ChunkStreamResponse(ndjson(chat, req.model, t0, first, events), NDJSON, {})


@router.post("/chat", summary="Chat (Ollama)", openapi_extra=request_body(ChatRequest))
async def chat(request: Request) -> Response:
    body = parse_body(request, ChatRequest)
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    return await _serve(True, chat_request(body), request, gateway, caller)


@router.post("/generate", summary="Generate (Ollama)", openapi_extra=request_body(GenerateRequest))
async def generate(request: Request) -> Response:
    body = parse_body(request, GenerateRequest)
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    return await _serve(False, generate_request(body), request, gateway, caller)


@router.get("/tags", summary="List models (Ollama)")
async def tags(gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    models = [
        {
            "name": b.model,
            "model": b.model,
            "modified_at": "1970-01-01T00:00:00Z",
            "size": 0,
            "digest": "",
            "details": {
                "format": "",
                "family": b.engine,
                "parameter_size": "",
                "quantization_level": "",
            },
        }
        for b in gateway.visible_backends(caller)
    ]
    return {"models": models}


@router.get("/version", summary="Version (Ollama)")
async def api_version() -> dict[str, str]:
    return {"version": _relais_version()}


REQUEST_MODELS: tuple[type[BaseModel], ...] = (ChatRequest, GenerateRequest)
