"""A fake vLLM server speaking the HTTP API of `vllm serve` (its OpenAI-compatible server).

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
`GET /v1/models` (served ids with `root`, the repo behind them, and `max_model_len`),
`GET /health` (200 empty, 503 when unhealthy), `GET /version`, `GET /metrics`, and vLLM's LoRA
routes `POST /v1/load_lora_adapter` / `/v1/unload_lora_adapter` with loaded adapters listed and
served as models (`tests.fakes.lora`: `--max-loras`, `--lora-load-ms`, `--lora-modules`;
`GET /relais-fake/lora` reports slot loads). It serves the
models of the `models` switch (default `fake-org/fake-model`, the first one when a request names
none) and answers any other name with vLLM's 404. Errors are `{"error": {"message", "type",
"param", "code"}}` (vLLM's `ErrorResponse`; `param` is the parameter vLLM names in the message).
It behaves as if started with `--enable-auto-tool-choice --tool-call-parser ...` (or, with
`--no-tool-parser`, without: `tool_choice: auto` gets vLLM's 400) and a reasoning parser (the
`reasoning` switch), and serves generation and embeddings from one model. `--load-delay-s N`
refuses connections for N seconds first, as vLLM does while it loads a model.
Shapes follow real vLLM 0.32's answers, recorded in tests/data/vllm/ (hack/record-vllm.py);
tests/fakes/test_vllm_transcripts.py holds this fake to them.
Run: `python -m tests.fakes.vllm --port 8000 [--token-delay-ms 20 ...]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from tests.fakes import audio, lora, responses
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

VERSION = "0.32.0"
FINGERPRINT = f"vllm-{VERSION}-fake"
DEFAULT_MODEL = "fake-org/fake-model"
MAX_MODEL_LEN = MAX_TOTAL_TOKENS
MAX_LOGPROBS = 20  # vLLM's --max-logprobs default


_PARAMETER = re.compile(r"\(parameter=([\w.]+)")


def render_error(status: int, message: str) -> web.Response:
    """vLLM's `ErrorResponse`: the type is named after the status; `param` is what the message
    names as `(parameter=NAME, value=...)` (vLLM's own validation errors end so)."""
    kinds = {400: "BadRequestError", 404: "NotFoundError", 501: "NotImplementedError"}
    kind = kinds.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    named = _PARAMETER.search(message)
    param = named.group(1) if named else ("model" if status == 404 else None)
    error = {"message": message, "type": kind, "param": param}
    return web.json_response({"error": {**error, "code": status}}, status=status)


def served_models(request: web.Request) -> list[str]:
    return request.app[STATE].switches.models or [DEFAULT_MODEL]


def resolve_model(request: web.Request, requested: str) -> str:
    """The served model or loaded LoRA a request names (the first base when it names none);
    404 otherwise."""
    served = served_models(request)
    if not requested:
        return served[0]
    if requested not in served and requested not in lora.adapters_of(request.app):
        aliases = ", ".join(served)
        raise BadRequest(f"The model `{requested}` does not exist. Valid aliases: {aliases}.", 404)
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
        "root": DEFAULT_MODEL,  # the repo the server loaded; `id` is its --served-model-name
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
        "permission": [permission],
    }


def model_cards(request: web.Request) -> list[dict[str, Json]]:
    """`/v1/models`: the served models, then each loaded LoRA (`root` its path, `parent` the
    first served model, as vLLM lists adapters loaded without a base name)."""
    served = served_models(request)
    cards = [model_card(name) for name in served]
    for name, path in lora.adapters_of(request.app).items():
        card = model_card(name)
        card |= {"root": path, "parent": served[0], "max_model_len": None}
        cards.append(card)
    return cards


async def bring_in_lora(request: web.Request, model: str) -> None:
    """A request for a LoRA waits while the adapter is brought into a GPU slot."""
    state = request.app.get(lora.LORA)
    if state is not None and model in state.adapters:
        await state.activate(model)


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
            raise BadRequest(f"{name} must be {rule}, got {value!r}. {_named(name, value)}", 400)
    _check_logprobs(body)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    wanted = limit if isinstance(limit, int) else 0
    if wanted > MAX_MODEL_LEN:
        raise BadRequest(
            f"max_tokens={wanted} cannot be greater than max_model_len={MAX_MODEL_LEN}. Please"
            f" request fewer output tokens. {_named('max_tokens', wanted)}",
            400,
        )
    if prompt_tokens + wanted > MAX_MODEL_LEN:
        raise BadRequest(
            f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you "
            f"requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, "
            f"{wanted} in the completion). Please reduce the length of the messages or completion.",
            400,
        )


def _named(name: str, value: Json) -> str:
    return f"(parameter={name}, value={value})"


def _check_logprobs(body: dict[str, Json]) -> None:
    """vLLM counts chat `top_logprobs` and completions `logprobs` as one sampling limit."""
    chat = body.get("messages") is not None
    wanted = body.get("top_logprobs") if chat else body.get("logprobs")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > MAX_LOGPROBS:
        raise BadRequest(
            f"Requested sample logprobs of {wanted}, which is greater than max allowed:"
            f" {MAX_LOGPROBS} {_named('logprobs', wanted)}",
            400,
        )


