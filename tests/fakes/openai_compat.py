"""OpenAI-compatible routes shared by the fakes: vLLM's server, Ollama's `/v1/*`, TGI's Messages.

The engines differ in small, observable ways, captured by `Flavor`: Ollama writes `data: ` and
sends headers with the first chunk; TGI (axum) writes `data:` and sends headers at once; vLLM
sends a role-only first delta, the finish reason with the last token, and fields of its own
(added by its `polish_*` hooks, from recorded transcripts); their error bodies, tool-call shapes
(`_tool_call_json`, `TOOL_STREAMS`), image rules and the `model` they report differ. Who
calls a tool, and with what, is `core.tool_plan`'s policy.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from aiohttp import web

from tests.fakes.core import (
    REASONING_TEXT,
    STATE,
    BadRequest,
    ChunkStream,
    ErrorRenderer,
    Json,
    Plan,
    Switches,
    ToolCall,
    alternatives,
    begin,
    count_tokens,
    decode_image,
    embed,
    guard,
    image_preface,
    json_pieces,
    make_plan,
    normalize,
    sleep_ms,
    stream_with_drops,
    token_logprob,
    tool_plan,
    tool_result_preface,
    word_pieces,
)

ToolStyle: TypeAlias = Literal["openai", "ollama", "tgi"]


def library_card(name: str) -> dict[str, Json]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "library"}


def data_url_image(url: str, status: int | None = None) -> bytes:
    """The bytes of a `data:image/...;base64,` URL; the fakes have no network for http URLs."""
    if url.startswith(("http://", "https://")):
        raise BadRequest("the fake engine has no network: send images as data: URLs", status)
    match = re.fullmatch(r"data:(image/[\w.+-]+);base64,(.*)", url, re.DOTALL)
    if match is None:
        raise BadRequest("invalid image URL: expected data:image/<type>;base64,<data>", status)
    return decode_image(match.group(2), status)


@dataclass(frozen=True)
class Flavor:
    """How one engine speaks the OpenAI dialect (the defaults are Ollama's)."""

    sse_prefix: bytes
    render_error: ErrorRenderer
    fingerprint: str | None
    headers_early: bool
    invalid_status: int  # status of a request the engine rejects (Ollama 400, TGI 422)
    resolve_model: Callable[[web.Request, str], str]  # requested name ("" if none) -> answer's
    list_models: Callable[[web.Request], list[str]]
    model_card: Callable[[str], dict[str, Json]] = library_card
    model_required: bool = True
    tool_style: ToolStyle = "ollama"
    tool_args_string: bool = True  # assistant tool_calls must carry arguments as a JSON string
    image_bytes: Callable[[str], bytes] = data_url_image
    vllm_extras: bool = False  # n > 1, batched prompts, structured_outputs / guided_json
    role_every_delta: bool = True  # False: one role-only first delta, then bare deltas (vLLM)
    finish_on_last_token: bool = False  # a length-cut stream ends on its last token's chunk (vLLM)
    reasoning_fields: tuple[str, ...] = ()  # message fields carrying reasoning (`reasoning`)
    reasoning_null: bool = False  # the fields are null without reasoning (vLLM), else absent
    effort_sets_reasoning: bool = False  # `reasoning_effort` turns thinking on/off (Ollama)
    logprob_bytes: bool = True
    max_logprobs: int = 20
    embeddings: bool = False
    clamp_dimensions: bool = False  # Ollama cuts to `dimensions` when shorter, never fails
    validate: Callable[[dict[str, Json], int], None] | None = None  # body, prompt tokens
    # The engine's own fields: (kind "chat" | "completion", answer) -> the answer it sends, and
    # (kind, the stream's chunks in order) -> the chunks it sends (the same number of them).
    polish_answer: Callable[[str, dict[str, Json]], dict[str, Json]] | None = None
    polish_chunks: Callable[[str, list[dict[str, Json]]], list[dict[str, Json]]] | None = None
    # `/v1/models` cards when the engine builds them itself (vLLM: LoRA adapters beside the base)
    model_cards: Callable[[web.Request], list[dict[str, Json]]] | None = None
    # Awaited once a generation request is accepted, before its first token (vLLM: bringing a
    # LoRA adapter into a GPU slot); gets the served name the request resolved to.
    before_generation: Callable[[web.Request, str], Awaitable[None]] | None = None


def add_openai_routes(app: web.Application, flavor: Flavor) -> None:
    """Register `/v1/chat/completions`, `/v1/completions`, `/v1/models` (and `/v1/embeddings`)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _chat(request, flavor)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _completions(request, flavor)

    async def embeddings(request: web.Request) -> web.StreamResponse:
        return await _embeddings(request, flavor)

    async def models(request: web.Request) -> web.Response:
        if flavor.model_cards is not None:
            return web.json_response({"object": "list", "data": flavor.model_cards(request)})
        data = [flavor.model_card(name) for name in flavor.list_models(request)]
        return web.json_response({"object": "list", "data": data})

    checked = guard(flavor.render_error, flavor.invalid_status)
    app.router.add_post("/v1/chat/completions", checked(chat))
    app.router.add_post("/v1/completions", checked(completions))
    if flavor.embeddings:
        app.router.add_post("/v1/embeddings", checked(embeddings))
    app.router.add_get("/v1/models", models)


# ---------------------------------------------------------------- request parsing


def message_text(message: Json) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    if not isinstance(message, dict) or "role" not in message:
        raise BadRequest("each message needs a role and content")
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


@dataclass(frozen=True)
class Conversation:
    """What the fake needs from `messages`: the prompt text, the images, a trailing tool result."""

    prompt: str
    images: int
    tool_result: str | None

    @property
    def preface(self) -> str:
        parts = [image_preface(self.images)]
        if self.tool_result is not None:
            parts.append(tool_result_preface(self.tool_result))
        return " ".join(p for p in parts if p)


def read_messages(messages: list[Json], flavor: Flavor) -> Conversation:
    """Check the messages as the engine does and count their images."""
    images = 0
    for message in messages:
        message_text(message)  # role check
        images += _count_images(message.get("content"), flavor)
        _check_tool_calls(message.get("tool_calls"), flavor)
    last = messages[-1]
    tool_result = message_text(last) if last.get("role") == "tool" else None
    prompt = " ".join(message_text(m) for m in messages)
    return Conversation(prompt, images, tool_result)


def _count_images(content: Json, flavor: Flavor) -> int:
    if not isinstance(content, list):
        return 0
    count = 0
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "image_url":
            continue
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise BadRequest("image_url parts need an image_url.url string")
        flavor.image_bytes(url)
        count += 1
    return count


def _check_tool_calls(calls: Json, flavor: Flavor) -> None:
    """Assistant `tool_calls` (replayed history) must name a function with JSON arguments."""
    if calls is None:
        return
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("each tool call needs a function with a name")
        arguments = function.get("arguments")
        if arguments == "" and not flavor.tool_args_string:
            continue  # vLLM reads empty arguments as {}
        if isinstance(arguments, str):
            try:
                json.loads(arguments)
            except ValueError as exc:
                raise BadRequest(f"tool call arguments are not valid JSON: {exc}") from exc
        elif flavor.tool_args_string:
            raise BadRequest("tool call arguments must be a JSON string")


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
    """`response_format` as a structured-output spec: None, "json", or a JSON schema.

    Accepts OpenAI's forms (`json_object`, `json_schema` with `json_schema.schema`) and TGI's
    (`{"type": "json", "value": schema}`, `{"type": "json_schema", "value": {"schema": ...}}`).
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("response_format must be an object")
    kind = value.get("type")
    if kind in (None, "text", "regex"):
        return None
    if kind == "json_schema":
        inner = value.get("json_schema", value.get("value"))
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


def _structured(body: dict[str, Json], flavor: Flavor) -> Json:
    spec = response_format_spec(body.get("response_format"))
    if spec is not None or not flavor.vllm_extras:
        return spec
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict) and outputs.get("json") is not None:
        return parse_schema(outputs["json"])
    if body.get("guided_json") is not None:
        return parse_schema(body["guided_json"])
    return None


