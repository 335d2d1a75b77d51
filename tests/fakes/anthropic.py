"""Anthropic Messages routes for the fake engines, answered as vLLM's Anthropic server answers.

`add_anthropic_routes(app, flavor)` mounts `POST /v1/messages` (whole and streamed) and
`POST /v1/messages/count_tokens` on a fake that already serves the OpenAI routes (vLLM, Ollama).
Generation follows the same deterministic rules as the chat route (`tests.fakes.core`): the same
words, the same tool policy and arguments, the same image and tool-result prefaces, cut by
`max_tokens` and `stop_sequences`, paced and dropped by the same switches.

The shapes follow vLLM's `vllm/entrypoints/anthropic` (it converts the request to a chat
completion and the answer back): whole answers are dumped without null fields (no
`stop_sequence`), thinking blocks carry a random hex `signature`, a matched stop sequence reports
`end_turn`; streams have no `ping`, the `message_start` message has no `type`/`role` (unset
fields are not dumped), a thinking block ends with a `signature_delta`, and `message_delta` carries
both counts. Errors are `{"type": "error", "error": {"type": <vLLM's error class>, "message"}}`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.core import (
    REASONING_TEXT,
    STATE,
    BadRequest,
    ChunkStream,
    Json,
    Plan,
    ToolCall,
    begin,
    count_tokens,
    decode_image,
    guard,
    image_preface,
    json_pieces,
    make_plan,
    sleep_ms,
    stream_with_drops,
    tool_plan,
    tool_result_preface,
    word_pieces,
)
from tests.fakes.openai_compat import Flavor

BLOCK_TYPES = {"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"}
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "ctx": "user", "msg": "user"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
ERROR_KINDS = {400: "BadRequestError", 404: "NotFoundError", 501: "NotImplementedError"}


def error_kind(status: int) -> str:
    """vLLM's error `type`: its exception class for the status."""
    return ERROR_KINDS.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def render_error(status: int, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": error_kind(status), "message": message}}
    return web.json_response(body, status=status)


def add_anthropic_routes(app: web.Application, flavor: Flavor) -> None:
    """Register `/v1/messages` and `/v1/messages/count_tokens` (models resolved by `flavor`)."""

    async def messages(request: web.Request) -> web.StreamResponse:
        return await _messages(request, flavor)

    async def tokens(request: web.Request) -> web.StreamResponse:
        return await _count_tokens(request, flavor)

    checked = guard(render_error, 400)
    app.router.add_post("/v1/messages", checked(messages))
    app.router.add_post("/v1/messages/count_tokens", checked(tokens))


# ---------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class Conversation:
    """What the fake reads from an Anthropic request: prompt text, images, a last tool result."""

    prompt: str
    images: int
    tool_result: str | None

    @property
    def preface(self) -> str:
        parts = [image_preface(self.images)]
        if self.tool_result is not None:
            parts.append(tool_result_preface(self.tool_result))
        return " ".join(p for p in parts if p)


def _blocks(content: Json, where: str) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}: content must be a string or a list of content blocks")
    for block in content:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            kind = block.get("type") if isinstance(block, dict) else block
            raise BadRequest(f"{where}: unsupported content block type {kind!r}")
    return content


def _image(block: Json) -> None:
    """Check an image block as vLLM's media loader would; the fake has no network."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest("image blocks need a source")
    if source.get("type") == "url":
        raise BadRequest("the fake engine has no network: send images as base64")
    decode_image(source.get("data"))


def _texts(blocks: list[Json]) -> tuple[list[str], int]:
    """The text of blocks (tool results included) and how many images they hold."""
    texts, images = [], 0
    for block in blocks:
        kind = block["type"]
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image":
            _image(block)
            images += 1
        elif kind == "tool_result":
            content = block.get("content")
            inner, found = _texts(_blocks(content, "tool_result")) if content else ([], 0)
            texts += inner
            images += found
        elif kind == "tool_use" and not isinstance(block.get("input", {}), dict):
            raise BadRequest("tool_use input must be an object")
    return texts, images


def read_conversation(body: Json) -> Conversation:
    """Check `system` and `messages` as vLLM's request model does, and read them."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    system = body.get("system")
    texts, images = _texts(_blocks(system, "system")) if system else ([], 0)
    last: list[Json] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise BadRequest(f"messages.{index}.role must be user or assistant")
        last = _blocks(message.get("content"), f"messages.{index}")
        found, count = _texts(last)
        texts += found
        images += count
    results = [b for b in last if b["type"] == "tool_result"]
    tool_result = None
    if results and len(results) == len(last) and not _texts(results)[1]:  # ends in a tool turn
        tool_result = " ".join(_texts(results[-1:])[0])
    return Conversation(" ".join(texts), images, tool_result)


