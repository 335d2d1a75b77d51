"""The one translation: Ollama's wire format to and from OpenAI's, for engines without Ollama's API.

Only used when an Ollama client (the `ollama` library, LangChain's ChatOllama, Open WebUI) talks
to a model served by an OpenAI-only engine (vLLM, TGI, llama.cpp). Requests: `chat`, `generate`
and `embed`/`embeddings`, with messages, images (base64 -> data URLs), tools and tool calls,
`format`, `options` and `think`. Answers: whole or streamed, with tool calls (OpenAI streams their
arguments in fragments; Ollama sends each call whole) and thinking. Pure functions and one small
stream decoder; no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from relais_gateway.errors import InvalidRequest, UpstreamError
from relais_gateway.forward.relay import ChunkReader, token_count

Json = dict[str, Any]

# Ollama's documented request `options` that OpenAI-compatible engines (vLLM, TGI, llama.cpp)
# read too, under their name there. Every other option (the runtime ones: context size, GPU
# layers, threads; Ollama-only sampling) is dropped, and so is anything undocumented: an option
# never names a model, a stream or a limit on the engine's side.
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
IMAGE_TYPES = {
    "iVBOR": "image/png",
    "/9j/": "image/jpeg",
    "R0lGOD": "image/gif",
    "UklGR": "image/webp",
}


def now() -> str:
    """Ollama's `created_at`: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- requests: Ollama -> OpenAI