def _choices(body: dict[str, Json], flavor: Flavor) -> int:
    if not flavor.vllm_extras:
        return 1
    return optional_int(body, "n") or 1


def _model(request: web.Request, body: dict[str, Json], flavor: Flavor) -> str:
    model = body.get("model")
    if model is None and not flavor.model_required:
        return flavor.resolve_model(request, "")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    return flavor.resolve_model(request, model)


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """One choice: generated text, or a tool call; reasoning pieces come first."""

    plan: Plan
    tool: ToolCall | None
    tool_id: str
    reasoning: list[str]

    @property
    def arguments(self) -> str:
        return json.dumps(self.tool.arguments) if self.tool else ""

    @property
    def completion_tokens(self) -> int:
        produced = len(json_pieces(self.arguments)) if self.tool else len(self.plan.pieces)
        return produced + len(self.reasoning)


def _tool_id(style: ToolStyle) -> str:
    if style == "tgi":
        return "0"
    if style == "ollama":
        return "call_" + uuid.uuid4().hex[:8]
    return "chatcmpl-tool-" + uuid.uuid4().hex


def _plan(
    switches: Switches,
    body: dict[str, Json],
    prompt: str,
    flavor: Flavor,
    *,
    preface: str = "",
    offset: int = 0,
) -> Plan:
    """The generation plan of choice `offset` (choices differ by seed)."""
    seed = body.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return make_plan(
        switches,
        prompt=prompt,
        max_tokens=optional_int(body, "max_completion_tokens", "max_tokens"),
        stop=stop_list(body.get("stop")),
        seed=(seed or 0) + offset if offset else seed,
        structured=_structured(body, flavor),
        preface=preface,
    )


