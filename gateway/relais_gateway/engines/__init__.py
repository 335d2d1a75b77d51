"""The engine table: one adapter per engine name. A new engine (vLLM, ...) is one more entry."""

from __future__ import annotations

from relais_gateway.engines.base import EngineAdapter
from relais_gateway.engines.ollama import OllamaEngine
from relais_gateway.engines.openai import OpenAICompatibleEngine
from relais_gateway.engines.tgi import TgiEngine

ENGINES: dict[str, EngineAdapter] = {
    "ollama": OllamaEngine(),
    "tgi": TgiEngine(),
    # Any OpenAI-compatible server (vLLM, llama.cpp's server): chat, completions, json_schema.
    "openai": OpenAICompatibleEngine(),
}

__all__ = ["ENGINES", "EngineAdapter"]
