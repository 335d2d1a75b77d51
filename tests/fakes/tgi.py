"""A fake Hugging Face TGI server speaking TGI's documented HTTP API.

Routes: `POST /generate`, `POST /generate_stream` (SSE `data:{"index","token":{id,text,logprob,
special},"generated_text","details"}`, the last event carrying `generated_text` and `details`),
the Messages API `POST /v1/chat/completions` (tools as TGI 3.x shapes them: `id` "0", arguments a
JSON string, finish "stop"; `image_url` parts as `data:` URLs; `logprobs`/`top_logprobs` <= 5;
`response_format` `{"type": "json"|"json_object", "value": schema}` or `{"type": "json_schema",
"value": {"schema": ...}}`, OpenAI's `json_schema` form tolerated) and `POST /v1/completions`
(SSE, then `data:[DONE]`), `GET /v1/models`, `GET /health`, `GET /info`, `GET /metrics`. TGI has
no embeddings route (404). Errors are
`{"error": "...", "error_type": "..."}` with TGI's statuses (422 validation, 424 generation,
429 overloaded, 500 incomplete_generation, 503 unhealthy).
Run: `python -m tests.fakes.tgi --port 8080 [--token-delay-ms 20 ...]`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

from tests.fakes.core import (
    MAX_TOTAL_TOKENS,
    STATE,
    BadRequest,
    ChunkStream,
    Json,
    Plan,
    Switches,
    begin,
    count_tokens,
    create_base_app,
    guard,
    make_plan,
    parse_args,
    serve,
    sleep_ms,
    stream_with_drops,
    switches_from_args,
)
from tests.fakes.openai_compat import (
    Flavor,
    add_openai_routes,
    data_url_image,
    optional_int,
    parse_schema,
    stop_list,
)

VERSION = "3.3.6"
DEFAULT_MODEL_ID = "fake-org/fake-model"
MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5  # TGI's --max-top-n-tokens default
EOS = {"id": 1, "text": "<eos>", "logprob": -0.01, "special": True}

ERROR_TYPES = {
    422: ("Input validation error: injected", "validation"),
    424: ("Request failed during generation: injected", "generation"),
    429: ("Model is overloaded", "overloaded"),
    500: ("Incomplete generation", "incomplete_generation"),
    503: ("unhealthy", "healthcheck"),
}


def render_error(status: int, message: str) -> web.Response:
    """TGI's `ErrorResponse`: the message and an `error_type` named after the failure kind."""
    kind = ERROR_TYPES.get(status, ("", "generation"))[1]
    if status == 400:
        kind = "validation"
    return web.json_response({"error": message, "error_type": kind}, status=status)


def model_id(request: web.Request) -> str:
    models = request.app[STATE].switches.models
    return models[0] if models else DEFAULT_MODEL_ID


FLAVOR = Flavor(
    sse_prefix=b"data:",
    render_error=render_error,
    fingerprint=f"{VERSION}-sha-fake",
    headers_early=True,
    invalid_status=422,
    resolve_model=lambda request, _requested: model_id(request),  # TGI serves one model
    list_models=lambda request: [model_id(request)],
    tool_style="tgi",
    tool_args_string=False,  # TGI reads arguments as any JSON value
    image_bytes=lambda url: data_url_image(url, 422),
    logprob_bytes=False,
    max_logprobs=MAX_TOP_N_TOKENS,
)


# ---------------------------------------------------------------- /generate and /generate_stream


def _validate(parameters: dict[str, Json], inputs: str) -> None:
    """The checks TGI's router makes before queueing a request (422 "Input validation error")."""

    def fail(message: str) -> BadRequest:
        return BadRequest(f"Input validation error: {message}", 422)

    temperature = parameters.get("temperature")
    if temperature is not None and not temperature > 0:
        raise fail("`temperature` must be strictly positive")
    top_p = parameters.get("top_p")
    if top_p is not None and not 0 < top_p < 1:
        raise fail("`top_p` must be > 0.0 and < 1.0")
    top_k = parameters.get("top_k")
    if top_k is not None and top_k <= 0:
        raise fail("`top_k` must be strictly positive")
    if len(stop_list(parameters.get("stop"))) > MAX_STOP_SEQUENCES:
        raise fail(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences")
    if not inputs:
        raise fail("`inputs` cannot be empty")
    max_new = optional_int(parameters, "max_new_tokens") or 0
    if count_tokens(inputs) + max_new > MAX_TOTAL_TOKENS:
        raise fail(
            f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL_TOKENS}. "
            f"Given: {count_tokens(inputs)} `inputs` tokens and {max_new} `max_new_tokens`"
        )


def _grammar(value: Json) -> Json:
    """TGI's `GrammarType`: `{"type": "json"|"json_object"|"regex"|"json_schema", "value": ...}`;
    `json_schema`'s value holds `{"name"?, "schema"}`."""
    kinds = ("json", "json_object", "regex", "json_schema")
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in kinds:
        raise BadRequest(
            "Input validation error: grammar must be {type: json|json_schema|regex, value}", 422
        )
    inner = value.get("value") or {}
    if value["type"] == "json_schema":
        inner = inner.get("schema") if isinstance(inner, dict) else None
        if inner is None:
            raise BadRequest("Input validation error: json_schema grammar needs value.schema", 422)
    return None if value["type"] == "regex" else parse_schema(inner)


