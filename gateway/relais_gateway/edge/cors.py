"""CORS for browser apps that call the gateway directly (Open WebUI's direct connections, SPAs).

Off unless `RELAIS_GATEWAY_CORS_ALLOW_ORIGINS` lists origins. The edge asks `Cors` two things per
request that carries an `Origin`: answer a preflight, or which headers to add to the answer
(whole, streamed or an error). Keys travel in headers, never cookies, so credentials are not
allowed and `*` is safe to echo; `settings.py` still refuses `*` without auth.
"""

from __future__ import annotations

from collections.abc import Sequence

Headers = list[tuple[bytes, bytes]]

METHODS = b"GET, POST, DELETE, OPTIONS"
EXPOSED = b"X-Request-ID, Retry-After"
MAX_AGE = b"600"


class Cors:
    """The allowed origins, and the headers answers to them carry."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origin.rstrip("/").encode() for origin in origins)

    def allows(self, origin: bytes) -> bool:
        return self.any or origin in self.origins

    def headers(self, origin: bytes) -> Headers:
        """What an answer to an allowed `origin` adds."""
        return [
            (b"access-control-allow-origin", b"*" if self.any else origin),
            (b"access-control-expose-headers", EXPOSED),
            (b"vary", b"Origin"),
        ]

    def preflight(self, origin: bytes, requested_headers: bytes | None) -> tuple[int, Headers]:
        """The status and headers of an answer to an `OPTIONS` preflight from `origin`."""
        if not self.allows(origin):
            return 403, [(b"vary", b"Origin")]
        headers = [
            *self.headers(origin),
            (b"access-control-allow-methods", METHODS),
            (b"access-control-max-age", MAX_AGE),
        ]
        if requested_headers:
            headers.append((b"access-control-allow-headers", requested_headers))
        return 204, headers