def _answers(request: web.Request, body: dict[str, Json], flavor: Flavor) -> list[Answer]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    convo = read_messages(messages, flavor)
    if flavor.validate is not None:
        flavor.validate(body, count_tokens(convo.prompt))
    switches: Switches = request.app[STATE].switches
    tool = tool_plan(
        switches, body.get("tools"), body.get("tool_choice"), convo.tool_result is not None
    )
    reasoning: list[str] = []
    if flavor.reasoning_fields and _wants_reasoning(body, switches, flavor):
        reasoning = word_pieces(REASONING_TEXT, count_tokens(REASONING_TEXT), 0)
    return [
        Answer(
            _plan(switches, body, convo.prompt, flavor, preface=convo.preface, offset=i),
            tool,
            _tool_id(flavor.tool_style),
            reasoning,
        )
        for i in range(_choices(body, flavor))
    ]


EFFORTS = ("minimal", "low", "medium", "high", "max", "xhigh", "ultra")


def _wants_reasoning(body: dict[str, Json], switches: Switches, flavor: Flavor) -> bool:
    """The `reasoning` switch (a reasoning model), unless the request says otherwise."""
    if body.get("include_reasoning") is False:
        return False
    if not flavor.effort_sets_reasoning:
        return switches.reasoning
    nested = body.get("reasoning")
    effort = nested.get("effort") if isinstance(nested, dict) else body.get("reasoning_effort")
    if effort in (None, ""):
        return switches.reasoning
    if effort == "none":
        return False
    if effort not in EFFORTS:
        raise BadRequest(f"invalid reasoning value: {json.dumps(effort)}")
    return True


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _answers_usage(answers: list[Answer]) -> dict[str, int]:
    return _usage(answers[0].plan.prompt_tokens, sum(a.completion_tokens for a in answers))


