"""The ASGI edge every HTTP request passes first: request id, authentication, body limits, log,
metrics.

Pure ASGI, and outermost: `GatewayApp` calls it before FastAPI's own middleware stack. The key is
checked here, before the body is read, so a caller without a key learns nothing from the gateway
but 401 (and an address that keeps failing, 429). The body is then read within its time limit,
counted against the size limit before any parsing (chunked bodies too), and replayed.

It is also the generation routes' fast path: POSTs to those paths call the route's endpoint
directly (the same function FastAPI registers and documents), skipping FastAPI's middleware,
routing, dependency solving and exception middleware, which together cost more CPU than the
upstream call. Errors there are rendered by the same `render_error` as FastAPI's handlers use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relais_gateway.edge.cors import Cors
from relais_gateway.edge.logs import request_log
from relais_gateway.edge.metrics import Metrics
from relais_gateway.edge.tracing import Status, StatusCode, Tracing
from relais_gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    PayloadTooLarge,
    RequestTimeout,
    render_error,
)
from relais_gateway.policy.auth import Authenticator, FailureThrottle, presented_key

log = logging.getLogger("relais_gateway.edge.middleware")

Endpoint = Callable[[Request], Awaitable[Response]]

API_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/tags",
        "/api/ps",
        "/api/version",
    }
)
"""Routes counted in the request metrics and log by their own path (others: by prefix)."""

UPLOAD_ROUTES = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc"})
"""Routes anyone may call: probes, the metrics when they share the API port, the API docs."""
PROBE_ROUTES = frozenset({"/", "/api/version"})
"""Ollama's liveness routes: open without a key (health checks), but a wrong key is a 401."""


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable()