def reject_auto_tools(body: dict[str, Json], prompt_tokens: int) -> None:
    """A server started without a tool parser: `tools` with `tool_choice` auto is a 400."""
    validate_sampling(body, prompt_tokens)
    if body.get("tools") and body.get("tool_choice", "auto") == "auto":
        raise BadRequest(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser'
            " to be set",
            400,
        )


_NULLS = dict.fromkeys(("kv_transfer_params", "ec_transfer_params", "metrics"))
_CHAT_NULLS = dict.fromkeys(("prompt_logprobs", "prompt_token_ids", "prompt_text"))
_MESSAGE_NULLS = dict.fromkeys(("refusal", "annotations", "audio", "function_call", "reasoning"))


def polish_answer(kind: str, answer: dict[str, Json]) -> dict[str, Json]:
    """vLLM's own fields of a whole answer, as recorded (all null here)."""
    answer |= {"service_tier": None, "system_fingerprint": FINGERPRINT, **_NULLS}
    answer["usage"] = {**answer["usage"], "prompt_tokens_details": None}
    answer["usage"]["completion_tokens_details"] = None
    for choice in answer["choices"]:
        choice |= {"token_ids": None, "routed_experts": None}
        choice.setdefault("stop_reason", None)
        if kind == "chat":
            choice["message"] = {**_MESSAGE_NULLS, **choice["message"]}
        else:
            choice |= {"prompt_logprobs": None, "prompt_token_ids": None}
    if kind == "chat":
        answer |= _CHAT_NULLS
    return answer


def polish_chunks(kind: str, chunks: list[dict[str, Json]]) -> list[dict[str, Json]]:
    """vLLM's own fields of stream chunks: prompt fields on the role chunk, `token_ids` on every
    other choice (completions: with the prompt's), the fingerprint on the last chunk only."""
    for chunk in chunks:
        del chunk["system_fingerprint"]
        for choice in chunk["choices"]:
            if kind == "chat" and "role" in choice["delta"]:
                chunk |= {"prompt_token_ids": None, "prompt_text": None}
                continue
            choice["token_ids"] = None
            if kind == "completion":
                choice.setdefault("stop_reason", None)
                choice["prompt_token_ids"] = None
    chunks[-1]["system_fingerprint"] = FINGERPRINT
    return chunks


FLAVOR = Flavor(
    sse_prefix=b"data: ",
    render_error=render_error,
    fingerprint=None,  # set by polish_*: vLLM sends it once per answer
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
    finish_on_last_token=True,
    reasoning_fields=("reasoning",),
    reasoning_null=True,
    max_logprobs=MAX_LOGPROBS,
    embeddings=True,
    validate=validate_sampling,
    polish_answer=polish_answer,
    polish_chunks=polish_chunks,
    model_cards=model_cards,
    before_generation=bring_in_lora,
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


def create_app(
    startup: Switches | None = None,
    *,
    tool_parser: bool = True,
    lora_options: lora.LoraOptions | None = None,
) -> web.Application:
    """The fake vLLM application (used in-process by tests that want no subprocess).

    `tool_parser`: started with `--enable-auto-tool-choice --tool-call-parser` (the default).
    `lora_options`: `--max-loras`, the cost of a slot load, `--lora-modules` (see tests.fakes.lora;
    `lora.lora_state(app)` reads the adapters, slots and `loads` in-process).
    """
    app = create_base_app(startup or Switches())
    lora.mount(app, lora_options or lora.LoraOptions(), served_models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    flavor = FLAVOR if tool_parser else dataclasses.replace(FLAVOR, validate=reject_auto_tools)
    add_openai_routes(app, flavor)
    responses.mount(app)
    add_anthropic_routes(app, flavor)
    audio.mount(app)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--tool-parser", action=argparse.BooleanOptionalAction, default=True)
    own.add_argument("--load-delay-s", type=float, default=0.0)
    own.add_argument("--max-loras", type=int, default=1, help="LoRA GPU slots (vLLM's default 1)")
    own.add_argument("--lora-load-ms", type=float, default=0.0, help="cost of a LoRA slot load")
    own.add_argument("--lora-modules", default="", help="LoRAs at start: name=path,name=path")
    mine, rest = own.parse_known_args(argv)
    args = parse_args("Fake vLLM server for Relais tests", rest, default_port=8000)
    modules = lora.parse_modules([m for m in mine.lora_modules.split(",") if m])
    options = lora.LoraOptions(mine.max_loras, mine.lora_load_ms, modules)
    # vLLM binds its port only once the model is loaded: until then, connections are refused.
    time.sleep(mine.load_delay_s)
    app = create_app(switches_from_args(args), tool_parser=mine.tool_parser, lora_options=options)
    serve(app, args.host, args.port, "vllm")


if __name__ == "__main__":
    main()
