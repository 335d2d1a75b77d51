"""Speech to text: `/v1/audio/transcriptions` and `/v1/audio/translations` (multipart uploads).

The `model` is a form field: the gateway reads it (and nothing else of the form), puts the
engine's name for the model in its place and sends the upload on as slices of the body it
received, so the file is held in memory once. Uploads have their own size limit
(`MAX_UPLOAD_BYTES`, checked by the edge before the body is read). The answer (JSON, or text for
`response_format` text, srt, vtt) comes back as the engine wrote it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from relais_gateway.dialects import multipart
from relais_gateway.dialects.common import json_response
from relais_gateway.dialects.openai import admit
from relais_gateway.edge.deps import request_id, started
from relais_gateway.errors import InvalidRequest
from relais_gateway.forward.relay import renamer

router = APIRouter(prefix="/v1/audio", tags=["OpenAI"])

FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "model"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string", "minLength": 1},
                    },
                }
            }
        },
    }
}
"""The documented form: the file and the model; every other field is forwarded as sent."""


async def _upload(request: Request) -> Response:
    content_type = request.headers.get("content-type", "")
    body: bytes = request.scope["state"].get("body", b"")
    fields = multipart.form_fields(body, multipart.boundary(content_type))
    span = fields.get("model")
    model = body[span[0] : span[1]].decode(errors="replace").strip() if span else ""
    if not model:
        raise InvalidRequest("the form field `model` is required", param="model")
    gateway, backend = admit(request, model)
    path: str = request.scope["path"]
    gateway.require(backend, path)
    assert span is not None
    parts = multipart.with_field(body, span, backend.upstream_model.encode())
    reply = await gateway.upload(
        backend, path, parts, content_type, request.receive, request_id(request), started(request)
    )
    return json_response(renamer(backend.model)(reply.body), media_type=reply.content_type)


@router.post("/transcriptions", summary="Transcribe audio (multipart)", openapi_extra=FORM)
async def transcriptions(request: Request) -> Response:
    return await _upload(request)


@router.post("/translations", summary="Translate audio to English (multipart)", openapi_extra=FORM)
async def translations(request: Request) -> Response:
    return await _upload(request)
