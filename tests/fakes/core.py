"""Shared machinery of the fake engines: switches, request log, control routes, token plans, CLI.

`tests.fakes.ollama`, `tests.fakes.tgi` and `tests.fakes.vllm` build their routes on it. Generation
is deterministic: tokens are words of the `text` switch (rotated by the request's seed), structured
output is JSON filled from the schema, and `num_predict`/`max_tokens` and `stop` cut it as a real
engine would.

Features real apps use are deterministic too, so a test can tell that a request arrived whole:

- Tools. When a request has `tools`, `tool_choice` is not `"none"` and the last message is not a
  tool result, the fake calls ONE tool: the one `tool_choice` names, else the first, with arguments
  filled from that tool's `parameters` schema (`fill_schema`; `invalid_json` makes them violate it).
  Otherwise it answers text; after a tool result the text starts with `The tool returned <content>.`
  so a round trip is visible (`tool_plan`, `tool_result_preface`).
- Images. The text starts with `I see 1 image.` / `I see N images.` (`image_preface`); images are
  base64 (raw, or `data:` URLs on OpenAI routes); bad base64 is a 400, 422 on TGI (`decode_image`).
- Embeddings are unit vectors of `embedding_dim` floats derived from a SHA-256 of the input text
  (`embed`); `dimensions` keeps a renormalised prefix.
- Reasoning (`reasoning` switch, Ollama's `think`) comes first, as the words of `REASONING_TEXT`.
- Logprobs: token i has logprob `-(0.1 + 0.05 * (i % 7))`; alternatives are worse by 1.0 each
  (`token_logprob`, `alternatives`).
A structured-output request gets no preface: its answer stays valid JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import json
import math
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import pydantic
from aiohttp import web

DEFAULT_TEXT = (
    "Relais fake engine says hello from a deterministic token stream that never needs a GPU "
    "and answers every request with the same words in the same order"
)
REASONING_TEXT = "The user wants an answer so I will think briefly and then reply politely"
REQUEST_LOG_LIMIT = 1000
MAX_TOTAL_TOKENS = 4096  # the context a fake model pretends to have (TGI's --max-total-tokens)

Json: TypeAlias = Any
ErrorRenderer = Callable[[int, str], web.Response]


class Switches(pydantic.BaseModel):
    """The knobs a test turns; set by CLI flags at start and merged by `POST /_fake/config`."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)

    status: int | None = pydantic.Field(default=None, ge=400, le=599)
    first_token_delay_ms: float = pydantic.Field(default=0.0, ge=0)
    token_delay_ms: float = pydantic.Field(default=0.0, ge=0)
    delay_ms: float = pydantic.Field(default=0.0, ge=0)
    drop_after_chunks: int | None = pydantic.Field(default=None, ge=0)
    hang: bool = False
    tokens: int = pydantic.Field(default=8, ge=1)
    text: str = pydantic.Field(default=DEFAULT_TEXT, min_length=1)
    invalid_json: bool = False
    models: list[str] = pydantic.Field(default_factory=list)
    healthy: bool = True
    reasoning: bool = False
    embedding_dim: int = pydantic.Field(default=8, ge=1, le=4096)


SWITCH_HELP = {
    "status": "error status returned by generation routes, with the engine's error body",
    "first_token_delay_ms": "delay before the first streamed token",
    "token_delay_ms": "delay between streamed tokens",
    "delay_ms": "latency of a non-streamed answer",
    "drop_after_chunks": "abort the TCP connection after N streamed chunks",
    "hang": "accept generation requests and never answer",
    "tokens": "tokens generated when no limit or stop cuts earlier",
    "text": "the words the tokens come from",
    "invalid_json": "structured output violates the requested schema",
    "models": "comma-separated models served (empty: any name is accepted)",
    "healthy": "health routes answer OK",
    "reasoning": "answers carry reasoning first (vLLM reasoning_content; Ollama think by default)",
    "embedding_dim": "length of the embedding vectors",
}


LOG_ENTRY = "fake_log_entry"


class FakeState:
    """Per-server mutable state: switches, the startup switches for reset, the request log."""

    def __init__(self, startup: Switches) -> None:
        self.startup = startup
        self.switches = startup.model_copy(deep=True)
        self.log: collections.deque[dict[str, Json]] = collections.deque(maxlen=REQUEST_LOG_LIMIT)
        self.counters: collections.Counter[str] = collections.Counter()
        self.on_reset: list[Callable[[], None]] = []  # an engine's own state (vLLM's LoRAs)

    def record(self, request: web.Request, body: Json) -> None:
        """Remember one engine request (path, method, headers, parsed JSON body or None)."""
        entry = {
            "path": request.path,
            "method": request.method,
            "headers": dict(request.headers),
            "json": body,
            "disconnected": False,  # set when the client went away before the answer ended
        }
        request[LOG_ENTRY] = entry
        self.log.append(entry)