def image_url(data: str) -> Json:
    """An Ollama base64 image as an OpenAI `image_url` content part (a data URL)."""
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    mime = next((m for prefix, m in IMAGE_TYPES.items() if data.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _content(text: str, images: list[str] | None) -> str | list[Json]:
    if not images:
        return text
    parts: list[Json] = [{"type": "text", "text": text}] if text else []
    return parts + [image_url(image) for image in images]


def _tool_call(call: Json, call_id: str) -> Json:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {
        "id": call.get("id") or call_id,
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": arguments},
    }


def messages(items: list[Json]) -> list[Json]:
    """Ollama chat messages as OpenAI messages.

    Ollama links a tool result to its call by order (and `tool_name`); OpenAI by `tool_call_id`.
    Calls without an id get `call_<message>_<n>`, and each tool message takes the id of the
    pending call with its `tool_name`, else the next pending one.
    """
    out: list[Json] = []
    pending: list[tuple[str, str]] = []  # (id, function name) of calls not answered yet
    for index, item in enumerate(items):
        message = {k: v for k, v in item.items() if k not in ("images", "thinking", "tool_name")}
        message["content"] = _content(str(item.get("content") or ""), item.get("images"))
        calls = item.get("tool_calls")
        if item.get("role") == "assistant" and calls:
            message["tool_calls"] = [
                _tool_call(call, f"call_{index}_{n}") for n, call in enumerate(calls)
            ]
            pending = [(c["id"], c["function"]["name"]) for c in message["tool_calls"]]
            if not message["content"]:
                message["content"] = None
        elif item.get("role") == "tool" and "tool_call_id" not in message:
            name = item.get("tool_name")
            match = next(
                (p for p in pending if name and p[1] == name), pending[0] if pending else None
            )
            if match is not None:
                pending.remove(match)
            message["tool_call_id"] = match[0] if match else f"call_{index}"
        out.append(message)
    return out


def response_format(fmt: Any) -> Json | None:
    """Ollama `format` ("json" or a JSON schema) as OpenAI `response_format`."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    raise InvalidRequest('format must be "json" or a JSON schema object', param="format")


def sampling(options: Json | None) -> Json:
    """Ollama `options` as OpenAI request fields (`OPTION_NAMES`); the output-token limit
    (`num_predict`) is the gateway's to decide and comes separately."""
    return {
        OPTION_NAMES[key]: value
        for key, value in (options or {}).items()
        if key in OPTION_NAMES and value is not None
    }


def _think(value: Any) -> Json:
    if isinstance(value, bool):  # Qwen3-style templates (vLLM, llama.cpp) read this switch
        return {"chat_template_kwargs": {"enable_thinking": value}}
    if isinstance(value, str) and value:
        return {"reasoning_effort": value}  # gpt-oss style: "low" | "medium" | "high"
    return {}


def _common(body: Json, stream: bool, max_tokens: int | None) -> Json:
    """The fields chat and generate share; the fields the gateway owns are written last (the
    model is written by `owned.own_openai`)."""
    out = sampling(body.get("options"))
    if (fmt := response_format(body.get("format"))) is not None:
        out["response_format"] = fmt
    if body.get("tools"):
        out["tools"] = body["tools"]
    out.update(_think(body.get("think")))
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}
    return out


def chat_request(body: Json, stream: bool, max_tokens: int | None) -> Json:
    """An Ollama `/api/chat` body as an OpenAI `/v1/chat/completions` body."""
    return {"messages": messages(body.get("messages") or []), **_common(body, stream, max_tokens)}


def generate_request(body: Json, stream: bool, max_tokens: int | None) -> tuple[bool, Json]:
    """An Ollama `/api/generate` body as (is chat, OpenAI body).

    Ollama applies the model's template unless `raw` is set, so a plain generate is a chat turn
    (system + user); `raw` (and `suffix`, fill-in-the-middle) are plain completions.
    """
    out = _common(body, stream, max_tokens)
    prompt = str(body.get("prompt") or "")
    if body.get("raw") or body.get("suffix"):
        out.pop("tools", None)
        out["prompt"] = prompt
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
        return False, out
    turns: list[Json] = []
    if body.get("system"):
        turns.append({"role": "system", "content": str(body["system"])})
    turns.append({"role": "user", "content": _content(prompt, body.get("images"))})
    return True, {**out, "messages": turns}


def embed_request(body: Json, model: str, *, legacy: bool) -> Json:
    """`/api/embed` (`input`) or legacy `/api/embeddings` (`prompt`) as `/v1/embeddings`."""
    out: Json = {"model": model, "input": body.get("prompt" if legacy else "input", "")}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    out["encoding_format"] = "float"
    return out


# ---------------------------------------------------------------- answers: OpenAI -> Ollama


def done_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _counts(usage: Any, started: float) -> Json:
    usage = usage if isinstance(usage, dict) else {}
    total = int((time.perf_counter() - started) * 1e9)
    return {
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": token_count(usage.get("prompt_tokens")),
        "prompt_eval_duration": 0,
        "eval_count": token_count(usage.get("completion_tokens")),
        "eval_duration": total,
    }


def ollama_tool_calls(calls: list[Json]) -> list[Json]:
    """OpenAI tool calls (arguments as a JSON string) as Ollama's (arguments as an object)."""
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        arguments: Any = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                raise UpstreamError(
                    f"the engine's tool call has invalid JSON arguments: {arguments[:200]}"
                ) from None
        entry: Json = {
            "function": {"index": index, "name": function.get("name", ""), "arguments": arguments}
        }
        if call.get("id"):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def reasoning(part: Json) -> str:
    """vLLM's `reasoning_content` (or the newer `reasoning`) of a message or delta."""
    return str(part.get("reasoning_content") or part.get("reasoning") or "")


def _message(text: str, thinking: str = "", calls: list[Json] | None = None) -> Json:
    message: Json = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def _piece(chat: bool, text: str, thinking: str = "", calls: list[Json] | None = None) -> Json:
    if chat:
        return {"message": _message(text, thinking, calls)}
    return {"response": text, **({"thinking": thinking} if thinking else {})}


def whole_answer(data: Json, model: str, chat: bool, started: float) -> Json:
    """A whole OpenAI answer (chat completion or completion) as Ollama's `done` object for a
    `chat` (or else a `generate`)."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message")
    if isinstance(message, dict):
        calls = ollama_tool_calls(message.get("tool_calls") or [])
        piece = _piece(chat, str(message.get("content") or ""), reasoning(message), calls)
    else:
        piece = _piece(chat, str(choice.get("text") or ""))
    return {
        "model": model,
        "created_at": now(),
        **piece,
        "done": True,
        "done_reason": done_reason(choice.get("finish_reason")),
        **_counts(data.get("usage"), started),
    }


def answer_text(answer: Json, chat: bool) -> str:
    """The text of an Ollama answer (for the structured-output check)."""
    return (
        str((answer.get("message") or {}).get("content") or "")
        if chat
        else str(answer.get("response") or "")
    )


def embed_answer(data: Json, model: str, started: float, *, legacy: bool) -> Json:
    """A `/v1/embeddings` answer as `/api/embed`'s (or legacy `/api/embeddings`') answer."""
    rows = sorted(data.get("data") or [], key=lambda row: row.get("index", 0))
    vectors = [row.get("embedding") for row in rows]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    counts = _counts(data.get("usage"), started)
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": counts["total_duration"],
        "load_duration": 0,
        "prompt_eval_count": counts["prompt_eval_count"],
    }


class StreamTranslator(ChunkReader):
    """OpenAI SSE lines in, Ollama NDJSON lines out, for one streamed answer."""

    def __init__(self, model: str, chat: bool, started: float) -> None:
        super().__init__(rename=None)  # the lines are written here, with the served name
        self.model = model
        self.chat = chat
        self.started = started
        self._reason: str | None = None
        self._usage: Json | None = None
        self._calls: dict[int, Json] = {}
        head = orjson.dumps({"model": model})[:-1]
        self._head = head + b',"created_at":'

    def _done(self) -> Iterator[bytes]:
        return self._end()

    def _chunk(self, data: Json) -> Iterator[bytes]:
        self._usage = data.get("usage") or self._usage
        for choice in data.get("choices") or ():
            self._reason = choice.get("finish_reason") or self._reason
            if (out := self._delta(choice)) is not None:
                yield out

    def _delta(self, choice: Json) -> bytes | None:
        delta = choice.get("delta")
        if not isinstance(delta, dict):  # a completion chunk
            text = str(choice.get("text") or "")
            return self._line({**_piece(self.chat, text), "done": False}) if text else None
        for call in delta.get("tool_calls") or ():
            self._merge_call(call)
        text, thinking = str(delta.get("content") or ""), reasoning(delta)
        if not text and not thinking:
            return None
        return self._line({**_piece(self.chat, text, thinking), "done": False})

    def _merge_call(self, call: Json) -> None:
        entry = self._calls.setdefault(
            int(call.get("index") or 0), {"id": "", "function": {"name": "", "arguments": ""}}
        )
        entry["id"] = call.get("id") or entry["id"]
        function = call.get("function") or {}
        entry["function"]["name"] += function.get("name") or ""
        entry["function"]["arguments"] += function.get("arguments") or ""

    def _end(self) -> Iterator[bytes]:
        self.ended = True
        usage = self._usage if isinstance(self._usage, dict) else {}
        self.prompt_tokens = token_count(usage.get("prompt_tokens"))
        self.completion_tokens = token_count(usage.get("completion_tokens")) or self.lines
        if self._calls:
            calls = ollama_tool_calls([self._calls[i] for i in sorted(self._calls)])
            yield self._line({**_piece(True, "", "", calls), "done": False})
        final = {
            **_piece(self.chat, ""),
            "done": True,
            "done_reason": done_reason(self._reason),
            **_counts({**usage, "completion_tokens": self.completion_tokens}, self.started),
        }
        yield self._line(final)

    def _line(self, fields: Json) -> bytes:
        return self._head + orjson.dumps(now()) + b"," + orjson.dumps(fields)[1:] + b"\n"

    @staticmethod
    def error(message: str) -> bytes:
        return orjson.dumps({"error": message}) + b"\n"
