"""A fake Ollama server speaking Ollama's documented HTTP API (docs/api.md) and its `/v1` routes.

Native routes: `POST /api/chat`, `POST /api/generate` (NDJSON streaming by default, final chunk
with `done`, `done_reason` and the duration/count fields), `GET /api/tags`, `GET /api/version`,
`POST /api/show`, `GET /api/ps`, `GET /`. Errors are `{"error": "..."}`.
Run: `python -m tests.fakes.ollama --port 11434 [--first-token-delay-ms 50 ...]`.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from tests.fakes.core import (
    STATE,
    BadRequest,
    ChunkStream,
    Json,
    Plan,
    Switches,
    begin,
    check_model,
    create_base_app,
    guard,
    make_plan,
    nanos_since,
    parse_args,
    serve,
    sleep_ms,
    stream_with_drops,
    switches_from_args,
)
from tests.fakes.openai_compat import Flavor, add_openai_routes, message_text, stop_list

VERSION = "0.12.6"
DEFAULT_MODEL = "fake:latest"
DIGEST = "sha256:" + "0" * 64


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


FLAVOR = Flavor(
    sse_prefix=b"data: ",
    render_error=openai_error,
    fingerprint="fp_ollama",
    headers_early=False,
    invalid_status=400,
    resolve_model=_echo_model,
    list_models=served_models,
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


def _plan(request: web.Request, body: dict[str, Json], prompt: str) -> Plan:
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
    )


def _metrics(plan: Plan, start: float) -> dict[str, Json]:
    total = nanos_since(start)
    return {
        "total_duration": total,
        "load_duration": total // 10,
        "prompt_eval_count": plan.prompt_tokens,
        "prompt_eval_duration": total // 10,
        "eval_count": len(plan.pieces),
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
    plan = _plan(request, body, " ".join(message_text(m) for m in messages))
    return await _answer(request, body, model, plan, start, _chat_part)


async def generate(request: web.Request) -> web.StreamResponse:
    start = time.perf_counter()
    body = await begin(request)
    model = _model(request, body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if not prompt:
        return _load_answer(model, body, "response")
    plan = _plan(request, body, f"{body.get('system') or ''} {prompt}")
    return await _answer(request, body, model, plan, start, _generate_part)


def _chat_part(text: str) -> dict[str, Json]:
    return {"message": {"role": "assistant", "content": text}}


def _generate_part(text: str) -> dict[str, Json]:
    return {"response": text}


async def _answer(
    request: web.Request,
    body: dict[str, Json],
    model: str,
    plan: Plan,
    start: float,
    part: Callable[[str], dict[str, Json]],
) -> web.StreamResponse:
    """Stream NDJSON (the default) or answer once; `part` shapes the content field."""
    switches: Switches = request.app[STATE].switches
    extra: dict[str, Json] = {} if part is _chat_part else {"context": [1, 2, 3]}
    if body.get("stream", True) is False:
        await sleep_ms(switches.delay_ms)
        final = {"model": model, "created_at": created_at(), **part(plan.text), "done": True}
        done = {"done_reason": plan.finish, **extra, **_metrics(plan, start)}
        return web.json_response({**final, **done})

    def line(payload: dict[str, Json]) -> bytes:
        return json.dumps({"model": model, "created_at": created_at(), **payload}).encode() + b"\n"

    async def produce(stream: ChunkStream) -> None:
        for index, piece in enumerate(plan.pieces):
            await sleep_ms(switches.first_token_delay_ms if index == 0 else switches.token_delay_ms)
            await stream.send(line({**part(piece), "done": False}))
        if not plan.pieces:
            await sleep_ms(switches.first_token_delay_ms)
        done = {"done": True, "done_reason": plan.finish, **extra, **_metrics(plan, start)}
        await stream.send(line({**part(""), **done}))

    return await stream_with_drops(produce, ChunkStream(request, "application/x-ndjson"))


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
    request.app[STATE].record(request, None)
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
            "model_info": {"general.architecture": "gemma3", "gemma3.context_length": 32768},
            "capabilities": ["completion"],
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
