"""API keys: who may call, which models each key may use, and each key's request rate.

Keys are looked up by their SHA-256 digest, so the raw secrets are not kept in the lookup table
and lookups take constant time. Keys and prompts are never logged; the key's `name` is.
"""

from __future__ import annotations

import collections
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relais_gateway.config import ApiKey, AuthConfig
from relais_gateway.errors import AuthenticationFailed, InvalidRequest, RateLimited


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_min` requests per minute, bursting up to the same number."""

    rate_per_min: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.rate_per_min)
        self.stamp = self.clock()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        now = self.clock()
        per_s = self.rate_per_min / 60.0
        self.tokens = min(float(self.rate_per_min), self.tokens + (now - self.stamp) * per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / per_s


@dataclass(slots=True)
class Caller:
    """An authenticated key's policy."""

    name: str
    models: frozenset[str] | None
    bucket: TokenBucket | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Caller(name="anonymous", models=None, bucket=None)


def _rate(caller: Caller) -> int | None:
    return caller.bucket.rate_per_min if caller.bucket is not None else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Checks bearer keys against the auth config; a disabled config lets everyone in."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.disabled = config.disabled
        self._callers: dict[bytes, Caller] = {}
        self.replace(config)

    def replace(self, config: AuthConfig) -> None:
        """Switch to `config` at once (requests in flight keep the caller they were given).

        A key whose name, models and rate did not change keeps its token bucket, so a reload
        does not hand every client a fresh burst.
        """
        callers: dict[bytes, Caller] = {}
        for key in config.keys:
            digest = _digest(key.key.get_secret_value())
            fresh = self._caller(key, self._clock)
            old = self._callers.get(digest)
            same = old is not None and (old.name, old.models) == (fresh.name, fresh.models)
            if same and old is not None and _rate(old) == _rate(fresh):
                fresh.bucket = old.bucket
            callers[digest] = fresh
        self._callers, self.disabled = callers, config.disabled

    @staticmethod
    def _caller(key: ApiKey, clock: Callable[[], float]) -> Caller:
        bucket = TokenBucket(key.requestsPerMinute, clock) if key.requestsPerMinute else None
        models = frozenset(key.models) if key.models is not None else None
        return Caller(name=key.name, models=models, bucket=bucket)

    def authenticate(self, key: str | None, *, malformed: bool = False) -> Caller:
        """The caller for a bearer `key` (401 when missing, malformed or unknown)."""
        if self.disabled:
            return ANONYMOUS
        if malformed:
            raise AuthenticationFailed("malformed Authorization header: expected `Bearer <key>`")
        if not key:
            raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>`")
        caller = self._callers.get(_digest(key.strip()))
        if caller is None:
            raise AuthenticationFailed("invalid API key")
        return caller

    @staticmethod
    def limit_rate(caller: Caller) -> None:
        """429 + Retry-After when the key is over its rate (one request taken otherwise)."""
        if caller.bucket is not None and (wait := caller.bucket.take()) > 0:
            raise RateLimited(
                f"rate limit of {caller.bucket.rate_per_min} requests per minute exceeded",
                retry_after_s=math.ceil(wait),
            )


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """(the key a request presents, whether its `Authorization` header is malformed).

    A key comes as `Authorization: Bearer <key>` (OpenAI, Ollama clients) or `x-api-key: <key>`
    (Anthropic clients). Two Authorization headers, or a Bearer and an x-api-key that differ,
    are ambiguous: which one a proxy or the gateway would read differs, so they are a 400.
    """
    bearers = [value for name, value in headers if name == b"authorization"]
    api_keys = [value for name, value in headers if name == b"x-api-key"]
    if len(bearers) > 1 or len(api_keys) > 1:
        raise InvalidRequest(
            "more than one Authorization or x-api-key header", code="ambiguous_key"
        )
    malformed, key = False, None
    if bearers:
        scheme, _, credentials = bearers[0].decode("latin-1").partition(" ")
        key = credentials.strip()
        malformed = scheme.lower() != "bearer" or not key
    if api_keys:
        other = api_keys[0].decode("latin-1").strip()
        if key is not None and other != key:
            raise InvalidRequest(
                "the Authorization and x-api-key headers hold different keys", code="ambiguous_key"
            )
        key, malformed = other, False
    return key, malformed


class FailureThrottle:
    """Failed authentications per client address in the last minute; past `per_minute`, the
    address gets 429 (even with a right key) until its failures age out.

    Bounded: at most `max_clients` addresses are tracked, the oldest forgotten first.
    """

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._max_clients = max_clients
        self._failures: dict[str, collections.deque[float]] = {}

    def check(self, address: str) -> None:
        """429 + Retry-After when `address` failed too often in the last minute."""
        failures = self._failures.get(address)
        if failures is None:
            return
        now = self._clock()
        while failures and failures[0] <= now - 60:
            failures.popleft()
        if not failures:
            del self._failures[address]
        elif len(failures) >= self.per_minute:
            raise RateLimited(
                "too many failed authentications from this address",
                retry_after_s=math.ceil(failures[0] + 60 - now),
                code="too_many_auth_failures",
            )

    def failed(self, address: str) -> None:
        failures = self._failures.pop(address, None) or collections.deque()
        failures.append(self._clock())
        self._failures[address] = failures  # most recent last: eviction takes the oldest
        if len(self._failures) > self._max_clients:
            del self._failures[next(iter(self._failures))]