def _openai_tools(body: Json) -> tuple[Json, Json]:
    """`tools` and `tool_choice` in the shape `core.tool_plan` reads (vLLM converts them so)."""
    tools = body.get("tools")
    if tools is None:
        return None, None
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    converted = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest("each tool needs a name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise BadRequest("input_schema must be a dictionary")
        converted.append(
            {"type": "function", "function": {"name": tool["name"], "parameters": schema}}
        )
    return converted, _tool_choice(body.get("tool_choice"))


def _tool_choice(choice: Json) -> Json:
    if choice is None:
        return "auto"
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        if not choice.get("name"):
            raise BadRequest("tool_choice.name is required when type is 'tool'")
        return {"type": "function", "function": {"name": choice["name"]}}
    names = {"auto": "auto", "any": "required", "none": "none"}
    if kind not in names:
        raise BadRequest(f"invalid tool_choice: {json.dumps(choice)}")
    return names[kind]


def _max_tokens(body: Json) -> int:
    value = body.get("max_tokens")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("max_tokens: Field required (an integer)")
    if value <= 0:
        raise BadRequest("max_tokens must be positive")
    return value


def _stop(body: Json) -> list[str]:
    stop = body.get("stop_sequences")
    if stop is None:
        return []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop_sequences must be a list of strings")
    return stop


def _model(request: web.Request, body: Json, flavor: Flavor) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("Model is required")
    return flavor.resolve_model(request, model)


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class Reply:
    """One answer: reasoning pieces, then text (the plan) or one tool call."""

    plan: Plan
    tool: ToolCall | None
    tool_id: str
    reasoning: list[str]

    @property
    def arguments(self) -> str:
        return json.dumps(self.tool.arguments) if self.tool else ""

    @property
    def output_tokens(self) -> int:
        produced = len(json_pieces(self.arguments)) if self.tool else len(self.plan.pieces)
        return produced + len(self.reasoning)

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tool else STOP_REASONS[self.plan.finish]


def _reply(request: web.Request, body: Json, flavor: Flavor, convo: Conversation) -> Reply:
    switches = request.app[STATE].switches
    tools, choice = _openai_tools(body)
    tool = tool_plan(switches, tools, choice, convo.tool_result is not None)
    plan = make_plan(
        switches,
        prompt=convo.prompt,
        max_tokens=_max_tokens(body),
        stop=_stop(body),
        seed=None,
        preface=convo.preface,
    )
    reasoning: list[str] = []
    kwargs = body.get("chat_template_kwargs")
    thinking_off = isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False
    if flavor.reasoning_fields and switches.reasoning and not thinking_off:
        reasoning = word_pieces(REASONING_TEXT, count_tokens(REASONING_TEXT), 0)
    return Reply(plan, tool, "chatcmpl-tool-" + uuid.uuid4().hex, reasoning)


def _content(reply: Reply) -> list[Json]:
    content: list[Json] = []
    if reply.reasoning:
        thinking = "".join(reply.reasoning)
        content.append({"type": "thinking", "thinking": thinking, "signature": uuid.uuid4().hex})
    if reply.tool is not None:
        block = {"type": "tool_use", "id": reply.tool_id, "name": reply.tool.name}
        content.append({**block, "input": reply.tool.arguments})
    elif reply.plan.text:
        content.append({"type": "text", "text": reply.plan.text})
    return content


async def _messages(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    model = _model(request, body, flavor)
    convo = read_conversation(body)
    if flavor.validate is not None:  # sampling and context checks, on the converted request
        limits = {k: body.get(k) for k in ("temperature", "top_p", "top_k", "max_tokens")}
        flavor.validate(limits, count_tokens(convo.prompt))
    reply = _reply(request, body, flavor, convo)
    message_id = f"chatcmpl-{uuid.uuid4().hex}"
    prompt_tokens = count_tokens(convo.prompt)
    if body.get("stream"):
        return await _stream(request, flavor, reply, message_id, model, prompt_tokens)
    await sleep_ms(request.app[STATE].switches.delay_ms)
    answer = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": _content(reply),
        "model": model,
        "stop_reason": reply.stop_reason,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": reply.output_tokens},
    }
    return web.json_response(answer)


async def _count_tokens(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    _model(request, body, flavor)
    convo = read_conversation(body)
    _openai_tools(body)
    tokens = count_tokens(convo.prompt)
    return web.json_response(
        {"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}}
    )


# ---------------------------------------------------------------- streaming

Event = tuple[bytes, bool]  # (SSE event, is a generated token: paced by token_delay_ms)


def sse(data: Json) -> bytes:
    """One event, named after its type (vLLM's `wrap_data_with_event`)."""
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _block_events(index: int, start: Json, deltas: list[Json], signature: bool) -> list[Event]:
    """One content block; a thinking block is signed just before it stops."""

    def delta(body: Json) -> bytes:
        return sse({"type": "content_block_delta", "index": index, "delta": body})

    events = [(sse({"type": "content_block_start", "index": index, "content_block": start}), False)]
    events += [(delta(body), True) for body in deltas]
    if signature:
        events.append((delta({"type": "signature_delta", "signature": uuid.uuid4().hex}), False))
    events.append((sse({"type": "content_block_stop", "index": index}), False))
    return events


def stream_events(reply: Reply, message_id: str, model: str, prompt_tokens: int) -> list[Event]:
    """vLLM's event sequence for one reply (see the module docstring)."""
    usage = {"input_tokens": prompt_tokens, "output_tokens": 0}
    message: Json = {"id": message_id, "content": [], "model": model, "stop_reason": None}
    message |= {"stop_sequence": None, "usage": usage}
    events: list[Event] = [(sse({"type": "message_start", "message": message}), False)]
    index = 0
    if reply.reasoning:
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in reply.reasoning]
        events += _block_events(index, {"type": "thinking", "thinking": ""}, deltas, signature=True)
        index += 1
    if reply.tool is not None:
        start = {"type": "tool_use", "id": reply.tool_id, "name": reply.tool.name, "input": {}}
        pieces = json_pieces(reply.arguments)
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
        events += _block_events(index, start, deltas, signature=False)
    elif reply.plan.pieces:
        deltas = [{"type": "text_delta", "text": piece} for piece in reply.plan.pieces if piece]
        events += _block_events(index, {"type": "text", "text": ""}, deltas, signature=False)
    final = {"input_tokens": prompt_tokens, "output_tokens": reply.output_tokens}
    delta = {"type": "message_delta", "delta": {"stop_reason": reply.stop_reason}, "usage": final}
    events.append((sse(delta), False))
    events.append((sse({"type": "message_stop"}), False))
    return events


async def _stream(
    request: web.Request,
    flavor: Flavor,
    reply: Reply,
    message_id: str,
    model: str,
    prompt_tokens: int,
) -> web.StreamResponse:
    switches = request.app[STATE].switches
    events = stream_events(reply, message_id, model, prompt_tokens)

    async def produce(stream: ChunkStream) -> None:
        if flavor.headers_early:
            await stream.prepare()
        tokens_sent = 0
        for number, (data, token) in enumerate(events):
            if number == 0:
                await sleep_ms(switches.first_token_delay_ms)
            elif token and tokens_sent:
                await sleep_ms(switches.token_delay_ms)
            tokens_sent += token
            await stream.send(data)

    return await stream_with_drops(produce, ChunkStream(request, "text/event-stream"))
