"""A misbehaving engine: OpenAI- and Ollama-compatible routes that answer in hostile ways.

The hostile-client gateway tests point deployments at it to check that the gateway stays bounded
(memory, time) and never answers 500 whatever an engine sends. The mode is the `model` the
request names (the gateway renames a deployment's model to its static `model:`, so one engine
serves every mode: a deployment `{servedModelName: big, model: huge_answer}`):

- `ok`: a small, well-formed answer (whole, or a stream with its end marker);
- `endless_line`: a stream that starts well (one good chunk), then a line that never ends:
  `line_bytes` (64 MiB) with no newline, and the connection closes;
- `huge_answer`: a whole JSON answer of `answer_bytes` (96 MiB), with its Content-Length;
  `huge_answer_chunked`: the same without Content-Length (chunked);
- `negative_usage`, `nonnumeric_usage`, `huge_usage`: a well-formed answer (whole or streamed)
  whose token counts (`usage`, Ollama's `prompt_eval_count`/`eval_count`) are -5/-7,
  "five"/null, or 10**30/1e308;
- `malformed_stream`: a first good chunk, then garbage lines and truncated JSON, and no end marker
  (a whole answer is truncated JSON);
- `stall`: a stream sends its headers and one chunk, then nothing; a whole answer never starts.

OpenAI routes stream when `"stream": true`; Ollama routes unless `"stream": false`. Runs
in-process (`MisbehavingEngine`, a context manager) or as `python -m tests.fakes.misbehaving`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any, Self

from aiohttp import web

from tests.fakes.core import serve
from tests.fakes.recording import BackgroundServer, Running

MiB = 1024 * 1024
LINE_BYTES = 64 * MiB
ANSWER_BYTES = 96 * MiB
CHUNK_BYTES = 1 * MiB
MODES = (
    "ok",
    "endless_line",
    "huge_answer",
    "huge_answer_chunked",
    "negative_usage",
    "nonnumeric_usage",
    "huge_usage",
    "malformed_stream",
    "stall",
)
USAGE: dict[str, tuple[Any, Any]] = {
    "ok": (3, 2),
    "negative_usage": (-5, -7),
    "nonnumeric_usage": ("five", None),
    "huge_usage": (10**30, 1e308),
}
"""(prompt tokens, completion tokens) each mode reports."""
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
WORDS = ("Hello", " from", " a", " misbehaving", " engine")


def _total(prompt: Any, completion: Any) -> Any:
    if isinstance(prompt, int | float) and isinstance(completion, int | float):
        return prompt + completion
    return None


def openai_usage(mode: str) -> dict[str, Any]:
    prompt, completion = USAGE.get(mode, USAGE["ok"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _total(prompt, completion),
    }


def ollama_counts(mode: str) -> dict[str, Any]:
    prompt, completion = USAGE.get(mode, USAGE["ok"])
    return {"prompt_eval_count": prompt, "eval_count": completion}


class MisbehavingEngine(Running):
    """The engine in a background thread; `url`, `requests()` (path, JSON body) and `clear()`."""

    def __init__(
        self,
        *,
        line_bytes: int = LINE_BYTES,
        answer_bytes: int = ANSWER_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.line_bytes = line_bytes
        self.answer_bytes = answer_bytes
        self.chunk_bytes = chunk_bytes
        self._log: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.app = create_app(self)
        self._server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the misbehaving engine is not running")
        return self._server.url

    def record(self, path: str, body: Any) -> None:
        with self._lock:
            self._log.append((path, body))

    def requests(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self._log)

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def start(self) -> Self:
        self._server = BackgroundServer(self.app).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


ENGINE = web.AppKey("misbehaving_engine", MisbehavingEngine)


async def _read(request: web.Request) -> tuple[str, dict[str, Any]]:
    """The request's mode (its `model`, `ok` when unknown) and JSON body; the request is logged."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    request.app[ENGINE].record(request.path, body)
    mode = body.get("model")
    return (mode if mode in MODES else "ok"), body


