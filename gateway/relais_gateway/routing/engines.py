"""The engine table: what the gateway must know about each engine, in one place.

Every engine serves OpenAI-compatible routes (Ollama's `/v1/...`, TGI's Messages API, vLLM's and
llama.cpp's servers), so OpenAI clients are forwarded to all of them. Only Ollama also speaks
Ollama's native API; Ollama clients in front of any other engine go through
`dialects/translate_ollama.py`. What differs is small: which inference routes an engine serves,
and TGI's `response_format`.

`ROUTES` is the one list of what may reach an engine: inference, nothing else. Adapter loading,
sleep and wake, cache resets, profiling and RPC are never forwarded, whatever the engine serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relais_api import Task

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Route:
    """An inference route: the task a model must serve for it (None: any), and its
    output-token field."""

    task: Task | None
    token_field: str | None = None
    """Where the deployment's maxTokens goes when the client asks for none (None: no output)."""


ROUTES: dict[str, Route] = {
    CHAT: Route("generate", "max_tokens"),
    COMPLETIONS: Route("generate", "max_tokens"),
    RESPONSES: Route("generate", "max_output_tokens"),
    MESSAGES: Route("generate", "max_tokens"),
    "/v1/messages/count_tokens": Route("generate"),
    "/v1/audio/transcriptions": Route("generate"),
    "/v1/audio/translations": Route("generate"),
    EMBEDDINGS: Route("embed"),
    "/v1/rerank": Route("embed"),
    "/v1/score": Route("embed"),
    # vLLM's own routes beside /v1 (Jina's and Cohere's rerank forms, scoring, tokenizing).
    "/rerank": Route("embed"),
    "/v2/rerank": Route("embed"),
    "/score": Route("embed"),
    "/tokenize": Route(None),
    "/detokenize": Route(None),
}
"""Every route the gateway forwards to an engine, by its path on the engine."""

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict")
"""Every name an OpenAI-compatible engine reads as the output-token limit (capped wherever seen)."""


def _unchanged(body: Body) -> Body:
    return body


@dataclass(frozen=True, slots=True)
class Engine:
    """One kind of engine, as the gateway sees it."""

    name: str
    health_path: str = "/health"
    """Answers 200 once the engine serves (checked for static endpoints, see `registry.py`)."""
    native_ollama: bool = False
    """Speaks Ollama's native `/api/...` routes (Ollama clients are forwarded, not translated)."""
    routes: frozenset[str] = field(default_factory=lambda: frozenset(ROUTES))
    """The `ROUTES` the engine serves; for the others the gateway answers 501."""
    adapt_openai: Callable[[Body], Body] = _unchanged
    """Rewrites an OpenAI request body where the engine's wire format differs (in place)."""


def _tgi_response_format(body: Body) -> Body:
    """TGI's grammar is `{"type": "json", "value": <schema>}`, not OpenAI's `response_format`.

    TGI rejects OpenAI's `json_schema` and `json_object` forms (422); everything else in the
    Messages API body is OpenAI's and is left alone.
    """
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return body
    kind = fmt.get("type")
    if kind == "json_schema":
        inner = fmt.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        body["response_format"] = {"type": "json", "value": schema or {"type": "object"}}
    elif kind == "json_object" and "value" not in fmt:
        body["response_format"] = {"type": "json", "value": {"type": "object"}}
    return body


OPENAI_ROUTES = frozenset(path for path in ROUTES if path.startswith("/v1/"))
"""What any OpenAI-compatible server may serve: the `/v1` routes (vLLM's own are vLLM's)."""

ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine(
            "ollama",
            health_path="/api/version",
            native_ollama=True,
            routes=frozenset({CHAT, COMPLETIONS, EMBEDDINGS}),
        ),
        # TGI serves no embeddings (it is a text-generation server; TEI is a separate product).
        Engine("tgi", routes=frozenset({CHAT, COMPLETIONS}), adapt_openai=_tgi_response_format),
        Engine("vllm"),  # every route above
        # Any other OpenAI-compatible server (llama.cpp's, LM Studio, ...): /v1/models is the
        # route they all serve.
        Engine("openai", health_path="/v1/models", routes=OPENAI_ROUTES),
    )
}