class EdgeMiddleware:
    """Request id (accepted or generated, returned as X-Request-ID), body limit, log, metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_upload_bytes: int,
        body_timeout_s: float,
        metrics: Metrics,
        authenticator: Authenticator,
        throttle: FailureThrottle,
        fast_routes: Mapping[str, Endpoint],
        cors: Cors | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.authenticator = authenticator
        self.throttle = throttle
        self.fast_routes = fast_routes
        self.cors = cors
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracing is not None and scope["path"] not in PUBLIC_ROUTES:
            await self._traced(self.tracing, scope, receive, send)
            return
        await self._handle(scope, receive, send)

    async def _traced(self, tracing: Tracing, scope: Scope, receive: Receive, send: Send) -> None:
        """The request inside its server span, which gets what the request log gets."""
        path: str = scope["path"]
        # Span names stay few, as metric labels do: forwarded and unknown paths share one name.
        route = path if path in API_ROUTES else "/v1/*" if path.startswith("/v1/") else "other"
        with tracing.server(scope["method"], route, scope["headers"]) as span:
            try:
                await self._handle(scope, receive, send)
            finally:
                state = scope.get("state", {})
                attributes = {
                    "http.request.method": scope["method"],
                    "http.response.status_code": state.get("status") or 499,
                    "relais.model": state.get("model", ""),
                    "relais.key": state.get("caller") or "-",
                    "relais.request_id": state.get("request_id", ""),
                }
                if "tokens" in state:
                    attributes["gen_ai.usage.input_tokens"] = state["tokens"][0]
                    attributes["gen_ai.usage.output_tokens"] = state["tokens"][1]
                span.set_attributes(attributes)
                if (state.get("status") or 499) >= 500:
                    span.set_status(Status(StatusCode.ERROR))

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        rid = ""
        length = -1
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"origin":
                origin = value
        if origin is not None and self.cors is not None:
            if scope["method"] == "OPTIONS":
                await self._preflight(scope, origin, send)
                return
            if self.cors.allows(origin):
                send = _with_headers(send, self.cors.headers(origin))
        if not _valid_request_id(rid):
            rid = os.urandom(16).hex()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        state["started"] = started
        rid_header = (b"x-request-id", rid.encode())
        try:
            try:
                self._authenticate(scope, state)
                body_receive = await self._read_body(scope, receive, length)
            except GatewayError as exc:
                await self._reject(exc, scope, rid_header, send)
                return
            endpoint = self.fast_routes.get(scope["path"]) if scope["method"] == "POST" else None
            if body_receive is None:
                limit = self._body_limit(scope)
                too_large = f"request body over the limit of {limit} bytes"
                await self._reject(PayloadTooLarge(too_large), scope, rid_header, send)
            elif endpoint is not None:
                await _call_endpoint(endpoint, scope, body_receive, send, rid_header)
            else:
                await self._call_app(scope, body_receive, send, rid_header)
        finally:
            self._record(scope, state, time.perf_counter() - started)

    async def _call_app(
        self, scope: Scope, receive: Receive, send: Send, rid_header: tuple[bytes, bytes]
    ) -> None:
        """Any other route: the FastAPI app, with the request id added to its answer."""
        state = scope["state"]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        await self.app(scope, receive, send_with_id)

    async def _preflight(self, scope: Scope, origin: bytes, send: Send) -> None:
        assert self.cors is not None
        requested = next(
            (v for k, v in scope["headers"] if k == b"access-control-request-headers"), None
        )
        status, headers = self.cors.preflight(origin, requested)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _body_limit(self, scope: Scope) -> int:
        """Uploads (audio) have their own limit; every other body the JSON one."""
        return self.max_upload_bytes if scope["path"] in UPLOAD_ROUTES else self.max_body_bytes

    def _authenticate(self, scope: Scope, state: dict[str, Any]) -> None:
        """Who calls, from the headers alone (401, 400 for ambiguous keys, 429 for an address
        that keeps failing); public routes pass without a key."""
        path: str = scope["path"]
        if path in PUBLIC_ROUTES or scope["method"] == "OPTIONS":
            return
        key, malformed = presented_key(scope["headers"])
        if path in PROBE_ROUTES and key is None and not malformed:
            return
        client = scope.get("client")
        address = client[0] if client else "-"
        self.throttle.check(address)
        try:
            caller = self.authenticator.authenticate(key, malformed=malformed)
        except AuthenticationFailed:
            self.throttle.failed(address)
            raise
        state["caller"] = caller.name
        state["caller_policy"] = caller

    async def _read_body(self, scope: Scope, receive: Receive, length: int) -> Receive | None:
        """A receive that replays the whole body, or None when it is over the limit (408 when
        it does not arrive within the body timeout)."""
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        limit = self._body_limit(scope)
        if length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return receive  # disconnected: the app sees it on its own receive
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.body_timeout_s:g} s"
            ) from None
        body = b"".join(chunks)
        scope["state"]["body"] = body
        replay: list[Message] = [{"type": "http.request", "body": body}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        return replay_receive

    async def _reject(
        self, error: GatewayError, scope: Scope, rid_header: tuple[bytes, bytes], send: Send
    ) -> None:
        """Answer `error` before the body was read: the connection closes after it, since the
        unread body would otherwise be taken for the next request."""
        status, extra, body = render_error(error, scope["path"])
        scope["state"]["status"] = status
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"), rid_header]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, state: dict[str, Any], elapsed: float) -> None:
        path: str = scope["path"]
        route = path
        if path not in API_ROUTES:
            if not (path.startswith("/v1/") and "model" in state):
                return
            route = "/v1/*"  # forwarded routes: one label, whatever clients send
        model = state.get("model", "")
        known = state.get("model_label") or "-"
        shown = state.get("status") or 499  # no response started: the client went away
        key = state.get("caller") or "-"
        self.metrics.observe_request(route, known, str(shown), elapsed, key)
        request_log.emit(
            {
                "request_id": state["request_id"],
                "method": scope["method"],
                "path": path,
                "model": model[:200],
                "key": state.get("caller"),
                "status": shown,
                "latency_ms": round(elapsed * 1000, 2),
            }
        )


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """`send`, adding `headers` to the response's start (streams included)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
        await send(message)

    return sending


def _error_response(exc: GatewayError, path: str) -> Response:
    status, headers, body = render_error(exc, path)
    return Response(body, status, headers=headers, media_type="application/json")


async def _call_endpoint(
    endpoint: Endpoint,
    scope: Scope,
    receive: Receive,
    send: Send,
    rid_header: tuple[bytes, bytes],
) -> None:
    """Run a generation endpoint as FastAPI would, rendering gateway errors the same way."""
    try:
        response = await endpoint(Request(scope, receive))
    except GatewayError as exc:
        response = _error_response(exc, scope["path"])
    except Exception:
        log.exception("unexpected error", extra={"path": scope["path"]})
        response = _error_response(GatewayError("internal gateway error"), scope["path"])
    response.raw_headers.append(rid_header)
    scope["state"]["status"] = response.status_code
    await response(scope, receive, send)