def _parameters(body: dict[str, Json]) -> dict[str, Json]:
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object", 422)
    return parameters


def _plan(request: web.Request, inputs: str, parameters: dict[str, Json]) -> Plan:
    seed = parameters.get("seed")
    return make_plan(
        request.app[STATE].switches,
        prompt=inputs,
        max_tokens=optional_int(parameters, "max_new_tokens"),
        stop=stop_list(parameters.get("stop")),
        seed=seed if isinstance(seed, int) else None,
        structured=_grammar(parameters.get("grammar")),
    )


def _tokens(plan: Plan) -> tuple[list[dict[str, Json]], str, str]:
    """TGI's token list (a stop sequence stays in the text, EOS ends a natural stop), the
    generated text and the finish reason."""
    pieces = list(plan.pieces)
    if plan.stop_seq is not None:
        pieces.append(plan.stop_seq)
    tokens: list[dict[str, Json]] = [
        {"id": 100 + i, "text": piece, "logprob": -0.5, "special": False}
        for i, piece in enumerate(pieces)
    ]
    if plan.finish == "length":
        reason = "length"
    elif plan.stop_seq is not None:
        reason = "stop_sequence"
    else:
        reason, tokens = "eos_token", [*tokens, EOS]
    return tokens, "".join(pieces), reason


async def generate(request: web.Request) -> web.StreamResponse:
    body = await begin(request)
    inputs, parameters = body.get("inputs"), _parameters(body)
    inputs = inputs if isinstance(inputs, str) else ""
    _validate(parameters, inputs)
    plan = _plan(request, inputs, parameters)
    tokens, text, reason = _tokens(plan)
    await sleep_ms(request.app[STATE].switches.delay_ms)
    if parameters.get("return_full_text"):
        text = inputs + text
    answer: dict[str, Json] = {"generated_text": text}
    if parameters.get("details"):
        answer["details"] = {
            "finish_reason": reason,
            "generated_tokens": len(tokens),
            "seed": parameters.get("seed"),
            "prefill": [],
            "tokens": tokens,
        }
    headers = {"x-generated-tokens": str(len(tokens)), "x-prompt-tokens": str(plan.prompt_tokens)}
    return web.json_response(answer, headers=headers)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    body = await begin(request)
    inputs, parameters = body.get("inputs"), _parameters(body)
    inputs = inputs if isinstance(inputs, str) else ""
    _validate(parameters, inputs)
    plan = _plan(request, inputs, parameters)
    tokens, text, reason = _tokens(plan)
    switches = request.app[STATE].switches
    details = {
        "finish_reason": reason,
        "generated_tokens": len(tokens),
        "seed": parameters.get("seed"),
        "input_length": plan.prompt_tokens,
    }

    async def produce(stream: ChunkStream) -> None:
        await stream.prepare()  # axum sends the SSE headers before the first token
        for index, token in enumerate(tokens):
            await sleep_ms(switches.first_token_delay_ms if index == 0 else switches.token_delay_ms)
            last = index == len(tokens) - 1
            event = {
                "index": index + 1,
                "token": token,
                "generated_text": text if last else None,
                "details": details if last else None,
                "top_tokens": None,
            }
            await stream.send(b"data:" + json.dumps(event).encode() + b"\n\n")

    return await stream_with_drops(produce, ChunkStream(request, "text/event-stream"))


# ---------------------------------------------------------------- service routes


async def health(request: web.Request) -> web.Response:
    if request.app[STATE].switches.healthy:
        return web.Response(status=200)
    return render_error(503, "unhealthy")


async def info(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "model_id": model_id(request),
            "model_sha": None,
            "model_dtype": "torch.float16",
            "model_device_type": "cuda",
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": MAX_TOTAL_TOKENS - 1,
            "max_total_tokens": MAX_TOTAL_TOKENS,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": VERSION,
            "sha": "fake",
            "docker_label": None,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    counters = request.app[STATE].counters
    lines = [
        "# TYPE tgi_request_count counter",
        f"tgi_request_count {counters['requests']}",
        "# TYPE tgi_request_success counter",
        f"tgi_request_success {counters['successes']}",
        "# TYPE tgi_request_failure counter",
        f'tgi_request_failure{{err="validation"}} {counters["failures"]}',
        "# TYPE tgi_queue_size gauge",
        "tgi_queue_size 0",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def create_app(startup: Switches | None = None) -> web.Application:
    """The fake TGI application (used in-process by tests that want no subprocess)."""
    app = create_base_app(startup or Switches())
    checked = guard(render_error, invalid_status=422)
    app.router.add_post("/generate", checked(generate))
    app.router.add_post("/generate_stream", checked(generate_stream))
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics)
    add_openai_routes(app, FLAVOR)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Fake TGI server for Relais tests", argv, default_port=8080)
    serve(create_app(switches_from_args(args)), args.host, args.port, "tgi")


if __name__ == "__main__":
    main()
