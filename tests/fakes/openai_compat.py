"""OpenAI-compatible routes shared by the fakes: Ollama's `/v1/*` and TGI's Messages API.

The two engines differ in small, observable ways, captured by `Flavor`: Ollama writes `data: `
and sends headers with the first chunk; TGI (axum) writes `data:` and sends headers at once;
their error bodies and the `model` they report differ.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.core import (
    STATE,
    BadRequest,
    ChunkStream,
    ErrorRenderer,
    Json,
    Plan,
    begin,
    guard,
    make_plan,
    sleep_ms,
    stream_with_drops,
)


@dataclass(frozen=True)
class Flavor:
    """How one engine speaks the OpenAI dialect."""

    sse_prefix: bytes
    render_error: ErrorRenderer
    fingerprint: str
    headers_early: bool
    invalid_status: int  # status of a request the engine rejects (Ollama 400, TGI 422)
    resolve_model: Callable[[web.Request, str], str]  # requested name -> name in the answer
    list_models: Callable[[web.Request], list[str]]


def add_openai_routes(app: web.Application, flavor: Flavor) -> None:
    """Register `/v1/chat/completions`, `/v1/completions` and `/v1/models` for `flavor`."""

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _chat(request, flavor)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _completions(request, flavor)

    async def models(request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "library"}
            for name in flavor.list_models(request)
        ]
        return web.json_response({"object": "list", "data": data})

    checked = guard(flavor.render_error, flavor.invalid_status)
    app.router.add_post("/v1/chat/completions", checked(chat))
    app.router.add_post("/v1/completions", checked(completions))
    app.router.add_get("/v1/models", models)


def message_text(message: Json) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    if not isinstance(message, dict) or "role" not in message:
        raise BadRequest("each message needs a role and content")
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def stop_list(value: Json) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("stop must be a string or a list of strings")


def optional_int(body: dict[str, Json], *names: str, minimum: int = 1) -> int | None:
    """The first of `names` present in `body`, checked to be an integer >= minimum."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise BadRequest(f"{name} must be an integer >= {minimum}")
        return value
    return None


def response_format_spec(value: Json) -> Json:
    """`response_format` as a structured-output spec: None, "json", or a JSON schema."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("response_format must be an object")
    kind = value.get("type")
    if kind in (None, "text", "regex"):
        return None
    if kind == "json_schema":
        inner = value.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        return parse_schema(schema if schema is not None else {"type": "object"})
    if kind in ("json", "json_object"):
        return parse_schema(value["value"]) if value.get("value") is not None else "json"
    raise BadRequest(f"response_format.type {kind!r} is not supported")


def parse_schema(value: Json) -> Json:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadRequest(f"invalid JSON schema: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest("the JSON schema must be an object")
    return value


def _plan(request: web.Request, body: dict[str, Json], prompt: str) -> Plan:
    seed = body.get("seed")
    return make_plan(
        request.app[STATE].switches,
        prompt=prompt,
        max_tokens=optional_int(body, "max_completion_tokens", "max_tokens"),
        stop=stop_list(body.get("stop")),
        seed=seed if isinstance(seed, int) else None,
        structured=response_format_spec(body.get("response_format")),
    )


def _usage(plan: Plan) -> dict[str, int]:
    completion = len(plan.pieces)
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }


def _model(request: web.Request, body: dict[str, Json], flavor: Flavor) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    return flavor.resolve_model(request, model)


async def _chat(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    model = _model(request, body, flavor)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    plan = _plan(request, body, " ".join(message_text(m) for m in messages))
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": flavor.fingerprint,
    }
    if body.get("stream"):
        return await _stream_chat(request, flavor, body, plan, base)
    await sleep_ms(request.app[STATE].switches.delay_ms)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": plan.text},
        "logprobs": None,
        "finish_reason": plan.finish,
    }
    answer = {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(plan)}
    return web.json_response(answer)


def _include_usage(body: dict[str, Json]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def _stream_chat(
    request: web.Request,
    flavor: Flavor,
    body: dict[str, Json],
    plan: Plan,
    base: dict[str, Json],
) -> web.StreamResponse:
    switches = request.app[STATE].switches
    chunk_base = {**base, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return (
            flavor.sse_prefix + json.dumps({**chunk_base, "choices": [choice]}).encode() + b"\n\n"
        )

    async def produce(stream: ChunkStream) -> None:
        if flavor.headers_early:
            await stream.prepare()
        for index, piece in enumerate(plan.pieces):
            await sleep_ms(switches.first_token_delay_ms if index == 0 else switches.token_delay_ms)
            await stream.send(chunk({"role": "assistant", "content": piece}, None))
        if not plan.pieces:
            await sleep_ms(switches.first_token_delay_ms)
        await stream.send(chunk({"role": "assistant", "content": ""}, plan.finish))
        if _include_usage(body):
            usage = {**chunk_base, "choices": [], "usage": _usage(plan)}
            await stream.send(flavor.sse_prefix + json.dumps(usage).encode() + b"\n\n")
        await stream.send(flavor.sse_prefix + b"[DONE]\n\n")

    return await stream_with_drops(produce, ChunkStream(request, "text/event-stream"))


async def _completions(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    model = _model(request, body, flavor)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    plan = _plan(request, body, prompt)
    base = {
        "id": f"cmpl-{uuid.uuid4().hex[:12]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": flavor.fingerprint,
    }
    if body.get("stream"):
        return await _stream_completion(request, flavor, body, plan, base)
    await sleep_ms(request.app[STATE].switches.delay_ms)
    choice = {"index": 0, "text": plan.text, "logprobs": None, "finish_reason": plan.finish}
    return web.json_response({**base, "choices": [choice], "usage": _usage(plan)})


async def _stream_completion(
    request: web.Request,
    flavor: Flavor,
    body: dict[str, Json],
    plan: Plan,
    base: dict[str, Json],
) -> web.StreamResponse:
    switches = request.app[STATE].switches

    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return flavor.sse_prefix + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

    async def produce(stream: ChunkStream) -> None:
        if flavor.headers_early:
            await stream.prepare()
        for index, piece in enumerate(plan.pieces):
            await sleep_ms(switches.first_token_delay_ms if index == 0 else switches.token_delay_ms)
            await stream.send(chunk(piece, None))
        if not plan.pieces:
            await sleep_ms(switches.first_token_delay_ms)
        await stream.send(chunk("", plan.finish))
        if _include_usage(body):
            usage = {**base, "choices": [], "usage": _usage(plan)}
            await stream.send(flavor.sse_prefix + json.dumps(usage).encode() + b"\n\n")
        await stream.send(flavor.sse_prefix + b"[DONE]\n\n")

    return await stream_with_drops(produce, ChunkStream(request, "text/event-stream"))
