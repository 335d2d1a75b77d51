"""A fake Ollama server speaking Ollama's documented HTTP API (docs/api.md) and its `/v1` routes.

Native routes: `POST /api/chat`, `POST /api/generate` (NDJSON streaming by default, final chunk
with `done`, `done_reason` and the duration/count fields; `tools`, base64 `images`, `think`,
`logprobs`/`top_logprobs`),
`POST /api/embed`, `POST /api/embeddings` (legacy), `GET /api/tags`, `GET /api/version`,
`POST /api/show` (with `capabilities`), `GET /api/ps`, `GET`/`HEAD /`. Errors are
`{"error": "..."}`. The `/v1` routes add tools, `data:` image URLs, `/v1/embeddings` and
`message.reasoning` (the `reasoning` switch, or `reasoning_effort` other than "none").
Run: `python -m tests.fakes.ollama --port 11434 [--first-token-delay-ms 50 ...]`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.core import (
    MAX_TOTAL_TOKENS,
    REASONING_TEXT,
    STATE,
    BadRequest,
    ChunkStream,
    Json,
    Plan,
    Switches,
    ToolCall,
    alternatives,
    begin,
    check_model,
    count_tokens,
    create_base_app,
    decode_image,
    embed,
    guard,
    image_preface,
    json_pieces,
    make_plan,
    nanos_since,
    normalize,
    parse_args,
    serve,
    sleep_ms,
    stream_with_drops,
    switches_from_args,
    token_logprob,
    tool_plan,
    word_pieces,
)
from tests.fakes.openai_compat import (
    Conversation,
    Flavor,
    add_openai_routes,
    message_text,
    stop_list,
)

VERSION = "0.12.6"
DEFAULT_MODEL = "fake:latest"
DIGEST = "sha256:" + "0" * 64
CAPABILITIES = ["completion", "tools", "vision", "thinking", "embedding"]  # the fake does all


def native_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def openai_error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    error = {"message": message, "type": kind, "param": None, "code": None}
    return web.json_response({"error": error}, status=status)


def created_at() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def served_models(request: web.Request) -> list[str]:
    return request.app[STATE].switches.models or [DEFAULT_MODEL]


def _echo_model(request: web.Request, model: str) -> str:
    check_model(request, model)
    return model


IMAGE_PREFIXES = (
    "data:;base64,",
    *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")),
)


def image_url_bytes(url: str) -> bytes:
    """Ollama's `/v1` image rule: base64 `data:` URLs of jpeg/png/webp (or no type) only."""
    if url.startswith(("http://", "https://")):
        raise BadRequest(
            "image URLs are not currently supported, please use base64 encoded data instead"
        )
    prefix = next((p for p in IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise BadRequest("invalid image input")
    try:
        return base64.b64decode(url[len(prefix) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("invalid image input") from exc


FLAVOR = Flavor(
    sse_prefix=b"data: ",
    render_error=openai_error,
    fingerprint="fp_ollama",
    headers_early=False,
    invalid_status=400,
    resolve_model=_echo_model,
    list_models=served_models,
    tool_style="ollama",
    image_bytes=image_url_bytes,
    embeddings=True,
    clamp_dimensions=True,
    reasoning_fields=("reasoning",),
    effort_sets_reasoning=True,
)


# ---------------------------------------------------------------- request parsing


def _model(request: web.Request, body: dict[str, Json]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    check_model(request, model)
    return model


def _format(value: Json) -> Json:
    """`format`: "" / absent, "json", or a JSON schema object."""
    if value in (None, ""):
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raise BadRequest(f'invalid format: {json.dumps(value)}; expected "json" or a JSON schema')


def _plan(request: web.Request, body: dict[str, Json], prompt: str, preface: str = "") -> Plan:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    num_predict = options.get("num_predict")
    if num_predict is not None and (not isinstance(num_predict, int) or num_predict == 0):
        raise BadRequest('option "num_predict" must be a non-zero integer')
    seed = options.get("seed")
    return make_plan(
        request.app[STATE].switches,
        prompt=prompt,
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        stop=stop_list(options.get("stop")),
        seed=seed if isinstance(seed, int) else None,
        structured=_format(body.get("format")),
        preface=preface,
    )


def _thinking(request: web.Request, body: dict[str, Json]) -> list[str]:
    """`think`: true/false or "low"/"medium"/"high"; absent, the `reasoning` switch decides."""
    think = body.get("think")
    if think is None:
        think = request.app[STATE].switches.reasoning
    if think not in (True, False, "low", "medium", "high"):
        raise BadRequest(
            f"invalid think value: {json.dumps(think)} "
            '(must be "high", "medium", "low", true, or false)'
        )
    if think is False:
        return []
    return word_pieces(REASONING_TEXT, count_tokens(REASONING_TEXT), 0)


def _images(value: Json) -> int:
    """`images` on a message or a generate request: base64 strings, checked."""
    if value is None:
        return 0
    if not isinstance(value, list):
        raise BadRequest("images must be a list of base64 strings")
    for image in value:
        decode_image(image, 400)
    return len(value)


def _conversation(messages: list[Json]) -> Conversation:
    """Check native chat messages (images, replayed tool calls) and read what the fake needs."""
    images = 0
    for message in messages:
        message_text(message)  # role check
        images += _images(message.get("images"))
        _check_tool_calls(message.get("tool_calls"))
    last = messages[-1]
    tool_result = message_text(last) if last.get("role") == "tool" else None
    return Conversation(" ".join(message_text(m) for m in messages), images, tool_result)


def _check_tool_calls(calls: Json) -> None:
    """Ollama decodes `arguments` into an object; a JSON string there is a 400."""
    if calls is None:
        return
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("each tool call needs a function with a name")
        if not isinstance(function.get("arguments", {}), dict):
            raise BadRequest("tool call arguments must be a JSON object")


def _tool_call(call: ToolCall) -> dict[str, Json]:
    function = {"index": 0, "name": call.name, "arguments": call.arguments}
    return {"id": "call_" + uuid.uuid4().hex[:8], "function": function}


def _metrics(plan: Plan, start: float, eval_count: int) -> dict[str, Json]:
    total = nanos_since(start)
    return {
        "total_duration": total,
        "load_duration": total // 10,
        "prompt_eval_count": plan.prompt_tokens,
        "prompt_eval_duration": total // 10,
        "eval_count": eval_count,
        "eval_duration": total - 2 * (total // 10),
    }


def _load_answer(model: str, body: dict[str, Json], field: str) -> web.Response:
    """An empty prompt loads (or with keep_alive 0 unloads) the model, as Ollama does."""
    reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
    empty: Json = {"role": "assistant", "content": ""} if field == "message" else ""
    answer = {"model": model, "created_at": created_at(), field: empty}
    return web.json_response({**answer, "done": True, "done_reason": reason})


# ---------------------------------------------------------------- generation routes


async def chat(request: web.Request) -> web.StreamResponse:
    start = time.perf_counter()
    body = await begin(request)
    model = _model(request, body)
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    if not messages:
        return _load_answer(model, body, "message")
    convo = _conversation(messages)
    switches = request.app[STATE].switches
    tool = tool_plan(switches, body.get("tools"), None, convo.tool_result is not None)
    reply = Reply(
        _plan(request, body, convo.prompt, convo.preface),
        _thinking(request, body),
        None if tool is None else _tool_call(tool),
        _top_logprobs(body),
    )
    return await _answer(request, body, model, reply, start, _chat_part)


async def generate(request: web.Request) -> web.StreamResponse:
    start = time.perf_counter()
    body = await begin(request)
    model = _model(request, body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if not prompt:
        return _load_answer(model, body, "response")
    preface = image_preface(_images(body.get("images")))
    plan = _plan(request, body, f"{body.get('system') or ''} {prompt}", preface)
    reply = Reply(plan, _thinking(request, body), None, _top_logprobs(body))
    return await _answer(request, body, model, reply, start, _generate_part)


def _chat_part(text: str, **fields: Json) -> dict[str, Json]:
    return {"message": {"role": "assistant", "content": text, **fields}}


def _generate_part(text: str, **fields: Json) -> dict[str, Json]:
    return {"response": text, **fields}


@dataclass(frozen=True)
class Reply:
    """What one request answers: text (unless a tool is called), thinking first, a tool call."""

    plan: Plan
    thinking: list[str]
    tool_call: dict[str, Json] | None
    top_logprobs: int | None = None  # None: no logprobs asked for

    @property
    def pieces(self) -> list[str]:
        return [] if self.tool_call else self.plan.pieces

    @property
    def eval_count(self) -> int:
        arguments = json.dumps(self.tool_call["function"]["arguments"]) if self.tool_call else ""
        return len(self.pieces) + len(self.thinking) + len(json_pieces(arguments))

    @property
    def done_reason(self) -> str:
        return "stop" if self.tool_call else self.plan.finish

    def fields(self) -> dict[str, Json]:
        """The non-content fields of the whole answer: thinking, tool_calls."""
        fields: dict[str, Json] = {"thinking": "".join(self.thinking)} if self.thinking else {}
        if self.tool_call:
            fields["tool_calls"] = [self.tool_call]
        return fields

    def logprobs(self, index: int | None = None) -> dict[str, Json]:
        """The top-level `logprobs` of one content piece (or of all), when asked for."""
        if self.top_logprobs is None:
            return {}
        indexes = range(len(self.pieces)) if index is None else [index]
        return {"logprobs": [_logprob(self.pieces[i], i, self.top_logprobs) for i in indexes]}


def _logprob(piece: str, index: int, top: int) -> dict[str, Json]:
    def one(token: str, logprob: float) -> dict[str, Json]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    entry = one(piece, token_logprob(index))
    if top:
        entry["top_logprobs"] = [one(t, lp) for t, lp in alternatives(piece, index, top)]
    return entry


def _top_logprobs(body: dict[str, Json]) -> int | None:
    """`logprobs` and `top_logprobs` (0-20, checked even without `logprobs`, as Ollama does)."""
    top = body.get("top_logprobs", 0)
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    return top if body.get("logprobs") else None


async def _answer(
    request: web.Request,
    body: dict[str, Json],
    model: str,
    reply: Reply,
    start: float,
    part: Callable[..., dict[str, Json]],
) -> web.StreamResponse:
    """Stream NDJSON (the default) or answer once; `part` shapes the content field."""
    switches: Switches = request.app[STATE].switches
    extra: dict[str, Json] = {} if part is _chat_part else {"context": [1, 2, 3]}
    metrics = _metrics(reply.plan, start, reply.eval_count)
    if body.get("stream", True) is False:
        await sleep_ms(switches.delay_ms)
        text = "".join(reply.pieces)
        final = {"model": model, "created_at": created_at(), **part(text, **reply.fields())}
        done = {"done": True, "done_reason": reply.done_reason, **extra, **metrics}
        done |= reply.logprobs()
        return web.json_response({**final, **done})

    def line(payload: dict[str, Json]) -> bytes:
        return json.dumps({"model": model, "created_at": created_at(), **payload}).encode() + b"\n"

    chunks = [part("", thinking=piece) for piece in reply.thinking]
    chunks += [{**part(p), **reply.logprobs(i)} for i, p in enumerate(reply.pieces)]
    if reply.tool_call:  # Ollama sends the whole call in one chunk before the done chunk
        chunks.append(part("", tool_calls=[reply.tool_call]))

    async def produce(stream: ChunkStream) -> None:
        for index, chunk in enumerate(chunks):
            await sleep_ms(switches.first_token_delay_ms if index == 0 else switches.token_delay_ms)
            await stream.send(line({**chunk, "done": False}))
        if not chunks:
            await sleep_ms(switches.first_token_delay_ms)
        done = {"done": True, "done_reason": reply.done_reason, **extra, **metrics}
        await stream.send(line({**part(""), **done}))

    return await stream_with_drops(produce, ChunkStream(request, "application/x-ndjson"))


# ---------------------------------------------------------------- embeddings


def _embed_inputs(value: Json) -> list[str]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("invalid input type")


def _cut(vector: list[float], dimensions: Json) -> list[float]:
    """Ollama keeps the first `dimensions` values, renormalised, when that is shorter."""
    if dimensions is None:
        return vector
    if not isinstance(dimensions, int) or isinstance(dimensions, bool):
        raise BadRequest("dimensions must be an integer")
    return normalize(vector[:dimensions]) if 0 < dimensions < len(vector) else vector


async def embed_route(request: web.Request) -> web.StreamResponse:
    start = time.perf_counter()
    body = await begin(request)
    model = _model(request, body)
    texts = _embed_inputs(body.get("input"))
    truncate = body.get("truncate", True)
    if not isinstance(truncate, bool):
        raise BadRequest("truncate must be a boolean")
    options = body.get("options") or {}
    num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
    context = num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else MAX_TOTAL_TOKENS
    counts = [count_tokens(t) for t in texts]
    if not truncate and any(c > context for c in counts):
        raise BadRequest("the input length exceeds the context length")
    dim = request.app[STATE].switches.embedding_dim
    vectors = [_cut(embed(t, dim), body.get("dimensions")) for t in texts]
    await sleep_ms(request.app[STATE].switches.delay_ms)
    answer: dict[str, Json] = {"model": model, "embeddings": vectors}
    if texts:
        total = nanos_since(start)
        answer |= {"total_duration": total, "load_duration": total // 10}
        answer["prompt_eval_count"] = sum(min(c, context) for c in counts)
    return web.json_response(answer)


async def embeddings_route(request: web.Request) -> web.StreamResponse:
    """The legacy `/api/embeddings`: one `prompt`, one `embedding`."""
    body = await begin(request)
    _model(request, body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    dim = request.app[STATE].switches.embedding_dim
    return web.json_response({"embedding": embed(prompt, dim) if prompt else []})


# ---------------------------------------------------------------- model routes


def _details() -> dict[str, Json]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "gemma3",
        "families": ["gemma3"],
        "parameter_size": "268.10M",
        "quantization_level": "Q4_K_M",
    }


def _model_entry(name: str) -> dict[str, Json]:
    modified = "2025-01-01T00:00:00Z"
    return {
        "name": name,
        "model": name,
        "modified_at": modified,
        "size": 253_000_000,
        "digest": DIGEST,
        "details": _details(),
    }


async def tags(request: web.Request) -> web.Response:
    request.app[STATE].record(request, None)
    return web.json_response({"models": [_model_entry(m) for m in served_models(request)]})


async def ps(request: web.Request) -> web.Response:
    request.app[STATE].record(request, None)
    expires = "2030-01-01T00:00:00Z"
    running = [
        {**_model_entry(m), "expires_at": expires, "size_vram": 0} for m in served_models(request)
    ]
    return web.json_response({"models": running})


async def version(request: web.Request) -> web.Response:
    del request  # a liveness probe (the gateway's health check): not logged as an engine request
    return web.json_response({"version": VERSION})


async def show(request: web.Request) -> web.StreamResponse:
    body = await begin(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    if name not in served_models(request):
        raise BadRequest(f"model '{name}' not found", 404)
    return web.json_response(
        {
            "modelfile": f"FROM {name}\n",
            "parameters": "stop <end_of_turn>",
            "template": "{{ .Prompt }}",
            "details": _details(),
            "model_info": {
                "general.architecture": "gemma3",
                "gemma3.context_length": MAX_TOTAL_TOKENS,
                "gemma3.embedding_length": request.app[STATE].switches.embedding_dim,
            },
            "capabilities": CAPABILITIES,
            "modified_at": "2025-01-01T00:00:00Z",
        }
    )


async def root(request: web.Request) -> web.Response:
    healthy = request.app[STATE].switches.healthy
    return web.Response(text="Ollama is running", status=200 if healthy else 503)


def create_app(startup: Switches | None = None) -> web.Application:
    """The fake Ollama application (used in-process by tests that want no subprocess)."""
    app = create_base_app(startup or Switches())
    checked = guard(native_error)
    app.router.add_post("/api/chat", checked(chat))
    app.router.add_post("/api/generate", checked(generate))
    app.router.add_post("/api/show", checked(show))
    app.router.add_post("/api/embed", checked(embed_route))
    app.router.add_post("/api/embeddings", checked(embeddings_route))
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    app.router.add_get("/", root)  # also answers HEAD
    add_openai_routes(app, FLAVOR)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Fake Ollama server for Relais tests", argv, default_port=11434)
    serve(create_app(switches_from_args(args)), args.host, args.port, "ollama")


if __name__ == "__main__":
    main()