STATE = web.AppKey("fake_state", FakeState)


# ---------------------------------------------------------------- control routes


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].switches.model_dump())


async def _post_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise TypeError("the body must be a JSON object")
        state.switches = Switches.model_validate({**state.switches.model_dump(), **changes})
    except (ValueError, TypeError) as exc:  # pydantic.ValidationError is a ValueError
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(state.switches.model_dump())


async def _post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.switches = state.startup.model_copy(deep=True)
    state.log.clear()
    in_flight = state.counters["in_flight"]  # requests still running keep their count
    state.counters.clear()
    state.counters["in_flight"] = in_flight
    for reset in state.on_reset:
        reset()
    return web.json_response(state.switches.model_dump())


async def _get_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].log))


async def _get_stats(request: web.Request) -> web.Response:
    counters = request.app[STATE].counters
    keys = ("requests", "successes", "failures", "disconnects", "in_flight")
    return web.json_response({key: counters[key] for key in keys})


def create_base_app(startup: Switches) -> web.Application:
    """An aiohttp app with the fake's state and the `/_fake/*` control routes."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeState(startup)
    app.router.add_get("/_fake/config", _get_config)
    app.router.add_post("/_fake/config", _post_config)
    app.router.add_post("/_fake/reset", _post_reset)
    app.router.add_get("/_fake/requests", _get_requests)
    app.router.add_get("/_fake/stats", _get_stats)
    return app


# ---------------------------------------------------------------- request helpers


class BadRequest(Exception):
    """Input the engine rejects; rendered with the engine's error shape."""

    def __init__(self, message: str, status: int | None = None) -> None:  # None: engine's choice
        super().__init__(message)
        self.message = message
        self.status = status


async def read_json(request: web.Request) -> dict[str, Json]:
    """The request's JSON body; logs the request first so tests see even rejected ones."""
    state = request.app[STATE]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        state.record(request, None)
        raise BadRequest(f"invalid JSON body: {exc}", 400) from exc
    state.record(request, body)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def hang_until_client_leaves(request: web.Request) -> None:
    """Accept and never answer. The server runs with handler cancellation, so a client that
    disconnects cancels this wait (and is marked `disconnected` in the request log)."""
    await asyncio.Future()


async def sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InjectedError(Exception):
    """The `status` switch fired: the engine answers with its error body and this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def guard(render_error: ErrorRenderer, invalid_status: int = 400) -> Callable[[Handler], Handler]:
    """Wrap a generation handler: count it and render failures in the engine's error shape.

    `invalid_status` is what the engine answers for a well-formed body it rejects (TGI: 422).
    """

    def decorate(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            counters = request.app[STATE].counters
            counters["requests"] += 1
            counters["in_flight"] += 1
            try:
                response = await handler(request)
            except BadRequest as exc:
                counters["failures"] += 1
                return render_error(exc.status or invalid_status, exc.message)
            except InjectedError as exc:
                counters["failures"] += 1
                return render_error(
                    exc.status, f"fake engine: injected error (status {exc.status})"
                )
            except asyncio.CancelledError:  # the client disconnected (handler cancellation)
                counters["disconnects"] += 1
                entry = request.get(LOG_ENTRY)
                if entry is not None:
                    entry["disconnected"] = True
                raise
            finally:
                counters["in_flight"] -= 1
            counters["successes"] += 1
            return response

        return wrapped

    return decorate


async def begin(request: web.Request) -> dict[str, Json]:
    """Read and log the JSON body, then hang or fail as the switches say."""
    body = await read_json(request)
    switches = request.app[STATE].switches
    if switches.hang:
        await hang_until_client_leaves(request)
    if switches.status is not None:
        raise InjectedError(switches.status)
    return body


def check_model(request: web.Request, model: str, status: int = 404) -> None:
    """Reject a model the fake does not serve (only when the `models` switch lists some)."""
    served = request.app[STATE].switches.models
    if served and model not in served:
        raise BadRequest(f'model "{model}" not found, try pulling it first', status)


# ---------------------------------------------------------------- generation plans


@dataclass(frozen=True)
class Plan:
    """What one request generates: text pieces (one per token) and why generation ended."""

    pieces: list[str]
    finish: Literal["stop", "length"]
    stop_seq: str | None  # the stop sequence that ended generation (excluded from `pieces`)
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def count_tokens(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word (at least one)."""
    return max(1, len(text.split()))


