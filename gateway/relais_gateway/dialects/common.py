"""What both dialects share: reading the body, forwarding whole and streamed answers, sending."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, Protocol, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from relais_gateway.edge.deps import count_tokens, request_id, started
from relais_gateway.errors import (
    ClientClosedRequest,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTooLarge,
    from_validation,
)
from relais_gateway.forward.service import MAX_JSON_DEPTH, Gateway, cancel_on_disconnect, encode
from relais_gateway.forward.upstream import Reply, before_network_wait
from relais_gateway.routing.registry import Backend

Json = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


def read_json(request: Request) -> Json:
    """The request body as a JSON object (400 `invalid_json` otherwise).

    The edge middleware has already read (and size-checked) the body.
    """
    raw: bytes = request.scope["state"].get("body", b"")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("malformed JSON body", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:  # only then can it nest that deep
        encode(body)  # 400 `json_too_deep` for what could not be sent on, on every route
    return body


def check(model: type[M], body: Json) -> M:
    """The fields the gateway owns, read from `body` and validated (400 naming the field).

    The body itself is forwarded: these models list only what Relais reads or limits.
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc.errors(include_url=False)) from None


class StreamReader(Protocol):
    """What forwards an engine stream: a relay (passthrough) or a translator."""

    ended: bool
    prompt_tokens: int
    completion_tokens: int
    lines: int

    @property
    def pending(self) -> int: ...

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...

    def error(self, message: str) -> bytes: ...


async def whole(
    gateway: Gateway,
    backend: Backend,
    path: str,
    body: Json,
    request: Request,
    prefix: str = "",
    weight: int = 1,
) -> Reply:
    """Forward a non-streamed request; the engine's 200 answer."""
    return await gateway.whole(
        backend, path, body, request.receive, request_id(request), started(request), prefix, weight
    )


async def stream(
    gateway: Gateway,
    backend: Backend,
    path: str,
    body: Json,
    request: Request,
    reader: StreamReader,
    media_type: str,
    headers: dict[str, str],
    prefix: str = "",
    weight: int = 1,
) -> Response:
    """Forward a streamed request: errors before the first chunk are plain HTTP errors; after
    it, the stream ends with an error event in the dialect's shape."""
    first, chunks = await gateway.open_stream(
        backend, path, body, request.receive, request_id(request), started(request), prefix, weight
    )

    def counted(reader: StreamReader) -> None:
        completion = reader.completion_tokens or reader.lines
        count_tokens(request, gateway, backend.label, reader.prompt_tokens, completion)

    line_limit = gateway.settings.max_upstream_line_bytes
    out = relayed(first, chunks, reader, counted, line_limit)
    return ChunkStreamResponse(out, media_type, headers)


async def relayed(
    first: bytes,
    chunks: AsyncGenerator[bytes, None],
    reader: StreamReader,
    on_end: Callable[[StreamReader], None],
    line_limit: int,
) -> AsyncGenerator[bytes, None]:
    """The client's body: the engine's chunks through `reader`; an early end, a line over
    `line_limit` bytes or a failure after the first byte becomes an in-band error (client
    libraries raise on it)."""
    async with aclosing(chunks):
        try:
            if out := reader.feed(first):
                yield out
            async for chunk in chunks:
                if out := reader.feed(chunk):
                    yield out
                if reader.pending > line_limit:
                    raise UpstreamTooLarge(f"the engine sent a line over {line_limit} bytes")
            if out := reader.close():
                yield out
            if not reader.ended:
                yield reader.error("the engine's stream ended before its end marker")
        except Exception as exc:  # the stream began: report in-band, as the engines do
            yield reader.error(stream_error(exc).message)
        finally:
            on_end(reader)


def stream_error(exc: Exception) -> GatewayError:
    """The error to put in a stream that broke after it began."""
    if isinstance(exc, GatewayError):
        return exc
    return UpstreamError(f"stream failed: {type(exc).__name__}")


def json_response(
    body: bytes | Json, status: int = 200, media_type: str = "application/json"
) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content, status, media_type=media_type)


class ChunkStreamResponse(Response):
    """A streamed 200 whose chunks go out as they come; a client disconnect closes the source.

    Chunks produced together (the lines of one upstream read) leave in one write: they are held
    only until the upstream reader is about to wait for the network (`before_network_wait`), and
    the last ones leave with the end of the body. Leaner than Starlette's StreamingResponse (no
    task group per stream), with the same guarantee: the request is cancelled when the client
    leaves.
    """

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], media_type: str, headers: dict[str, str]
    ) -> None:
        super().__init__(None, 200, headers=headers, media_type=media_type)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks = chunks
        self._held: list[bytes] = []
        self._send: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        token = before_network_wait.set(self._flush)
        try:
            await cancel_on_disconnect(receive, self._hold_chunks())
        except ClientClosedRequest:
            return  # nobody is listening; the source was closed on the way out
        finally:
            before_network_wait.reset(token)
        await send({"type": "http.response.body", "body": b"".join(self._held)})

    async def _hold_chunks(self) -> None:
        async with aclosing(self.chunks):
            async for chunk in self.chunks:
                self._held.append(chunk)

    async def _flush(self) -> None:
        if self._held and self._send is not None:
            body = b"".join(self._held)
            self._held.clear()
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