def _chat_logprobs(body: dict[str, Json], flavor: Flavor) -> int | None:
    """The number of alternatives asked for (`top_logprobs`), or None without `logprobs`."""
    top = optional_int(body, "top_logprobs", minimum=0)
    if top is not None and top > flavor.max_logprobs:
        raise BadRequest(f"top_logprobs must be <= {flavor.max_logprobs}")
    if not body.get("logprobs"):
        if top:
            raise BadRequest("when using `top_logprobs`, `logprobs` must be set to true")
        return None
    return top or 0


def _logprob_entry(piece: str, index: int, top: int, flavor: Flavor) -> dict[str, Json]:
    def one(token: str, logprob: float) -> dict[str, Json]:
        entry: dict[str, Json] = {"token": token, "logprob": logprob}
        if flavor.logprob_bytes:
            entry["bytes"] = list(token.encode())
        return entry

    best = one(piece, token_logprob(index))
    return {**best, "top_logprobs": [one(t, lp) for t, lp in alternatives(piece, index, top)]}


def _tool_call_json(answer: Answer, style: ToolStyle) -> dict[str, Json]:
    assert answer.tool is not None
    function: dict[str, Json] = {"name": answer.tool.name, "arguments": answer.arguments}
    if style == "tgi":
        function = {"description": None, **function}
    entry: dict[str, Json] = {"id": answer.tool_id, "type": "function", "function": function}
    return {"index": 0, **entry} if style == "ollama" else entry


def _message(answer: Answer, flavor: Flavor) -> dict[str, Json]:
    message: dict[str, Json] = {"role": "assistant", "content": answer.plan.text}
    if answer.tool is not None:
        message["tool_calls"] = [_tool_call_json(answer, flavor.tool_style)]
        if flavor.tool_style == "tgi":
            del message["content"]  # TGI's ToolCallMessage has no content
        else:
            message["content"] = None if flavor.tool_style == "openai" else ""
    if answer.reasoning or flavor.reasoning_null:
        message |= dict.fromkeys(flavor.reasoning_fields, "".join(answer.reasoning) or None)
    return message


def _finish(answer: Answer, flavor: Flavor) -> str:
    if answer.tool is None:
        return answer.plan.finish
    return "stop" if flavor.tool_style == "tgi" else "tool_calls"


def _choice(answer: Answer, index: int, flavor: Flavor, top: int | None) -> dict[str, Json]:
    logprobs = None
    if top is not None and answer.tool is None:
        pieces = answer.plan.pieces
        logprobs = {"content": [_logprob_entry(p, i, top, flavor) for i, p in enumerate(pieces)]}
    choice = {
        "index": index,
        "message": _message(answer, flavor),
        "logprobs": logprobs,
        "finish_reason": _finish(answer, flavor),
    }
    if flavor.vllm_extras:  # vLLM names the stop string that ended generation
        choice["stop_reason"] = answer.plan.stop_seq
    return choice


# ---------------------------------------------------------------- chat completions


async def _chat(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    model = _model(request, body, flavor)
    answers = _answers(request, body, flavor)
    top = _chat_logprobs(body, flavor)
    if flavor.before_generation is not None:
        await flavor.before_generation(request, model)
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": flavor.fingerprint,
    }
    if body.get("stream"):
        return await _stream_chat(request, flavor, body, answers, base, top)
    await sleep_ms(request.app[STATE].switches.delay_ms)
    choices = [_choice(answer, i, flavor, top) for i, answer in enumerate(answers)]
    usage = _answers_usage(answers)
    answer = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
    if flavor.polish_answer is not None:
        answer = flavor.polish_answer("chat", answer)
    return web.json_response(answer)


