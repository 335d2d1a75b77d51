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


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


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


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


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


class UpstreamError(GatewayError):
    """The engine failed or answered with an error; `retryable` before the first byte is sent."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, status: int = 502, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


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
    """Status, headers and body for `exc`: Ollama shape under /api/, OpenAI shape elsewhere."""
    body: dict[str, object] = (
        {"error": exc.message} if path.startswith("/api/") else exc.openai_body()
    )
    return exc.status, exc.headers, orjson.dumps(body)


RETRYABLE_STATUSES = frozenset({502, 503})


def from_engine_status(status: int, text: str) -> GatewayError:
    """Map an engine's non-2xx answer to a gateway error (502/503 retryable, 4xx passed on)."""
    detail = f"engine answered {status}: {text[:300]}"
    if status in RETRYABLE_STATUSES:
        return UpstreamError(detail, status=status, retryable=True)
    if status == 404:
        return ModelNotFound(detail)
    if status == 429:
        return RateLimited(detail, retry_after_s=1, code="engine_overloaded")
    if 400 <= status < 500:
        return InvalidRequest(detail, code="engine_rejected_request")
    if status == 504:
        return UpstreamTimeout(detail)
    return UpstreamError(detail)


def map_upstream(exc: BaseException, replica: str) -> GatewayError | None:
    """The gateway error for a failure talking to `replica` (the one place that maps them)."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"engine {replica} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
        # Nothing was generated for the client yet when these happen before the answer starts;
        # the caller only retries before the first byte went out.
        return UpstreamError(
            f"cannot reach engine {replica}: {type(exc).__name__}", status=502, retryable=True
        )
    if isinstance(exc, aiohttp.ClientError | asyncio.IncompleteReadError | ConnectionError):
        return UpstreamError(f"engine {replica} failed: {type(exc).__name__}")
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
