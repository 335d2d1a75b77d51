"""Anthropic's Messages wire format to and from OpenAI's Chat Completions, for engines without it.

vLLM, Ollama and llama.cpp serve `/v1/messages` themselves; for the others (TGI, OpenAI-only
servers) the gateway sends Claude Code's and the `anthropic` SDKs' requests through here. Requests:
system prompt, text/image/tool_use/tool_result/thinking blocks, tools and tool choice, sampling,
stop sequences, thinking switch, structured output. Answers: whole or streamed (Anthropic's
`message_start` ... `message_stop` events, tool arguments streamed as `input_json_delta`), errors
and the model list. Pure functions and one small stream decoder; no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from relais_gateway.dialects.translate_ollama import reasoning
from relais_gateway.errors import InvalidRequest, UpstreamError
from relais_gateway.forward.relay import ChunkReader, token_count

Json = dict[str, Any]

# Claude Code puts a per-request attribution hash in a system block starting with this; it means
# nothing to the model and, forwarded, changes the prompt's first tokens on every request, which
# defeats the engine's prefix cache (vLLM's own Anthropic server drops it for the same reason).
BILLING_HEADER = "x-anthropic-billing-header"
# Claude Code 2.1.154+ sends these roles for user-side context; vLLM reads them as `user`.
USER_ROLES = {"user", "ctx", "msg"}
# vLLM reads an assistant message's earlier reasoning from `reasoning` (interleaved thinking,
# `chat_utils._parse_chat_message_content`); engines that do not know the field ignore it.
REASONING_FIELD = "reasoning"
STOP_REASONS = {"stop": "end_turn", "eos_token": "end_turn", "length": "max_tokens"}
EPOCH = "1970-01-01T00:00:00Z"  # Anthropic's `created_at` when the release date is unknown


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- requests: Anthropic -> OpenAI


def _expect(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    """`value`, checked to be a `kind` (never a bool: JSON true is no number); a 400 naming
    `param` otherwise."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidRequest(f"{param}: must be {what}", param=param)
    return value


def _blocks(content: Any, param: str) -> list[Json]:
    """`content` as a list of typed blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    _expect(content, list, param, "a string or a list of content blocks")
    for index, block in enumerate(content):
        where = f"{param}.{index}"
        _expect(block, dict, where, "a content block object")
        _expect(block.get("type"), str, f"{where}.type", "a string")
    blocks: list[Json] = content
    return blocks


def _text(block: Json, param: str) -> str:
    return str(_expect(block.get("text"), str, f"{param}.text", "a string"))


def system_text(system: Any) -> str:
    """The `system` prompt (a string or text blocks; `cache_control` ignored) as one string."""
    if system is None:
        return ""
    texts = []
    for index, block in enumerate(_blocks(system, "system")):
        if block["type"] != "text":
            raise InvalidRequest("system blocks must be text blocks", param=f"system.{index}.type")
        text = _text(block, f"system.{index}")
        if not text.startswith(BILLING_HEADER):
            texts.append(text)
    return "\n".join(texts)


def image_part(block: Json, param: str) -> Json:
    """An Anthropic image block as an OpenAI `image_url` part (base64 becomes a data URL)."""
    source = _expect(block.get("source"), dict, f"{param}.source", "an object")
    kind = source.get("type")
    if kind == "base64":
        media = _expect(source.get("media_type"), str, f"{param}.source.media_type", "a string")
        data = _expect(source.get("data"), str, f"{param}.source.data", "a string")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        url = _expect(source.get("url"), str, f"{param}.source.url", "a string")
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(
        f"image source type {kind!r} is not supported here (use base64 or url)",
        param=f"{param}.source.type",
    )


def _user_part(block: Json, param: str) -> Json:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _text(block, param)}
    if kind == "image":
        return image_part(block, param)
    source = block.get("source")
    if kind == "document" and isinstance(source, dict) and source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data") or "")}
    raise InvalidRequest(
        f"content block type {kind!r} is not supported by this model's engine",
        param=f"{param}.type",
    )


def _user_content(parts: list[Json]) -> str | list[Json]:
    """Text-only content as one string (every OpenAI-compatible engine reads that), else parts."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def tool_result(block: Json, param: str) -> tuple[Json, list[Json]]:
    """A `tool_result` block as an OpenAI `tool` message, and the images it returned (OpenAI tool
    messages hold text only, so they follow in the next user message)."""
    call_id = _expect(block.get("tool_use_id"), str, f"{param}.tool_use_id", "a string")
    content = block.get("content")
    texts: list[str] = []
    images: list[Json] = []
    if content is not None:
        for index, part in enumerate(_blocks(content, f"{param}.content")):
            if part["type"] == "tool_reference":
                continue  # tool search's deferred tools: every tool is already in `tools` here
            converted = _user_part(part, f"{param}.content.{index}")
            if converted["type"] == "text":
                texts.append(converted["text"])
            else:
                images.append(converted)
    text = "\n".join(texts)
    if block.get("is_error") is True:  # OpenAI has no error flag: tell the model in words
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def user_messages(content: Any, param: str) -> list[Json]:
    """A user turn: its tool results as `tool` messages first (OpenAI wants them right after the
    assistant's calls), then one user message with the rest, in order."""
    tools: list[Json] = []
    parts: list[Json] = []
    images: list[Json] = []
    for index, block in enumerate(_blocks(content, param)):
        if block["type"] == "tool_result":
            message, returned = tool_result(block, f"{param}.{index}")
            tools.append(message)
            images += returned
        else:
            parts.append(_user_part(block, f"{param}.{index}"))
    parts = images + parts
    if not parts and tools:
        return tools
    return [*tools, {"role": "user", "content": _user_content(parts)}]