def make_plan(
    switches: Switches,
    *,
    prompt: str,
    max_tokens: int | None,
    stop: Sequence[str],
    seed: int | None,
    structured: Json = None,
    preface: str = "",
) -> Plan:
    """Generate deterministically, cut by `max_tokens` (finish length) or a stop sequence.

    `preface` (image count, tool result) comes before the generated words, except in structured
    output, which must stay valid JSON.
    """
    if structured is not None:
        pieces = json_pieces(structured_text(structured, invalid=switches.invalid_json))
    else:
        pieces = word_pieces(switches.text, switches.tokens, seed)
        if preface:
            lead = word_pieces(preface, count_tokens(preface), 0)
            pieces = [*lead, " " + pieces[0], *pieces[1:]]
    out: list[str] = []
    so_far = ""
    for piece in pieces:
        if max_tokens is not None and len(out) >= max_tokens:
            return Plan(out, "length", None, count_tokens(prompt))
        candidate = so_far + piece
        hit = _first_stop(candidate, stop)
        if hit is not None:
            cut, seq = hit
            if cut > len(so_far):
                out.append(candidate[len(so_far) : cut])
            return Plan(out, "stop", seq, count_tokens(prompt))
        out.append(piece)
        so_far = candidate
    return Plan(out, "stop", None, count_tokens(prompt))


def _first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    hits = [(text.find(s), s) for s in stop if s and s in text]
    return min(hits) if hits else None


def word_pieces(text: str, count: int, seed: int | None) -> list[str]:
    words = text.split()
    offset = (seed or 0) % len(words)
    return [("" if i == 0 else " ") + words[(offset + i) % len(words)] for i in range(count)]


def json_pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def structured_text(spec: Json, *, invalid: bool) -> str:
    """JSON text for `format: json` (spec == "json") or a JSON schema; invalid if asked."""
    schema: Json = spec if isinstance(spec, dict) else {"type": "object"}
    if invalid:
        if spec == "json" or not isinstance(spec, dict):
            return '{"answer": "this is not closed'
        return json.dumps(violate_schema(schema))
    value = fill_schema(schema, schema) if isinstance(spec, dict) else {"answer": "hello"}
    return json.dumps(value)


def _resolve(schema: Json, root: Json) -> Json:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Json = root
    for part in ref[2:].split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return _resolve(node, root)


def fill_schema(schema: Json, root: Json) -> Json:
    """A value valid for simple schemas: objects, arrays, scalars, enum/const, anyOf/oneOf, $ref."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return fill_schema(schema[key][0], root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props: dict[str, Json] = schema.get("properties", {})
        return {name: fill_schema(sub, root) for name, sub in props.items()}
    if kind == "array":
        return [fill_schema(schema.get("items", {}), root)] * max(1, schema.get("minItems", 1))
    return _scalar(kind, schema)


def _scalar(kind: str, schema: Mapping[str, Json]) -> Json:
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "x" * max(1, int(schema.get("minLength", 5)))


def violate_schema(schema: Json) -> Json:
    """An object that breaks the schema: required fields missing, others of the wrong type."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return {"unexpected": "object"}
    if schema.get("required"):
        return {"unexpected": True}
    props: dict[str, Json] = schema.get("properties", {})
    if props:
        return {name: [] if sub.get("type") != "array" else 0 for name, sub in props.items()}
    return []


# ---------------------------------------------------------------- tools, images, embeddings


@dataclass(frozen=True)
class ToolCall:
    """The one tool call the fake makes: a function name and its arguments object."""

    name: str
    arguments: Json


