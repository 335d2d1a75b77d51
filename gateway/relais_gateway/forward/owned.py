"""The fields the gateway owns in a body it sends to an engine, decided here and written last.

A client's body is forwarded as sent, except for what the gateway owns: the `model` (only the
top-level one names a model), `stream`, the output-token limit under every name an engine reads,
the sequences one request may ask for, and, for Ollama, the runtime options and `keep_alive` that
would change the loaded model for everyone. Each is decided from the deployment and written after
everything the client sent, so no client field of any name or nesting can change it.
Pure functions; the dialects call them just before forwarding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relais_api import OLLAMA_RUNTIME_OPTIONS

from relais_gateway.errors import InvalidRequest
from relais_gateway.routing.engines import EMBEDDINGS, TOKEN_FIELDS, Route
from relais_gateway.routing.registry import Backend

Json = dict[str, Any]

SEQUENCE_FIELDS = ("n", "best_of")
OLLAMA_STRIPPED = (
    OLLAMA_RUNTIME_OPTIONS | set(TOKEN_FIELDS) - {"num_predict"} | set(SEQUENCE_FIELDS)
)
"""Client `options` an Ollama engine never sees: the runtime ones (the deployment's instead), and
OpenAI names for limits that only `num_predict` may carry."""


@dataclass(frozen=True, slots=True)
class Owned:
    """What the gateway decided for one request."""

    stream: bool
    sequences: int = 1
    """Sequences the engine generates for it: the concurrency slots it takes."""
    capped: bool = False
    """The client asked for more output tokens than the deployment allows, and got the limit."""


def stream_flag(body: Json, *, default: bool) -> bool:
    """The request's `stream`: a boolean, or absent (400 for anything else, e.g. "false")."""
    value = body.get("stream")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    return value


def count(value: Any, param: str, *, minimum: int = 1) -> int | None:
    """A client's count (tokens, n): an integer, or a float with no fraction (400 otherwise)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{param} must be an integer", param=param)
    if value < minimum:
        raise InvalidRequest(f"{param} must be at least {minimum}", param=param)
    return value


def decide_tokens(asked: int | None, backend: Backend, param: str) -> tuple[int | None, bool]:
    """(the output-token limit to send, whether a larger ask was lowered) for `asked`."""
    limit = backend.max_tokens
    if limit is None or (asked is not None and asked <= limit):
        return asked, False
    if asked is None:
        return limit, False
    if backend.limits.max_tokens_policy == "Reject":
        raise InvalidRequest(
            f"{param} {asked} exceeds the limit of {limit} for model {backend.model!r}",
            param=param,
            code="max_tokens_exceeded",
        )
    return limit, True


def _prompts(value: Any) -> int:
    """How many prompts (or inputs) a `prompt`/`input` holds: a list of token ids is one."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def check_sequences(body: Json, backend: Backend) -> int:
    """Prompts x max(n, best_of), bounded by the deployment (400 `too_many_sequences`)."""
    per_prompt = max(count(body.get(name), name) or 1 for name in SEQUENCE_FIELDS)
    prompts = _prompts(body.get("prompt"))
    limit = backend.limits.max_sequences_per_request
    if per_prompt * prompts > limit:
        raise InvalidRequest(
            f"the request asks for {per_prompt * prompts} sequences ({prompts} prompts x"
            f" {per_prompt}); model {backend.model!r} allows {limit} per request",
            param="n" if per_prompt > 1 else "prompt",
            code="too_many_sequences",
        )
    return per_prompt * prompts


def check_inputs(body: Json, backend: Backend, field: str = "input") -> None:
    """Inputs of an embedding request, bounded by the deployment (400 `too_many_inputs`)."""
    inputs = _prompts(body.get(field))
    limit = backend.limits.max_inputs_per_request
    if inputs > limit:
        raise InvalidRequest(
            f"the request has {inputs} inputs; model {backend.model!r} allows {limit}",
            param=field,
            code="too_many_inputs",
        )


def own_openai(body: Json, backend: Backend, path: str, route: Route | None) -> Owned:
    """Decide and write the owned fields of an OpenAI-style body (in place)."""
    stream = stream_flag(body, default=False)
    sequences = check_sequences(body, backend)
    if path == EMBEDDINGS:
        check_inputs(body, backend)
    capped = False
    asks = {name: count(body.get(name), name) for name in TOKEN_FIELDS if name in body}
    for name, asked in asks.items():
        body[name], lowered = decide_tokens(asked, backend, name)
        capped = capped or lowered
    if not asks and route is not None and route.token_field is not None:
        decided, _ = decide_tokens(None, backend, route.token_field)
        if decided is not None:
            body[route.token_field] = decided
    body["model"] = backend.upstream_model
    if stream or "stream" in body:
        body["stream"] = stream
    return Owned(stream, sequences, capped)


def num_predict(options: Json) -> int | None:
    """Ollama's `num_predict` ask; -1 (no limit) and -2 (fill the context) ask for no limit."""
    value = count(options.get("num_predict"), "options.num_predict", minimum=-2)
    return value if value is not None and value > 0 else None


def ollama_options(body: Json) -> Json:
    """The client's Ollama `options` (400 when not an object)."""
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidRequest("options must be an object", param="options")
    return options


def own_ollama(body: Json, backend: Backend, *, generates: bool) -> Owned:
    """Decide and write the owned fields of an Ollama body for an Ollama engine (in place)."""
    stream = stream_flag(body, default=generates)
    client = ollama_options(body)
    options = {k: v for k, v in client.items() if k not in OLLAMA_STRIPPED}
    capped = False
    if generates:
        decided, capped = decide_tokens(num_predict(client), backend, "options.num_predict")
        if decided is not None:
            options["num_predict"] = decided
    options.update(dict(backend.ollama_options))
    body.pop("keep_alive", None)  # the deployment keeps its model loaded; no client unloads it
    if options or "options" in body:
        body["options"] = options
    body["model"] = backend.upstream_model
    if generates or "stream" in body:
        body["stream"] = stream
    return Owned(stream, 1, capped)
