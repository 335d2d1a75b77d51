"""Ollama's native API (`/api/chat`, `/api/generate`): NDJSON streams, `format` for JSON output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from relais_gateway.canonical import Event, Finish, GenerationRequest, finish_reason
from relais_gateway.errors import UpstreamError


def _options(req: GenerationRequest) -> dict[str, Any]:
    pairs = (
        ("num_predict", req.max_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("seed", req.seed),
        ("stop", req.stop),
    )
    return {key: value for key, value in pairs if value is not None}


def _finish(data: dict[str, Any]) -> Finish:
    return Finish(
        reason=finish_reason(data.get("done_reason")),
        prompt_tokens=int(data.get("prompt_eval_count") or 0),
        completion_tokens=int(data.get("eval_count") or 0),
    )


class OllamaEngine:
    """Adapter for Ollama (https://github.com/ollama/ollama/blob/main/docs/api.md)."""

    name = "ollama"

    def prepare(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": req.model, "stream": req.stream}
        if options := _options(req):
            body["options"] = options
        if req.json_schema is not None:
            body["format"] = req.json_schema
        elif req.json_mode:
            body["format"] = "json"
        if req.kind == "chat":
            body["messages"] = req.messages
            return "/api/chat", body
        body["prompt"] = req.prompt
        return "/api/generate", body

    def parse_answer(self, data: Any, req: GenerationRequest) -> tuple[str, Finish]:
        text = data["message"]["content"] if req.kind == "chat" else data["response"]
        return str(text or ""), _finish(data)

    async def decode_stream(
        self, lines: AsyncIterator[bytes], req: GenerationRequest
    ) -> AsyncIterator[Event]:
        chat = req.kind == "chat"
        async for line in lines:
            if not line.strip():
                continue
            data = orjson.loads(line)
            if "error" in data:
                raise UpstreamError(f"engine error: {str(data['error'])[:300]}")
            text = data["message"].get("content") if chat else data.get("response")
            if text:
                yield text
            if data.get("done"):
                yield _finish(data)
                return
        raise UpstreamError("engine stream ended before `done`")