def tool_call(block: Json, param: str) -> Json:
    """A `tool_use` block as an OpenAI tool call (arguments JSON-encoded)."""
    call_id = _expect(block.get("id"), str, f"{param}.id", "a string")
    name = _expect(block.get("name"), str, f"{param}.name", "a string")
    arguments = _expect(block.get("input", {}), dict, f"{param}.input", "an object")
    encoded = orjson.dumps(arguments).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}}


def assistant_message(content: Any, param: str) -> Json:
    """An assistant turn: text, tool calls, and earlier thinking (redacted thinking is opaque to
    any engine but Anthropic's, and is dropped)."""
    texts: list[str] = []
    calls: list[Json] = []
    thinking: list[str] = []
    for index, block in enumerate(_blocks(content, param)):
        where, kind = f"{param}.{index}", block["type"]
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            calls.append(tool_call(block, where))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
        elif kind != "redacted_thinking":
            raise InvalidRequest(
                f"content block type {kind!r} is not allowed in an assistant message",
                param=f"{where}.type",
            )
    message: Json = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    if any(thinking):
        message[REASONING_FIELD] = "".join(thinking)
    return message


def chat_messages(items: Any, system: Any) -> list[Json]:
    """Anthropic `system` and `messages` as OpenAI chat messages."""
    _expect(items, list, "messages", "a list of messages")
    prompt = [system_text(system)]
    out: list[Json] = []
    for index, item in enumerate(items):
        param = f"messages.{index}"
        _expect(item, dict, param, "a message object")
        role, content = item.get("role"), item.get("content")
        if role in USER_ROLES:
            out += user_messages(content, f"{param}.content")
        elif role == "assistant":
            out.append(assistant_message(content, f"{param}.content"))
        elif role == "system":  # not Anthropic's API, but sent by some clients; vLLM reads it
            prompt.append(system_text(content))
        else:
            raise InvalidRequest('role must be "user" or "assistant"', param=f"{param}.role")
    text = "\n".join(p for p in prompt if p)
    return [{"role": "system", "content": text}, *out] if text else out


