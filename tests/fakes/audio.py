"""Speech to text on a fake engine, as vLLM serves it for Whisper models: multipart uploads to
`/v1/audio/transcriptions` and `/v1/audio/translations`, answered `{"text": ...}` (or plain text
for `response_format` text). The request log gets the form's fields and the file's size."""

from __future__ import annotations

from aiohttp import web

from tests.fakes.core import STATE


async def transcribe(request: web.Request) -> web.Response:
    form = await request.post()
    upload = form.get("file")
    size = len(upload.file.read()) if isinstance(upload, web.FileField) else 0
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    request.app[STATE].record(request, {**fields, "file_bytes": size})
    served = request.app[STATE].switches.models
    if served and fields.get("model") not in served:
        error = {"message": f"The model `{fields.get('model')}` does not exist.", "code": 404}
        return web.json_response({"error": {**error, "type": "NotFoundError"}}, status=404)
    text = f"fake transcription of {size} bytes"
    if fields.get("response_format") == "text":
        return web.Response(text=text)
    return web.json_response({"text": text})


def mount(app: web.Application) -> None:
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_post("/v1/audio/translations", transcribe)
