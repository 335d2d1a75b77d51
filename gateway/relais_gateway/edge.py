"""The ASGI edge every request passes: request id, body size limit, the request log and metrics.

Pure ASGI. The body is read here, counted against the limit before any parsing (chunked bodies
too), and replayed to the app.

It is also the generation routes' fast path: POSTs to those paths call the route's endpoint
directly (the same function FastAPI registers and documents), skipping routing, dependency
solving and the exception middleware, which together cost more CPU than the upstream call.
Errors there are rendered by the same `render_error` as FastAPI's handlers use.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relais_gateway.errors import GatewayError, PayloadTooLarge, render_error
from relais_gateway.metrics import Metrics

log = logging.getLogger("relais_gateway.request")

Endpoint = Callable[[Request], Awaitable[Response]]

API_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/api/chat",
        "/api/generate",
        "/api/tags",
        "/api/version",
    }
)


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable()


class EdgeMiddleware:
    """Request id (accepted or generated, returned as X-Request-ID), body limit, log, metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        fast_routes: Mapping[str, Endpoint],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.fast_routes = fast_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = ""
        length = -1
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        if not _valid_request_id(rid):
            rid = os.urandom(16).hex()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        state["started"] = started
        state["authorization"] = authorization
        rid_header = (b"x-request-id", rid.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            body_receive = await self._read_body(scope, receive, length)
            endpoint = self.fast_routes.get(scope["path"]) if scope["method"] == "POST" else None
            if body_receive is None:
                await self._reject_too_large(scope["path"], send_with_id)
            elif endpoint is not None:
                await _call_endpoint(endpoint, scope, body_receive, send_with_id)
            else:
                await self.app(scope, body_receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive, length: int) -> Receive | None:
        """A receive that replays the whole body, or None when it is over the limit."""
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        if length > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive  # disconnected: the app sees it on its own receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        scope["state"]["body"] = body
        replay: list[Message] = [{"type": "http.request", "body": body}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        return replay_receive

    async def _reject_too_large(self, path: str, send: Send) -> None:
        error = PayloadTooLarge(f"request body over the limit of {self.max_body_bytes} bytes")
        status, _, body = render_error(error, path)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
        path: str = scope["path"]
        if path not in API_ROUTES:
            return
        model = state.get("model", "")
        known = model if state.get("model_known") else "-"
        shown = status or 499  # no response started: the client went away
        self.metrics.requests.labels(path, known, str(shown)).inc()
        self.metrics.latency.labels(path, known).observe(elapsed)
        log.info(
            "request",
            extra={
                "request_id": state["request_id"],
                "method": scope["method"],
                "path": path,
                "model": model[:200],
                "key": state.get("caller"),
                "status": shown,
                "latency_ms": round(elapsed * 1000, 2),
            },
        )


async def _call_endpoint(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """Run a generation endpoint as FastAPI would, rendering gateway errors the same way."""
    try:
        response = await endpoint(Request(scope, receive))
    except GatewayError as exc:
        status, headers, body = render_error(exc, scope["path"])
        response = Response(body, status, headers=headers, media_type="application/json")
    except Exception:
        log.exception("unexpected error", extra={"path": scope["path"]})
        status, headers, body = render_error(GatewayError("internal gateway error"), scope["path"])
        response = Response(body, status, headers=headers, media_type="application/json")
    await response(scope, receive, send)
