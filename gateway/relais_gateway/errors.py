"""One typed error hierarchy for the gateway, and the one place upstream client errors are mapped.

Routes and services raise these; `app.py` renders them once, in the OpenAI shape on OpenAI routes
and the Ollama shape (`{"error": "..."}`) on Ollama routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI error `type`/`code`."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def openai_body(self) -> dict[str, object]:
        """The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error `type` by HTTP status (its API's table). A 503 (no ready replica, an
engine refusing load) reads as Anthropic's 529 `overloaded_error`: temporary, retried by the
SDKs; 504 is the SDK's `timeout_error`. Other 4xx are `invalid_request_error`, other 5xx
`api_error`."""


def anthropic_body(exc: GatewayError) -> dict[str, object]:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    fallback = "invalid_request_error" if exc.status < 500 else "api_error"
    kind = ANTHROPIC_TYPES.get(exc.status, fallback)
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, retry_after_s))})


class NoReadyReplica(GatewayError):
    status = 503
    type = "server_error"
    code = "no_ready_replica"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class AdapterLoading(NoReadyReplica):
    """A declared LoRA adapter no ready replica holds yet (or one that failed to load: then the
    message says why)."""

    code = "adapter_loading"


class UpstreamError(GatewayError):
    """The engine failed or answered with an error; `retryable` before the first byte is sent."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, status: int = 502, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class UpstreamTooLarge(UpstreamError):
    """The engine's answer (or one line of its stream) is over the gateway's limit."""

    code = "upstream_answer_too_large"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class InvalidModelOutput(GatewayError):
    """The engine's final answer does not match the requested JSON schema."""

    status = 502
    type = "server_error"
    code = "invalid_structured_output"


def from_validation(errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """A 400 naming the first offending field, from pydantic/FastAPI validation errors."""
    if not errors:
        return InvalidRequest("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest("malformed JSON body", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{param}: " if param else "request body: "
    return InvalidRequest(f"{where}{first.get('msg')}{more}", param=param)


def render_error(exc: GatewayError, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for `exc` in the route's dialect: Ollama's under /api/,
    Anthropic's under /v1/messages, OpenAI's elsewhere."""
    body: dict[str, object]
    if path.startswith("/api/"):
        body = {"error": exc.message}
    elif path.startswith("/v1/messages"):
        body = anthropic_body(exc)
    else:
        body = exc.openai_body()
    return exc.status, exc.headers, orjson.dumps(body)


RETRYABLE_STATUSES = frozenset({502, 503})


class NotSupported(GatewayError):
    """The model's engine does not offer this feature (TGI has no embeddings)."""

    status = 501
    type = "invalid_request_error"
    code = "not_supported"


class EngineRejected(GatewayError):
    """The engine refused the request (4xx): its status, message, `param` and `code` are passed
    on, in the client's dialect."""

    type = "invalid_request_error"
    code = "engine_rejected_request"

    def __init__(
        self, message: str, *, status: int, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if isinstance(value, str | int) and str(value) else None


def engine_error(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an engine's error body, whatever its shape.

    OpenAI and vLLM: `{"error": {"message", "type", "param", "code"}}`; Ollama and TGI:
    `{"error": "..."}`; older vLLM: `{"message": ...}`; FastAPI: `{"detail": ...}`; anything
    else: the text itself. Engine text is never trusted to be short or well-typed.
    """
    text = body.decode(errors="replace").strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text[:500], None, None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            code = _text(error.get("code"), 100)
            return str(error["message"])[:500], _text(error.get("param"), 100), code
        for value in (error, data.get("message"), data.get("detail")):
            if isinstance(value, str) and value:
                return value[:500], None, None
    return text[:500], None, None


def engine_message(body: bytes) -> str:
    """The human message in an engine's error body (see `engine_error`)."""
    return engine_error(body)[0]


def from_engine_status(status: int, body: bytes) -> GatewayError:
    """Map an engine's non-2xx answer to a gateway error (502/503 retryable, 4xx passed on)."""
    message, param, code = engine_error(body)
    detail = f"engine answered {status}: {message}"
    if status in RETRYABLE_STATUSES:
        return UpstreamError(detail, status=status, retryable=True)
    if status == 429:
        return RateLimited(detail, retry_after_s=1, code="engine_overloaded")
    if 400 <= status < 500:
        numeric = code is None or code.isdigit()  # vLLM puts the HTTP status in `code`
        return EngineRejected(detail, status=status, param=param, code=None if numeric else code)
    if status == 504:
        return UpstreamTimeout(detail)
    return UpstreamError(detail)


def map_upstream(exc: BaseException, replica: str) -> GatewayError | None:
    """The gateway error for a failure talking to `replica` (the one place that maps them).

    Connection failures (refused, reset, dropped mid-answer) are `retryable`: the upstream layer
    retries them on another replica as long as no byte reached the client.
    """
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"engine {replica} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(
            f"cannot reach engine {replica}: {exc.os_error!r}"[:300], retryable=True
        )
    if isinstance(exc, aiohttp.ClientError | asyncio.IncompleteReadError | ConnectionError):
        return UpstreamError(f"engine {replica} failed: {type(exc).__name__}", retryable=True)
    if isinstance(exc, KeyError | TypeError | ValueError):  # JSON decoding and shape errors
        return UpstreamError(f"engine {replica} sent a malformed answer: {exc!r}"[:300])
    return None


class upstream_errors:
    """Re-raise failures talking to `replica` as gateway errors (see `map_upstream`).

    A class rather than `@contextmanager`: it wraps every upstream call, and this form is cheaper.
    """

    __slots__ = ("replica",)

    def __init__(self, replica: str) -> None:
        self.replica = replica

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is not None and (error := map_upstream(exc, self.replica)) is not None:
            raise error from exc


class ClientClosedRequest(GatewayError):
    """The client went away before the answer; nobody reads this (logged as 499)."""

    status = 499
    type = "client_closed_request"


class malformed_answer:
    """Re-raise a failure to read an engine's answer (wrong shape, bad JSON) as a 502: an
    engine's answer is never trusted to have the shape its API documents."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, KeyError | TypeError | ValueError | AttributeError | IndexError):
            raise UpstreamError(f"the engine sent a malformed answer: {exc!r}"[:300]) from exc