def _include_usage(body: dict[str, Json]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


@dataclass(frozen=True)
class Event:
    """One streamed choice update; `token` events are paced by `token_delay_ms`."""

    index: int
    payload: dict[str, Json]  # the choice object without its index
    token: bool


def _delta_events(answer: Answer, index: int, flavor: Flavor, top: int | None) -> list[Event]:
    """One choice's stream: (vLLM's role delta,) reasoning, then text or a tool call, finish."""
    role: dict[str, Json] = {"role": "assistant"} if flavor.role_every_delta else {}

    def event(delta: dict[str, Json], *, finish: str | None = None, lp: Json = None) -> Event:
        payload = {"delta": delta, "logprobs": lp, "finish_reason": finish}
        return Event(index, payload, finish is None)

    events: list[Event] = []
    if not flavor.role_every_delta:  # one role-only delta, sent with the first token
        opening = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
        events.append(Event(index, {**opening, "finish_reason": None}, False))
    blank: dict[str, Json] = {**role, "content": ""} if flavor.role_every_delta else {}
    for piece in answer.reasoning:
        events.append(event({**blank, **dict.fromkeys(flavor.reasoning_fields, piece)}))
    if answer.tool is not None:
        return events + _tool_events(answer, index, flavor)
    for i, piece in enumerate(answer.plan.pieces):
        lp = None if top is None else {"content": [_logprob_entry(piece, i, top, flavor)]}
        events.append(event({**role, "content": piece}, lp=lp))
    if flavor.finish_on_last_token and answer.plan.finish == "length" and answer.plan.pieces:
        last = events.pop()  # the token that hit the limit carries the finish reason
        final = Event(index, {**last.payload, "finish_reason": answer.plan.finish}, True)
    else:
        final = event(blank, finish=answer.plan.finish)
    if flavor.vllm_extras:
        final.payload["stop_reason"] = answer.plan.stop_seq
    return [*events, final]


def _tool_events(answer: Answer, index: int, flavor: Flavor) -> list[Event]:
    """A tool call streamed the engine's way (see `TOOL_STREAMS`)."""

    def event(delta: dict[str, Json], finish: str | None = None) -> Event:
        payload = {"delta": delta, "logprobs": None, "finish_reason": finish}
        return Event(index, payload, finish is None)

    return TOOL_STREAMS[flavor.tool_style](answer, event)


EventMaker: TypeAlias = Callable[..., Event]


def _ollama_tool_stream(answer: Answer, event: EventMaker) -> list[Event]:
    """Ollama `/v1`: one delta with the whole call, then the finishing delta."""
    done: dict[str, Json] = {"role": "assistant", "content": ""}
    delta = {**done, "tool_calls": [_tool_call_json(answer, "ollama")]}
    return [event(delta), event(done, "tool_calls")]


def _tgi_tool_stream(answer: Answer, event: EventMaker) -> list[Event]:
    """TGI: the name with `{`, then the other fragments (name null), the last one finishing."""
    assert answer.tool is not None
    rest = json_pieces(answer.arguments[1:]) or [""]
    parts = [(answer.tool.name, answer.arguments[:1]), *[(None, fragment) for fragment in rest]]
    events = []
    for number, (name, arguments) in enumerate(parts):
        call = {"index": 0, "id": answer.tool_id, "type": "function"}
        call["function"] = {"name": name, "arguments": arguments}
        finish = "stop" if number == len(parts) - 1 else None
        events.append(event({"role": "assistant", "tool_calls": [call]}, finish))
    return events


def _openai_tool_stream(answer: Answer, event: EventMaker) -> list[Event]:
    """vLLM (as OpenAI): index/id/type/name with empty arguments, argument fragments, finish."""
    assert answer.tool is not None
    first = {"index": 0, "id": answer.tool_id, "type": "function"}
    first["function"] = {"name": answer.tool.name, "arguments": ""}
    events = [event({"tool_calls": [first]})]
    for fragment in json_pieces(answer.arguments):
        events.append(event({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
    return [*events, event({}, "tool_calls")]


TOOL_STREAMS: dict[ToolStyle, Callable[[Answer, EventMaker], list[Event]]] = {
    "ollama": _ollama_tool_stream,
    "tgi": _tgi_tool_stream,
    "openai": _openai_tool_stream,
}


def _interleave(per_choice: list[list[Event]]) -> list[Event]:
    """Round-robin over the choices, as an engine batching them emits their tokens."""
    merged: list[Event] = []
    for step in range(max(len(events) for events in per_choice)):
        merged += [events[step] for events in per_choice if step < len(events)]
    return merged


async def _send_events(
    request: web.Request,
    flavor: Flavor,
    body: dict[str, Json],
    events: list[Event],
    chunk_base: dict[str, Json],
    usage: dict[str, int],
) -> web.StreamResponse:
    """SSE: the events, the usage chunk when asked for, then `[DONE]`."""
    switches = request.app[STATE].switches
    kind = "chat" if chunk_base.get("object") == "chat.completion.chunk" else "completion"
    chunks = [{**chunk_base, "choices": [{"index": e.index, **e.payload}]} for e in events]
    if _include_usage(body):
        chunks.append({**chunk_base, "choices": [], "usage": usage})
    if flavor.polish_chunks is not None:
        chunks = flavor.polish_chunks(kind, chunks)

    def sse(payload: dict[str, Json]) -> bytes:
        return flavor.sse_prefix + json.dumps(payload).encode() + b"\n\n"

    async def produce(stream: ChunkStream) -> None:
        if flavor.headers_early:
            await stream.prepare()
        tokens_sent = 0
        for number, chunk in enumerate(chunks):
            token = number < len(events) and events[number].token
            if number == 0:
                await sleep_ms(switches.first_token_delay_ms)
            elif token and tokens_sent:
                await sleep_ms(switches.token_delay_ms)
            tokens_sent += token
            await stream.send(sse(chunk))
        await stream.send(flavor.sse_prefix + b"[DONE]\n\n")

    return await stream_with_drops(produce, ChunkStream(request, "text/event-stream"))


async def _stream_chat(
    request: web.Request,
    flavor: Flavor,
    body: dict[str, Json],
    answers: list[Answer],
    base: dict[str, Json],
    top: int | None,
) -> web.StreamResponse:
    per_choice = [_delta_events(a, i, flavor, top) for i, a in enumerate(answers)]
    chunk_base = {**base, "object": "chat.completion.chunk"}
    usage = _answers_usage(answers)
    return await _send_events(request, flavor, body, _interleave(per_choice), chunk_base, usage)


# ---------------------------------------------------------------- completions


def _prompts(value: Json, flavor: Flavor) -> list[str]:
    """One prompt per entry: a string, or (vLLM) a list of strings or of token-id lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value) and (len(value) == 1 or flavor.vllm_extras):
            return list(value)
        if flavor.vllm_extras and _is_ids(value):
            return [" ".join(map(str, value))]
        if flavor.vllm_extras and all(isinstance(v, list) and v and _is_ids(v) for v in value):
            return [" ".join(map(str, ids)) for ids in value]
    raise BadRequest("prompt must be a string")


def _is_ids(value: list[Json]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _completion_logprobs(body: dict[str, Json], flavor: Flavor) -> int | None:
    top = optional_int(body, "logprobs", minimum=0)
    if top is not None and top > flavor.max_logprobs:
        raise BadRequest(f"logprobs must be <= {flavor.max_logprobs}")
    return top


def _text_logprobs(pieces: list[str], top: int, start: int = 0, offset: int = 0) -> Json:
    """The legacy completions `logprobs` object for `pieces` (token `start` onwards)."""
    offsets, at = [], offset
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    indexes = range(start, start + len(pieces))
    return {
        "tokens": pieces,
        "token_logprobs": [token_logprob(i) for i in indexes],
        "top_logprobs": [
            dict(alternatives(p, i, max(1, top))) for p, i in zip(pieces, indexes, strict=True)
        ],
        "text_offset": offsets,
    }


async def _completions(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    model = _model(request, body, flavor)
    prompts = _prompts(body.get("prompt"), flavor)
    if flavor.validate is not None:
        flavor.validate(body, max(count_tokens(p) for p in prompts))
    switches = request.app[STATE].switches
    n = _choices(body, flavor)
    plans = [_plan(switches, body, p, flavor, offset=j) for p in prompts for j in range(n)]
    top = _completion_logprobs(body, flavor)
    if flavor.before_generation is not None:
        await flavor.before_generation(request, model)
    base = {
        "id": f"cmpl-{uuid.uuid4().hex[:12]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": flavor.fingerprint,
    }
    usage = _usage(sum(count_tokens(p) for p in prompts), sum(len(p.pieces) for p in plans))
    if body.get("stream"):
        per_choice = [_text_events(plan, i, top, flavor) for i, plan in enumerate(plans)]
        return await _send_events(request, flavor, body, _interleave(per_choice), base, usage)
    await sleep_ms(switches.delay_ms)
    choices = [
        {
            "index": i,
            "text": plan.text,
            "logprobs": None if top is None else _text_logprobs(plan.pieces, top),
            "finish_reason": plan.finish,
        }
        for i, plan in enumerate(plans)
    ]
    answer = {**base, "choices": choices, "usage": usage}
    if flavor.polish_answer is not None:
        answer = flavor.polish_answer("completion", answer)
    return web.json_response(answer)


def _text_events(plan: Plan, index: int, top: int | None, flavor: Flavor) -> list[Event]:
    events, offset = [], 0
    for i, piece in enumerate(plan.pieces):
        lp = None if top is None else _text_logprobs([piece], top, i, offset)
        events.append(Event(index, {"text": piece, "logprobs": lp, "finish_reason": None}, True))
        offset += len(piece)
    if flavor.finish_on_last_token and plan.finish == "length" and events:
        last = events.pop()  # the token that hit the limit carries the finish reason
        return [*events, Event(index, {**last.payload, "finish_reason": plan.finish}, True)]
    final = {"text": "", "logprobs": None, "finish_reason": plan.finish}
    return [*events, Event(index, final, False)]


# ---------------------------------------------------------------- embeddings


def _embedding_inputs(value: Json) -> list[str]:
    """Texts to embed: a string, a list of strings, a token-id list or a list of those."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if _is_ids(value):
            return [" ".join(map(str, value))]
        if all(isinstance(v, list) and v and _is_ids(v) for v in value):
            return [" ".join(map(str, ids)) for ids in value]
    raise BadRequest("input must be a non-empty string, list of strings or of token ids")


def _dimensions(body: dict[str, Json], dim: int, flavor: Flavor) -> int:
    wanted = optional_int(body, "dimensions")
    if wanted is None:
        return dim
    if wanted > dim and not flavor.clamp_dimensions:
        raise BadRequest(f"dimensions must be between 1 and {dim} (the model's size)")
    return min(wanted, dim)


def encode_vector(vector: list[float], encoding: Json) -> Json:
    """`encoding_format`: floats, or base64 of little-endian float32 (what the SDKs decode)."""
    if encoding in (None, "float"):
        return vector
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    raise BadRequest('encoding_format must be "float" or "base64"')


async def _embeddings(request: web.Request, flavor: Flavor) -> web.StreamResponse:
    body = await begin(request)
    model = _model(request, body, flavor)
    texts = _embedding_inputs(body.get("input"))
    dim = request.app[STATE].switches.embedding_dim
    size = _dimensions(body, dim, flavor)
    encoding = body.get("encoding_format")
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode_vector(normalize(embed(text, dim)[:size]), encoding),
        }
        for i, text in enumerate(texts)
    ]
    tokens = sum(count_tokens(t) for t in texts)
    await sleep_ms(request.app[STATE].switches.delay_ms)
    answer: dict[str, Json] = {"object": "list", "data": data, "model": model}
    answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    if flavor.vllm_extras:
        answer = {"id": f"embd-{uuid.uuid4().hex}", "created": int(time.time()), **answer}
        details = {"prompt_tokens_details": None, "completion_tokens_details": None}
        answer["usage"] = {**answer["usage"], "completion_tokens": 0, **details}
    return web.json_response(answer)