def tool_names(tools: Json) -> list[str]:
    """The function names of a `tools` list (OpenAI and Ollama share the shape); checked."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("each tool needs a function with a name")
        names.append(name)
    return names


def chosen_tool(tools: Json, tool_choice: Json) -> str | None:
    """The tool the policy calls: the one `tool_choice` names, else the first; None for "none"."""
    names = tool_names(tools)
    if not names or tool_choice == "none":
        return None
    if tool_choice in (None, "auto", "required"):
        return names[0]
    named = tool_choice
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        named = function.get("name") if isinstance(function, dict) else None
    if not isinstance(named, str):
        raise BadRequest(f"invalid tool_choice: {json.dumps(tool_choice)}")
    if named not in names:
        raise BadRequest(f"tool_choice names {named!r}, which is not one of the tools given")
    return named


def tool_plan(
    switches: Switches, tools: Json, tool_choice: Json, after_tool_result: bool
) -> ToolCall | None:
    """The tool call this request gets, if any (see the module docstring for the policy)."""
    name = chosen_tool(tools, tool_choice)
    if name is None or after_tool_result:
        return None
    function = next(t["function"] for t in tools if t["function"]["name"] == name)
    schema = function.get("parameters") or {"type": "object"}
    if switches.invalid_json:
        return ToolCall(name, violate_schema(schema))
    return ToolCall(name, fill_schema(schema, schema))


def tool_result_preface(content: str) -> str:
    return f"The tool returned {content.strip() or 'nothing'}."


def image_preface(count: int) -> str:
    if count == 0:
        return ""
    return f"I see {count} image{'s' if count > 1 else ''}."


def decode_image(data: Json, status: int | None = None) -> bytes:
    """Raw image bytes from base64 text; a clear error otherwise."""
    if not isinstance(data, str) or not data:
        raise BadRequest("an image must be a non-empty base64 string", status)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"invalid base64 image data: {exc}", status) from exc


def embed(text: str, dim: int) -> list[float]:
    """A deterministic unit vector of `dim` floats from the SHA-256 of `text`."""
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        values += [(b - 127.5) / 127.5 for b in digest]
        block += 1
    return normalize(values[:dim])


def normalize(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def token_logprob(index: int) -> float:
    """The logprob of generated token `index`."""
    return -round(0.1 + 0.05 * (index % 7), 4)


def alternatives(piece: str, index: int, count: int) -> list[tuple[str, float]]:
    """The `count` most likely tokens at position `index`, best first (the chosen one first)."""
    best = token_logprob(index)
    word = piece.strip() or "_"
    return [(piece, best), *[(f"{word}{j}", best - j) for j in range(1, count)]][:count]


# ---------------------------------------------------------------- streaming


class Dropped(Exception):
    """The `drop_after_chunks` switch aborted the connection."""


class ChunkStream:
    """Writes stream chunks, preparing headers lazily (Ollama) or at once (TGI); drops on cue."""

    def __init__(self, request: web.Request, content_type: str) -> None:
        self.request = request
        self.switches = request.app[STATE].switches
        self.response = web.StreamResponse(headers={"Content-Type": content_type})
        self.sent = 0

    async def prepare(self) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)

    async def send(self, data: bytes) -> None:
        limit = self.switches.drop_after_chunks
        if limit is not None and self.sent >= limit:
            self._abort()
        await self.prepare()
        await self.response.write(data)
        self.sent += 1

    def _abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            with contextlib.suppress(OSError):
                sock = transport.get_extra_info("socket")
                if sock is not None:  # RST rather than FIN: the peer sees a reset connection
                    linger = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            transport.abort()
        raise Dropped

    async def finish(self) -> web.StreamResponse:
        await self.prepare()
        await self.response.write_eof()
        return self.response


async def stream_with_drops(
    produce: Callable[[ChunkStream], Awaitable[None]], stream: ChunkStream
) -> web.StreamResponse:
    """Run a chunk producer; a drop ends the handler quietly (the connection is already gone)."""
    try:
        await produce(stream)
    except (Dropped, ConnectionResetError):
        return stream.response  # the connection is gone; aiohttp sends nothing more
    return await stream.finish()


def nanos_since(start: float) -> int:
    return int((time.perf_counter() - start) * 1e9)


# ---------------------------------------------------------------- CLI


def parse_args(
    description: str, argv: Sequence[str] | None, default_port: int
) -> argparse.Namespace:
    """`--host`, `--port` and one flag per switch (`--first-token-delay-ms 50`, `--hang`, ...)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    defaults = Switches()
    for name, info in Switches.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=SWITCH_HELP[name]
            )
        elif name == "models":
            parser.add_argument(flag, default="", help=SWITCH_HELP[name])
        else:
            kind = float if info.annotation in (float,) else int if name != "text" else str
            parser.add_argument(flag, type=kind, default=default, help=SWITCH_HELP[name])
    return parser.parse_args(argv)


def switches_from_args(args: argparse.Namespace) -> Switches:
    values = {name: getattr(args, name) for name in Switches.model_fields}
    values["models"] = [m for m in str(values["models"]).split(",") if m]
    return Switches.model_validate(values)


def serve(app: web.Application, host: str, port: int, engine: str) -> None:
    """Bind, print `READY <url>` (what `FakeEngine` waits for), then serve until terminated."""
    with contextlib.suppress(ImportError):
        import uvloop  # optional speed-up: the fake must add ~nothing to latency

        uvloop.install()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"READY http://{url_host}:{bound} fake {engine}", flush=True)
    web.run_app(
        app,
        sock=sock,
        access_log=None,
        print=None,
        handle_signals=True,
        handler_cancellation=True,  # a client that leaves cancels generation, as engines do
    )
