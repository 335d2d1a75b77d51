"""OpenAI-compatible engines (`/v1/chat/completions`, `/v1/completions`, SSE streams).

The base for TGI's Messages API and for any OpenAI-compatible server (vLLM, llama.cpp).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from relais_gateway.canonical import Event, Finish, GenerationRequest, finish_reason
from relais_gateway.errors import UpstreamError


def _usage_finish(reason: str | None, usage: dict[str, Any] | None) -> Finish:
    usage = usage or {}
    return Finish(
        reason=finish_reason(reason),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


class OpenAICompatibleEngine:
    """Adapter for servers speaking the OpenAI API; subclasses change the structured output."""

    name = "openai"

    def response_format(self, req: GenerationRequest) -> dict[str, Any] | None:
        """The engine's constrained-decoding request for `req`, if any."""
        if req.json_schema is not None:
            return {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": req.json_schema},
            }
        if req.json_mode:
            return {"type": "json_object"}
        return None

    def prepare(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": req.model, "stream": req.stream}
        params = (
            ("max_tokens", req.max_tokens),
            ("temperature", req.temperature),
            ("top_p", req.top_p),
            ("seed", req.seed),
            ("stop", req.stop),
        )
        body.update((key, value) for key, value in params if value is not None)
        if req.stream:
            body["stream_options"] = {"include_usage": True}
        if (response_format := self.response_format(req)) is not None:
            body["response_format"] = response_format
        if req.kind == "chat":
            body["messages"] = req.messages
            return "/v1/chat/completions", body
        body["prompt"] = req.prompt
        return "/v1/completions", body

    def parse_answer(self, data: Any, req: GenerationRequest) -> tuple[str, Finish]:
        choice = data["choices"][0]
        text = choice["message"].get("content") if req.kind == "chat" else choice.get("text")
        return str(text or ""), _usage_finish(choice.get("finish_reason"), data.get("usage"))

    async def decode_stream(
        self, lines: AsyncIterator[bytes], req: GenerationRequest
    ) -> AsyncIterator[Event]:
        chat = req.kind == "chat"
        reason: str | None = None
        usage: dict[str, Any] | None = None
        async for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, `event:` and `:` comment lines
            payload = line[5:].strip()
            if payload == b"[DONE]":
                yield _usage_finish(reason, usage)
                return
            data = orjson.loads(payload)
            if "error" in data:
                raise UpstreamError(f"engine error: {str(data['error'])[:300]}")
            usage = data.get("usage") or usage
            for choice in data.get("choices") or ():
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if text:
                    yield text
                reason = choice.get("finish_reason") or reason
        raise UpstreamError("engine stream ended before [DONE]")
