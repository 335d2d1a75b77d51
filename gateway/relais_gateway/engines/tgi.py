"""Hugging Face TGI: its OpenAI-compatible Messages API, plus native `/generate` for JSON prompts.

TGI's guidance format is `{"type": "json", "value": <JSON schema>}`: as `response_format` on the
Messages API, and as `parameters.grammar` on the native `/generate` and `/generate_stream` routes
(used for constrained plain-prompt completions, which TGI's `/v1/completions` cannot constrain).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from relais_gateway.canonical import Event, Finish, GenerationRequest, finish_reason
from relais_gateway.engines.openai import OpenAICompatibleEngine
from relais_gateway.errors import UpstreamError


def _native(req: GenerationRequest) -> bool:
    return req.kind == "completion" and (req.json_schema is not None or req.json_mode)


def _native_finish(details: dict[str, Any] | None) -> Finish:
    details = details or {}
    return Finish(
        reason=finish_reason(details.get("finish_reason")),
        prompt_tokens=int(details.get("input_length") or 0),
        completion_tokens=int(details.get("generated_tokens") or 0),
    )


class TgiEngine(OpenAICompatibleEngine):
    """Adapter for TGI (https://huggingface.co/docs/text-generation-inference)."""

    name = "tgi"

    def response_format(self, req: GenerationRequest) -> dict[str, Any] | None:
        if req.json_schema is not None:
            return {"type": "json", "value": req.json_schema}
        if req.json_mode:
            return {"type": "json", "value": {"type": "object"}}
        return None

    def prepare(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        if not _native(req):
            return super().prepare(req)
        params = (
            ("max_new_tokens", req.max_tokens),
            ("temperature", req.temperature),
            ("top_p", req.top_p),
            ("seed", req.seed),
            ("stop", req.stop),
            ("grammar", self.response_format(req)),
        )
        parameters = {key: value for key, value in params if value is not None}
        parameters["details"] = True
        path = "/generate_stream" if req.stream else "/generate"
        return path, {"inputs": req.prompt, "parameters": parameters}

    def parse_answer(self, data: Any, req: GenerationRequest) -> tuple[str, Finish]:
        if not _native(req):
            return super().parse_answer(data, req)
        return str(data["generated_text"]), _native_finish(data.get("details"))

    async def decode_stream(
        self, lines: AsyncIterator[bytes], req: GenerationRequest
    ) -> AsyncIterator[Event]:
        if not _native(req):
            async for event in super().decode_stream(lines, req):
                yield event
            return
        async for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = orjson.loads(line[5:])
            if "error" in data:
                raise UpstreamError(f"engine error: {str(data['error'])[:300]}")
            token = data.get("token") or {}
            if token.get("text") and not token.get("special"):
                yield token["text"]
            if data.get("details") is not None or data.get("generated_text") is not None:
                yield _native_finish(data.get("details"))
                return
        raise UpstreamError("engine stream ended before its final event")
