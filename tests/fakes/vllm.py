"""A fake vLLM server speaking the HTTP API of `vllm serve` (its OpenAI-compatible server).

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
`GET /v1/models` (served ids with `max_model_len`), `GET /health` (200 empty, 503 when unhealthy),
`GET /version`, `GET /metrics`. It serves the models of the `models` switch (default
`fake-org/fake-model`, the first one when a request names none) and answers any other name with
vLLM's 404. Errors are `{"error": {"message", "type", "param", "code"}}` (vLLM's `ErrorResponse`).
It behaves as if started with `--enable-auto-tool-choice --tool-call-parser ...` and a reasoning
parser (the `reasoning` switch), and serves generation and embeddings from one model.
Run: `python -m tests.fakes.vllm --port 8000 [--token-delay-ms 20 ...]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from aiohttp import web

from tests.fakes import audio, responses
from tests.fakes.anthropic import add_anthropic_routes
from tests.fakes.core import (
    MAX_TOTAL_TOKENS,
    STATE,
    BadRequest,
    Json,
    Switches,
    create_base_app,
    parse_args,
    serve,
    switches_from_args,
)
from tests.fakes.openai_compat import Flavor, add_openai_routes, data_url_image

VERSION = "0.11.2"
DEFAULT_MODEL = "fake-org/fake-model"
MAX_MODEL_LEN = MAX_TOTAL_TOKENS
MAX_LOGPROBS = 20  # vLLM's --max-logprobs default


def render_error(status: int, message: str) -> web.Response:
    """vLLM's `ErrorResponse`: the error type is named after the HTTP status class."""
    kinds = {400: "BadRequestError", 404: "NotFoundError", 501: "NotImplementedError"}
    kind = kinds.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    error = {"message": message, "type": kind, "param": "model" if status == 404 else None}
    return web.json_response({"error": {**error, "code": status}}, status=status)


def served_models(request: web.Request) -> list[str]:
    return request.app[STATE].switches.models or [DEFAULT_MODEL]


def resolve_model(request: web.Request, requested: str) -> str:
    """The served model a request names (the first when it names none); 404 otherwise."""
    served = served_models(request)
    if not requested:
        return served[0]
    if requested not in served:
        raise BadRequest(f"The model `{requested}` does not exist.", 404)
    return requested


def model_card(name: str) -> dict[str, Json]:
    permission = {
        "id": "modelperm-fake",
        "object": "model_permission",
        "created": 0,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": name,
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
        "permission": [permission],
    }


SAMPLING_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (lambda v: v >= 0, "non-negative"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repetition_penalty": (lambda v: v > 0, "greater than zero"),
    "top_k": (lambda v: v == -1 or v >= 0, "0 (disable), or at least 1"),
    "n": (lambda v: v >= 1, "at least 1"),
}


def validate_sampling(body: dict[str, Json], prompt_tokens: int) -> None:
    """The checks of vLLM's `SamplingParams` and context length (400 BadRequestError)."""
    for name, (ok, rule) in SAMPLING_RULES.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not ok(value):
            raise BadRequest(f"{name} must be {rule}, got {value!r}.", 400)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    wanted = limit if isinstance(limit, int) else 0
    if prompt_tokens + wanted > MAX_MODEL_LEN:
        raise BadRequest(
            f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you "
            f"requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, "
            f"{wanted} in the completion). Please reduce the length of the messages or completion.",
            400,
        )


FLAVOR = Flavor(
    sse_prefix=b"data: ",
    render_error=render_error,
    fingerprint=None,  # vLLM sends system_fingerprint null
    headers_early=True,
    invalid_status=400,
    resolve_model=resolve_model,
    list_models=served_models,
    model_card=model_card,
    model_required=False,
    tool_style="openai",
    tool_args_string=False,  # vLLM's chat templates take arguments as a string or an object
    image_bytes=data_url_image,
    vllm_extras=True,
    role_every_delta=False,
    usage_null_in_chunks=True,
    reasoning_fields=("reasoning_content", "reasoning"),
    reasoning_null=True,
    max_logprobs=MAX_LOGPROBS,
    embeddings=True,
    validate=validate_sampling,
)


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[STATE].switches.healthy else 503)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


async def metrics(request: web.Request) -> web.Response:
    counters = request.app[STATE].counters
    labels = f'{{model_name="{served_models(request)[0]}"}}'
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{labels} {counters['in_flight']}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{labels} 0",
        "# TYPE vllm:request_success_total counter",
        f"vllm:request_success_total{labels} {counters['successes']}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def create_app(startup: Switches | None = None) -> web.Application:
    """The fake vLLM application (used in-process by tests that want no subprocess)."""
    app = create_base_app(startup or Switches())
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    add_openai_routes(app, FLAVOR)
    responses.mount(app)
    add_anthropic_routes(app, FLAVOR)
    audio.mount(app)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Fake vLLM server for Relais tests", argv, default_port=8000)
    serve(create_app(switches_from_args(args)), args.host, args.port, "vllm")


if __name__ == "__main__":
    main()
