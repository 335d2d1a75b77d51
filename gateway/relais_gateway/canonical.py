"""The one canonical request and event stream between dialects (wire formats) and engines.

A dialect turns a client request into a `GenerationRequest` and renders `Event`s back; an engine
adapter turns a `GenerationRequest` into an engine HTTP call and decodes the answer into `Event`s.
Text deltas are plain `str`; the last event of every successful generation is a `Finish`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class GenerationRequest:
    """What to generate, independent of who asked (dialect) and who answers (engine)."""

    kind: Literal["chat", "completion"]
    model: str
    """The served model name, as the engine knows it."""
    stream: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    """Constrain output to this JSON schema (engine-native constrained decoding)."""
    json_mode: bool = False
    """Constrain output to any JSON (Ollama `format: "json"`, OpenAI `json_object`)."""


@dataclass(slots=True)
class Finish:
    """The end of a generation: why it stopped, and token counts when the engine reports them."""

    reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


Event = str | Finish


def finish_reason(engine_reason: str | None) -> str:
    """Normalise an engine's stop reason to OpenAI's (`stop` or `length`)."""
    if engine_reason in ("length", "max_tokens"):
        return "length"
    return "stop"
