"""Helpers both dialects use to run a request: streaming with a clean end, and non-streamed runs."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from relais_gateway.canonical import Event, GenerationRequest
from relais_gateway.deps import request_id, started
from relais_gateway.errors import ClientClosedRequest, GatewayError, UpstreamError
from relais_gateway.registry import Backend
from relais_gateway.router import before_network_wait
from relais_gateway.service import Answer, Gateway, cancel_on_disconnect, check_structured

ErrorRenderer = Callable[[GatewayError], bytes]


async def run_whole(
    gateway: Gateway, backend: Backend, req: GenerationRequest, request: Request
) -> Answer:
    """Run a non-streamed generation; JSON-constrained answers are checked against the schema."""
    events = gateway.events(backend, req, request_id(request), started(request))
    async with aclosing(events):
        answer = await gateway.collect(events, request.receive)
    if req.json_schema is not None or req.json_mode:
        check_structured(answer.text, req.json_schema)
    return answer


async def open_stream(
    gateway: Gateway, backend: Backend, req: GenerationRequest, request: Request
) -> tuple[Event, AsyncGenerator[Event, None]]:
    """Start a streamed generation: errors before the first event are plain HTTP errors."""
    events = gateway.events(backend, req, request_id(request), started(request))
    try:
        first = await gateway.first_event(events, request.receive)
    except BaseException:
        await events.aclose()
        raise
    return first, events


def stream_error(exc: Exception) -> GatewayError:
    """The error to put in a stream that broke after it began."""
    if isinstance(exc, GatewayError):
        return exc
    return UpstreamError(f"stream failed: {type(exc).__name__}")


class ChunkStreamResponse(Response):
    """A streamed 200 whose chunks go out as they come; a client disconnect closes the source.

    Chunks produced together (the events of one upstream read) leave in one write: they are held
    only until the upstream reader is about to wait for the network (`before_network_wait`), and
    the last ones leave with the end of the body. Leaner than Starlette's StreamingResponse (no
    task group per stream), with the same guarantee: the generation is cancelled when the client
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