async def _stream(request: web.Request, content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    return response


async def _endless_line(
    request: web.Request, good: bytes, opening: bytes, content_type: str
) -> None:
    """A `good` first chunk, then `opening` and filler bytes, never a newline, up to
    `line_bytes`; then the connection ends (the line is still open)."""
    engine = request.app[ENGINE]
    response = await _stream(request, content_type)
    filler = b"a" * engine.chunk_bytes
    sent = len(opening)
    with contextlib.suppress(ConnectionResetError):  # the gateway hung up: as it should
        await response.write(good)
        await response.write(opening)
        while sent < engine.line_bytes:
            await response.write(filler)
            sent += len(filler)
        await response.write_eof()


async def _huge_answer(
    request: web.Request, opening: bytes, closing: bytes, *, chunked: bool
) -> web.StreamResponse:
    """A valid JSON document of `answer_bytes`: `opening`, filler inside a string, `closing`;
    with its Content-Length unless `chunked`."""
    engine = request.app[ENGINE]
    filler_total = max(0, engine.answer_bytes - len(opening) - len(closing))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if not chunked:
        response.content_length = len(opening) + filler_total + len(closing)
    await response.prepare(request)
    chunk = b"a" * engine.chunk_bytes
    left = filler_total
    with contextlib.suppress(ConnectionResetError):  # the gateway hung up: as it should
        await response.write(opening)
        while left > 0:
            piece = chunk if left >= len(chunk) else chunk[:left]
            await response.write(piece)
            left -= len(piece)
        await response.write(closing)
        await response.write_eof()
    return response


async def _stall_forever() -> None:
    await asyncio.Future()  # cancelled when the client leaves (handler cancellation)


# ---------------------------------------------------------------- OpenAI routes


def _chat_answer(model: str, mode: str, text_completion: bool) -> dict[str, Any]:
    text = "".join(WORDS)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if text_completion:
        choice["text"] = text
    else:
        choice["message"] = {"role": "assistant", "content": text}
    return {
        "id": "cmpl-misbehaving",
        "object": "text_completion" if text_completion else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": openai_usage(mode),
    }


def _chat_chunks(model: str, mode: str, text_completion: bool) -> list[bytes]:
    """The SSE events of a well-formed stream: one per word, a usage chunk, `[DONE]`."""
    kind = "text_completion" if text_completion else "chat.completion.chunk"
    events = []
    for i, word in enumerate(WORDS):
        piece: dict[str, Any] = {"text": word} if text_completion else {"delta": {"content": word}}
        finish = "stop" if i == len(WORDS) - 1 else None
        choice = {"index": 0, **piece, "finish_reason": finish, "logprobs": None}
        chunk = {"id": "cmpl-m", "object": kind, "created": 0, "model": model, "choices": [choice]}
        events.append(chunk)
    usage = {"id": "cmpl-m", "object": kind, "created": 0, "model": model, "choices": []}
    events.append({**usage, "usage": openai_usage(mode)})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


MALFORMED_SSE = (
    b"this is not an event\n\n",
    b'data: {"choices": [{"delta": {"content": "trunc\n\n',
    b"data: not json at all\n\n",
    b"data: " + b"\xff\xfe\xfd" + b"\n\n",
    b"event: error\n\n",
)


async def openai_route(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/responses: the mode's answer."""
    mode, body = await _read(request)
    model = str(body.get("model", "ok"))
    text_completion = request.path != "/v1/chat/completions"
    streamed = body.get("stream") is True
    if mode.startswith("huge_answer"):
        opening = b'{"id": "cmpl-huge", "object": "chat.completion", "model": "huge_answer", '
        opening += b'"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
        closing = b'"}, "finish_reason": "stop"}]}'
        return await _huge_answer(request, opening, closing, chunked=mode.endswith("chunked"))
    if mode == "endless_line":
        good = _chat_chunks(model, "ok", text_completion)[0]
        await _endless_line(request, good, b'data: {"choices": [{"delta": {"content": "', SSE)
        return web.Response()  # never sent: the stream above already ended
    if mode == "stall":
        if streamed:
            response = await _stream(request, SSE)
            await response.write(_chat_chunks(model, "ok", text_completion)[0])
        await _stall_forever()
    if not streamed:
        if mode == "malformed_stream":
            return web.Response(body=b'{"id": "cmpl-m", "choices": [{"mess', content_type=None)
        return web.json_response(_chat_answer(model, mode, text_completion))
    response = await _stream(request, SSE)
    chunks = _chat_chunks(model, mode, text_completion)
    if mode == "malformed_stream":
        chunks = [chunks[0], *MALFORMED_SSE]
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


# ---------------------------------------------------------------- Ollama routes


def _ollama_line(model: str, chat: bool, text: str, done: bool, mode: str) -> dict[str, Any]:
    line: dict[str, Any] = {"model": model, "created_at": "2026-01-01T00:00:00Z", "done": done}
    if chat:
        line["message"] = {"role": "assistant", "content": text}
    else:
        line["response"] = text
    if done:
        line.update({"done_reason": "stop", "total_duration": 1, "eval_duration": 1})
        line.update(ollama_counts(mode))
    return line


MALFORMED_NDJSON = (
    b"this is not json\n",
    b'{"message": {"content": "trunc\n',
    b"\xff\xfe\n",
    b"[1,\n",
)


async def ollama_route(request: web.Request) -> web.StreamResponse:
    """POST /api/chat, /api/generate: the mode's answer in Ollama's NDJSON or whole JSON."""
    mode, body = await _read(request)
    model = str(body.get("model", "ok"))
    chat = request.path == "/api/chat"
    streamed = body.get("stream") is not False
    if mode.startswith("huge_answer"):
        opening = b'{"model": "huge_answer", "created_at": "2026-01-01T00:00:00Z", '
        opening += b'"message": {"role": "assistant", "content": "' if chat else b'"response": "'
        closing = b'"}, "done": true}' if chat else b'", "done": true}'
        return await _huge_answer(request, opening, closing, chunked=mode.endswith("chunked"))
    lines = [_ollama_line(model, chat, word, False, mode) for word in WORDS]
    lines.append(_ollama_line(model, chat, "", True, mode))
    encoded = [json.dumps(line).encode() + b"\n" for line in lines]
    if mode == "endless_line":
        opening = b'{"message": {"role": "assistant", "content": "' if chat else b'{"response": "'
        await _endless_line(request, encoded[0], opening, NDJSON)
        return web.Response()
    if mode == "stall":
        if streamed:
            response = await _stream(request, NDJSON)
            await response.write(encoded[0])
        await _stall_forever()
    if not streamed:
        if mode == "malformed_stream":
            return web.Response(body=b'{"model": "x", "message": {"con', content_type=None)
        whole = _ollama_line(model, chat, "".join(WORDS), True, mode)
        return web.json_response(whole)
    if mode == "malformed_stream":
        encoded = [encoded[0], *MALFORMED_NDJSON]
    response = await _stream(request, NDJSON)
    for line_bytes in encoded:
        await response.write(line_bytes)
    await response.write_eof()
    return response


# ---------------------------------------------------------------- the rest


async def models(request: web.Request) -> web.Response:
    data = [
        {"id": mode, "object": "model", "created": 0, "owned_by": "misbehaving"} for mode in MODES
    ]
    return web.json_response({"object": "list", "data": data})


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [{"name": mode, "model": mode} for mode in MODES]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(engine: MisbehavingEngine) -> web.Application:
    app = web.Application(client_max_size=64 * MiB)
    app[ENGINE] = engine
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        app.router.add_post(path, openai_route)
    for path in ("/api/chat", "/api/generate"):
        app.router.add_post(path, ollama_route)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/health", health)
    app.router.add_get("/", health)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Misbehaving engine for Relais gateway tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve(create_app(MisbehavingEngine()), args.host, args.port, "misbehaving")


if __name__ == "__main__":
    main()
