"""Sends a canonical request to a replica of its backend and yields the engine's events.

Owns the upstream side of the hot path: replica choice, in-flight accounting, the retry before the
first event, ejection of failing replicas, timeouts (connect, first byte, stream idle) and the
per-model concurrency limit. Callers iterate `generate` and must close it (`aclosing`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar

import aiohttp
import orjson

from relais_gateway.balancer import Balancer
from relais_gateway.canonical import Event, GenerationRequest
from relais_gateway.engines import ENGINES, EngineAdapter
from relais_gateway.errors import (
    GatewayError,
    NoReadyReplica,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    from_engine_status,
    upstream_errors,
)
from relais_gateway.metrics import Metrics
from relais_gateway.registry import Backend
from relais_gateway.settings import Settings

MAX_ATTEMPTS = 2
DRAIN_TIMEOUT_S = 1.0


class Router:
    """Routes generations to engine replicas over one pooled aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        balancer: Balancer,
        metrics: Metrics,
    ) -> None:
        self.session = session
        self.settings = settings
        self.balancer = balancer
        self.metrics = metrics

    async def generate(
        self, backend: Backend, req: GenerationRequest, request_id: str, started: float
    ) -> AsyncGenerator[Event, None]:
        """Text deltas then a `Finish`; raises a `GatewayError` on failure.

        The concurrency check and the in-flight count happen on the first `anext`, with no await
        in between, so the limit holds exactly.
        """
        limit = backend.max_concurrent
        if limit is not None and self.balancer.inflight(backend.model) >= limit:
            raise RateLimited(
                f"model {backend.model!r} is at its limit of {limit} concurrent requests",
                retry_after_s=1,
                code="concurrency_limit_exceeded",
            )
        self.balancer.begin_model(backend.model)
        try:
            deltas = 0
            async for event in self._attempts(backend, req, request_id):
                if isinstance(event, str):
                    deltas += 1
                    if started:
                        self.metrics.observe_ttft(backend.model, time.perf_counter() - started)
                        started = 0.0
                else:
                    if not event.completion_tokens and req.stream:
                        # Some servers (llama.cpp) report no usage in streams: a streamed delta
                        # is one token, so count what was forwarded.
                        event.completion_tokens = deltas
                    self.metrics.count_tokens(
                        backend.model, event.prompt_tokens, event.completion_tokens
                    )
                yield event
        finally:
            self.balancer.end_model(backend.model)

    async def _attempts(
        self, backend: Backend, req: GenerationRequest, request_id: str
    ) -> AsyncGenerator[Event, None]:
        engine = ENGINES[backend.engine]
        path, body = engine.prepare(req)
        payload = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        tried: list[str] = []
        while True:
            replica = self.balancer.pick(backend.replicas, tried)
            if replica is None:
                raise NoReadyReplica(
                    f"model {backend.model!r} has no ready replica",
                    retry_after_s=self.settings.retry_after_s,
                )
            tried.append(replica)
            yielded = False
            self.balancer.begin_replica(replica)
            try:
                with upstream_errors(replica):
                    async for event in self._call(engine, replica + path, payload, headers, req):
                        yielded = True
                        yield event
                self.balancer.restore(replica)
                return
            except (UpstreamError, UpstreamTimeout) as exc:
                self._failed(replica)
                retry = isinstance(exc, UpstreamError) and exc.retryable
                if yielded or not retry or len(tried) >= MAX_ATTEMPTS:
                    raise
                if len(tried) >= len(backend.replicas):
                    raise
            finally:
                self.balancer.end_replica(replica)

    def _failed(self, replica: str) -> None:
        self.balancer.eject(replica)
        self.metrics.upstream_failures.labels(replica).inc()

    def _call(
        self,
        engine: EngineAdapter,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        req: GenerationRequest,
    ) -> AsyncGenerator[Event, None]:
        if req.stream:
            return self._stream(engine, url, payload, headers, req)
        return self._whole(engine, url, payload, headers, req)

    async def _whole(
        self,
        engine: EngineAdapter,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        req: GenerationRequest,
    ) -> AsyncGenerator[Event, None]:
        """A non-streamed answer, under one timer: its first byte is its end."""
        async with asyncio.timeout(self.settings.first_byte_timeout_s):
            status, body = await self._post_and_read(url, payload, headers)
        if status != 200:
            raise from_engine_status(status, body.decode(errors="replace"))
        text, finish = engine.parse_answer(orjson.loads(body), req)
        if text:
            yield text
        yield finish

    async def _stream(
        self,
        engine: EngineAdapter,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        req: GenerationRequest,
    ) -> AsyncGenerator[Event, None]:
        """A streamed answer: headers and first data within the first-byte timeout."""
        deadline = asyncio.get_running_loop().time() + self.settings.first_byte_timeout_s
        async with asyncio.timeout_at(deadline):
            resp = await self.session.post(url, data=payload, headers=headers)
        try:
            if resp.status != 200:
                async with asyncio.timeout_at(deadline):
                    text = (await resp.read()).decode(errors="replace")
                raise from_engine_status(resp.status, text)
            lines = self._lines(resp, deadline)
            async for event in engine.decode_stream(lines, req):
                yield event
        except BaseException:
            resp.close()  # never hand a half-read connection back to the pool
            raise
        await _finish_body(resp)

    async def _post_and_read(
        self, url: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """A whole upstream exchange: status and body."""
        resp = await self.session.post(url, data=payload, headers=headers)
        try:
            body = await resp.read()
        except BaseException:
            resp.close()  # never hand a half-read connection back to the pool
            raise
        resp.release()
        return resp.status, body

    async def _lines(self, resp: aiohttp.ClientResponse, deadline: float) -> AsyncIterator[bytes]:
        """The body's lines: the first data within the first-byte deadline, then within idle.

        Takes whatever arrived (often several events) at once, then splits lines, so a timer is
        armed per network wait rather than per line; before each wait, the stream's sender may
        send what it holds (see `before_network_wait`).
        """
        reader = resp.content
        data = await read_upstream(reader, deadline - asyncio.get_running_loop().time())
        idle = self.settings.stream_idle_timeout_s
        pending = b""
        while data:
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                yield line
            data = await read_upstream(reader, idle)
        if pending:
            yield pending


before_network_wait: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "before_network_wait", default=None
)
"""Set by a stream's sender: called before the upstream read waits for the network.

Events decoded from one network read are then sent to the client in one write, and nothing is
held back while the gateway waits for more: chunks stay unbuffered, writes stay few.
"""


async def _finish_body(resp: aiohttp.ClientResponse) -> None:
    """Read what follows a stream's last event (the chunked end, normally already received), so
    the connection goes back to the pool instead of being closed; close it if nothing comes."""
    try:
        while await read_upstream(resp.content, DRAIN_TIMEOUT_S):
            pass
    except (TimeoutError, aiohttp.ClientError):
        resp.close()
        return
    resp.release()


async def read_upstream(reader: aiohttp.StreamReader, timeout_s: float) -> bytes:
    """The data already received, or (after `before_network_wait`) the next to arrive."""
    data = reader.read_nowait()
    if data or reader.at_eof():
        return data
    flush = before_network_wait.get()
    if flush is not None:
        await flush()
    async with asyncio.timeout(timeout_s):  # a timer only when there is a wait
        return await reader.readany()


__all__ = ["GatewayError", "Router"]
