"""The engine table: what the gateway must know about each engine, in one place.

Every engine serves OpenAI-compatible routes (Ollama's `/v1/...`, TGI's Messages API, vLLM's and
llama.cpp's servers), so OpenAI clients are forwarded to all of them. Only Ollama also speaks
Ollama's native API; Ollama clients in front of any other engine go through `translate.py`.
What differs is small: which routes an engine lacks, and TGI's form of `response_format`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

Body = dict[str, Any]


def _unchanged(body: Body) -> Body:
    return body


@dataclass(frozen=True, slots=True)
class Engine:
    """One kind of engine, as the gateway sees it."""

    name: str
    native_ollama: bool = False
    """Speaks Ollama's native `/api/...` routes (Ollama clients are forwarded, not translated)."""
    lacks: frozenset[str] = field(default_factory=frozenset)
    """OpenAI routes the engine does not serve: the gateway answers 501 instead of forwarding."""
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


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine("ollama", native_ollama=True),
        # TGI serves no embeddings (it is a text-generation server; TEI is a separate product).
        Engine("tgi", lacks=frozenset({EMBEDDINGS}), adapt_openai=_tgi_response_format),
        Engine("vllm"),
        # Any other OpenAI-compatible server (llama.cpp's, LM Studio, ...).
        Engine("openai"),
    )
}