def tools(items: Any) -> list[Json]:
    """Anthropic custom tools as OpenAI function tools. Anthropic's server tools (web search,
    code execution, ...) run on Anthropic's side and have no equivalent here."""
    _expect(items, list, "tools", "a list of tools")
    out = []
    for index, tool in enumerate(items):
        param = f"tools.{index}"
        _expect(tool, dict, param, "a tool object")
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(
                f"server tool {tool.get('type')!r} is not supported by this model's engine",
                param=f"{param}.type",
            )
        function: Json = {"name": _expect(tool.get("name"), str, f"{param}.name", "a string")}
        if tool.get("description") is not None:
            function["description"] = str(tool["description"])
        schema = tool.get("input_schema", {"type": "object"})
        function["parameters"] = _expect(schema, dict, f"{param}.input_schema", "an object")
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def tool_choice(choice: Any) -> Json:
    """Anthropic `tool_choice` as OpenAI `tool_choice` (and `parallel_tool_calls`)."""
    _expect(choice, dict, "tool_choice", "an object")
    kind = choice.get("type")
    out: Json = {}
    if kind in ("auto", "none"):
        out["tool_choice"] = kind
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        name = _expect(choice.get("name"), str, "tool_choice.name", "a string")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidRequest(
            'tool_choice.type must be "auto", "any", "tool" or "none"', param="tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def sampling(body: Json) -> Json:
    """Stop sequences, sampling and the end user, under their OpenAI names (`top_k` is an extra
    field vLLM, TGI and llama.cpp read)."""
    out: Json = {}
    if (stop := body.get("stop_sequences")) is not None:
        _expect(stop, list, "stop_sequences", "a list of strings")
        for index, item in enumerate(stop):
            _expect(item, str, f"stop_sequences.{index}", "a string")
        if stop:
            out["stop"] = stop
    for name in ("temperature", "top_p", "top_k"):
        if (value := body.get(name)) is not None:
            out[name] = _expect(value, (int, float), name, "a number")
    if (metadata := body.get("metadata")) is not None:
        _expect(metadata, dict, "metadata", "an object")
        if (user := metadata.get("user_id")) is not None:
            out["user"] = _expect(user, str, "metadata.user_id", "a string")
    return out


def thinking(value: Any) -> Json:
    """Anthropic `thinking` as the switch Qwen3-style chat templates read (vLLM, llama.cpp);
    `adaptive` leaves the model's default. The token budget has no OpenAI equivalent."""
    if value is None:
        return {}
    _expect(value, dict, "thinking", "an object")
    kind = value.get("type")
    if kind in ("enabled", "disabled"):
        return {"chat_template_kwargs": {"enable_thinking": kind == "enabled"}}
    if kind == "adaptive":
        return {}
    raise InvalidRequest('thinking.type must be "enabled" or "disabled"', param="thinking.type")


def output_config(value: Any) -> Json:
    """Anthropic `output_config`: a JSON-schema `format` (structured output) and an `effort`."""
    if value is None:
        return {}
    _expect(value, dict, "output_config", "an object")
    out: Json = {}
    fmt = value.get("format")
    if fmt is not None:
        _expect(fmt, dict, "output_config.format", "an object")
        schema = _expect(fmt.get("schema"), dict, "output_config.format.schema", "an object")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
    if isinstance(value.get("effort"), str):
        out["reasoning_effort"] = value["effort"]
    return out


def messages_request(body: Json) -> Json:
    """An Anthropic `POST /v1/messages` body as an OpenAI `/v1/chat/completions` body.

    The gateway writes the fields it owns last (`model`, then the caps on `stream` and
    `max_tokens`); `stream` and `max_tokens` are copied here for it to read. Anthropic fields with
    no meaning to an OpenAI engine (`service_tier`, `container`, `mcp_servers`, ...) are dropped.
    """
    out: Json = {"messages": chat_messages(body.get("messages"), body.get("system"))}
    if body.get("tools"):
        out["tools"] = tools(body["tools"])
        if body.get("tool_choice") is not None:
            out.update(tool_choice(body["tool_choice"]))
    out.update(sampling(body))
    out.update(thinking(body.get("thinking")))
    out.update(output_config(body.get("output_config")))
    if "max_tokens" in body:
        out["max_tokens"] = body["max_tokens"]
    if "stream" in body:
        out["stream"] = body["stream"]
        if body["stream"] is True:
            out["stream_options"] = {"include_usage": True}
    return out


# ---------------------------------------------------------------- answers: OpenAI -> Anthropic


def stop_reason(finish: Any, matched: Any, tool_calls: bool) -> tuple[str, str | None]:
    """(Anthropic `stop_reason`, `stop_sequence`) from an OpenAI finish reason.

    `matched` is vLLM's `stop_reason`: the stop string that ended generation (a token id or None
    otherwise). TGI finishes tool calls with "stop", so calls decide `tool_use` by themselves.
    """
    if finish == "length":
        return "max_tokens", None
    if tool_calls or finish == "tool_calls":
        return "tool_use", None
    if isinstance(matched, str) and matched:
        return "stop_sequence", matched
    if finish == "stop_sequence":  # TGI's own finish reason
        return "stop_sequence", None
    return STOP_REASONS.get(str(finish), "end_turn"), None


def tool_input(arguments: Any) -> Json:
    """A tool call's arguments (a JSON string, or already an object) as Anthropic `input`."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise UpstreamError(
            f"the engine's tool call has invalid JSON arguments: {str(arguments)[:200]}"
        ) from None
    if not isinstance(value, dict):
        raise UpstreamError(f"the engine's tool call arguments are not an object: {arguments!r}")
    return value


def tool_use(call: Json) -> Json:
    """An OpenAI tool call as an Anthropic `tool_use` block (the engine's id kept: Mistral and Kimi
    templates need their own id shapes back)."""
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": str(call.get("id") or tool_use_id()),
        "name": str(function.get("name") or ""),
        "input": tool_input(function.get("arguments")),
    }


def content_text(content: Any) -> str:
    """A message's text, whether a string or a list of text parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return str(content or "")


def messages_answer(data: Json, model: str) -> Json:
    """A whole OpenAI chat completion as an Anthropic message.

    Thinking blocks carry an empty `signature`: the SDKs require the field, and only Anthropic can
    sign; an engine ignores it when the block comes back in history.
    """
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[Json] = []
    if thought := reasoning(message):
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    if text := content_text(message.get("content")):
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    content += [tool_use(call) for call in calls]
    reason, sequence = stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), bool(calls)
    )
    usage: Json = data["usage"] if isinstance(data.get("usage"), dict) else {}
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": token_count(usage.get("prompt_tokens")),
            "output_tokens": token_count(usage.get("completion_tokens")),
        },
    }


def event(kind: str, data: Json) -> bytes:
    """One Anthropic SSE event: the SDKs dispatch on the `event:` line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessagesStreamTranslator(ChunkReader):
    """OpenAI SSE lines in, Anthropic SSE events out, for one streamed answer.

    Events: `message_start`, one `ping`, then per content block (thinking, text, each tool call;
    a new block whenever the kind changes) `content_block_start`, its deltas and
    `content_block_stop`, and at the engine's `[DONE]`, `message_delta` (stop reason, counts) and
    `message_stop`. Tool arguments pass on as `input_json_delta` fragments as the engine streams
    them.
    """

    def __init__(self, model: str, message_id: str | None = None) -> None:
        super().__init__(rename=None)  # the events are written here, with the served name
        self.model = model
        self.id = message_id or new_message_id()
        self._started = False
        self._index = -1  # of the open block; -1 before the first
        self._kind: str | None = None  # "thinking", "text", "tool_use"; None when none is open
        self._call: tuple[int, str] | None = None  # (OpenAI index, id) of the open tool call
        self._finish: Any = None
        self._matched: Any = None
        self._calls = False
        self._usage: Json = {}

    def _chunk(self, data: Json) -> Iterator[bytes]:
        if not self._started:
            yield from self._start()
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        for choice in data.get("choices") or ():
            if choice.get("index", 0) == 0:
                yield from self._choice(choice)

    def _done(self) -> Iterator[bytes]:
        if not self._started:
            yield from self._start()
        yield from self._end()

    def _start(self) -> Iterator[bytes]:
        self._started = True
        message: Json = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        yield event("message_start", {"message": message})
        yield event("ping", {})

    def _choice(self, choice: Json) -> Iterator[bytes]:
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._matched = choice.get("stop_reason")
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        if thought := reasoning(delta):
            yield from self._open("thinking", {"thinking": "", "signature": ""})
            yield self._delta({"type": "thinking_delta", "thinking": thought})
        if text := content_text(delta.get("content")):
            yield from self._open("text", {"text": ""})
            yield self._delta({"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or ():
            yield from self._tool_call(call)

    def _tool_call(self, call: Json) -> Iterator[bytes]:
        """One streamed tool-call fragment. A new call is a new OpenAI `index`, or a new `id` with
        a name (TGI repeats the same id on every fragment of one call)."""
        index: int = call["index"] if isinstance(call.get("index"), int) else 0
        function = call.get("function") or {}
        name, call_id = function.get("name"), call.get("id")
        if self._new_call(index, call_id, name):
            call_id = str(call_id or tool_use_id())
            self._calls = True
            yield from self._close()
            yield from self._open(
                "tool_use", {"id": call_id, "name": str(name or ""), "input": {}}, force=True
            )
            self._call = (index, call_id)
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # Ollama sends each call whole, arguments as an object
            arguments = orjson.dumps(arguments).decode()
        if arguments:
            yield self._delta({"type": "input_json_delta", "partial_json": str(arguments)})

    def _new_call(self, index: int, call_id: Any, name: Any) -> bool:
        if self._kind != "tool_use" or self._call is None or self._call[0] != index:
            return True
        return bool(call_id and name and call_id != self._call[1])

    def _open(self, kind: str, block: Json, *, force: bool = False) -> Iterator[bytes]:
        if self._kind == kind and not force:
            return
        yield from self._close()
        self._index += 1
        self._kind = kind
        start = {"index": self._index, "content_block": {"type": kind, **block}}
        yield event("content_block_start", start)

    def _close(self) -> Iterator[bytes]:
        if self._kind is not None:
            yield event("content_block_stop", {"index": self._index})
            self._kind, self._call = None, None

    def _delta(self, delta: Json) -> bytes:
        return event("content_block_delta", {"index": self._index, "delta": delta})

    def _end(self) -> Iterator[bytes]:
        self.ended = True
        yield from self._close()
        self.prompt_tokens = token_count(self._usage.get("prompt_tokens"))
        self.completion_tokens = token_count(self._usage.get("completion_tokens")) or self.lines
        reason, sequence = stop_reason(self._finish, self._matched, self._calls)
        usage = {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens}
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        yield event("message_delta", {"delta": delta, "usage": usage})
        yield event("message_stop", {})

    @staticmethod
    def error(message: str) -> bytes:
        """Anthropic's in-band error event: the SDKs raise on it."""
        return event("error", {"error": {"type": "api_error", "message": message}})


# ---------------------------------------------------------------- errors and models


def models_list(ids: list[str]) -> Json:
    """`GET /v1/models` in Anthropic's shape: one page with every served model (release dates are
    unknown, so the epoch, as Anthropic documents)."""
    data = [
        {
            "type": "model",
            "id": name,
            "display_name": name,
            "created_at": EPOCH,
            "lifecycle": "active",  # read by anthropic>=2.x's ModelInfo
        }
        for name in ids
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
    }
