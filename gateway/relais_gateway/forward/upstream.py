"""The upstream side of the hot path: one exchange with a replica of a backend's engine.

Owns replica choice (the balancer), in-flight accounting per replica, timeouts (connect, first
byte, stream idle), ejection of failing replicas and the retry: any failure before the first
byte could reach the client (connection refused or reset, an engine 502/503, a stream that drops
before its first data) is retried on another replica, for streamed and whole answers alike.
A replica that answers a LoRA adapter request with vLLM's 404 "does not exist" (it restarted, or
unloaded the adapter) is marked as not holding it (`routing/adapters.py`) and the request goes to
another replica the same way.
Bytes are returned as the engine sent them; reading them is the callers' business.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

import aiohttp

from relais_gateway.edge.metrics import Metrics
from relais_gateway.edge.tracing import Span, Tracing
from relais_gateway.errors import (
    AdapterLoading,
    EngineRejected,
    NoReadyReplica,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    from_engine_status,
    upstream_errors,
)
from relais_gateway.routing.adapters import AdapterTracker
from relais_gateway.routing.balancer import Affinity, Balancer
from relais_gateway.routing.registry import Backend
from relais_gateway.settings import Settings

MAX_ATTEMPTS = 3
DRAIN_TIMEOUT_S = 1.0
ERROR_BODY_LIMIT = 64 * 1024


Payload = bytes | list[memoryview] | None
"""A request body: JSON bytes, an upload as slices of the client's body, or none."""


async def _slices(parts: list[memoryview]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part  # type: ignore[misc]  # aiohttp writes any bytes-like object


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole (non-streamed) 200 answer of an engine."""

    content_type: str
    body: bytes


class Upstream:
    """Sends requests to engine replicas over the one pooled aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        balancer: Balancer,
        metrics: Metrics,
        tracing: Tracing | None = None,
        adapters: AdapterTracker | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.balancer = balancer
        self.metrics = metrics
        self.tracing = tracing
        self.adapters = adapters

    async def whole(
        self,
        backend: Backend,
        path: str,
        payload: Payload,
        request_id: str,
        prefix: str = "",
        method: str = "POST",
        content_type: str = "application/json",
    ) -> Reply:
        """Send `payload` to `path` on a replica (POST, or `method`) and read the whole 200
        answer. A payload of slices (an upload) is sent one slice after another, never joined."""
        tried: list[str] = []
        while True:
            replica = self._pick(backend, tried, prefix)
            self.balancer.begin_replica(replica)
            span, headers = self._attempt(backend, replica, tried, request_id, content_type)
            error: BaseException | None = None
            try:
                with upstream_errors(replica):
                    async with asyncio.timeout(self.settings.first_byte_timeout_s):
                        reply = await self._exchange(method, replica + path, payload, headers)
                self.balancer.restore(replica)
                return reply
            except (UpstreamError, UpstreamTimeout) as exc:
                error = exc
                self._failed(replica)
                if not self._retry(exc, tried, backend):
                    raise
            except EngineRejected as exc:
                error = exc
                if self._adapter_missing(exc, replica, tried, backend):
                    continue
                raise served_name_in(exc, backend) from None
            except BaseException as exc:
                error = exc
                raise
            finally:
                self.balancer.end_replica(replica)
                if span is not None:
                    Tracing.end(span, error)

    async def stream(
        self, backend: Backend, path: str, payload: bytes, request_id: str, prefix: str = ""
    ) -> AsyncGenerator[bytes, None]:
        """The answer's chunks as they arrive; the first `anext` connects (with retries).

        Errors before the first chunk are plain gateway errors; later ones (a drop, the idle
        timeout) are raised from the iteration, when the client already has bytes.
        """
        tried: list[str] = []
        while True:
            replica = self._pick(backend, tried, prefix)
            self.balancer.begin_replica(replica)
            span, headers = self._attempt(backend, replica, tried, request_id)
            error: BaseException | None = None
            try:
                try:
                    with upstream_errors(replica):
                        resp, first = await self._open(replica + path, payload, headers)
                except (UpstreamError, UpstreamTimeout) as exc:
                    error = exc
                    self._failed(replica)
                    if self._retry(exc, tried, backend):
                        continue
                    raise
                except EngineRejected as exc:
                    error = exc
                    if self._adapter_missing(exc, replica, tried, backend):
                        continue
                    raise served_name_in(exc, backend) from None
                async for chunk in self._relay(replica, resp, first):
                    yield chunk
                return
            except BaseException as exc:
                error = error or exc
                raise
            finally:
                self.balancer.end_replica(replica)
                if span is not None:
                    Tracing.end(span, error)

    # ------------------------------------------------------------------ internals

    def _pick(self, backend: Backend, tried: list[str], prefix: str) -> str:
        replica = self.balancer.pick(
            backend.replicas,
            tried,
            prefix=prefix,
            policy=backend.routing,
            affinity=affinity(backend),
        )
        if replica is None:
            raise NoReadyReplica(
                f"model {backend.model!r} has no ready replica",
                retry_after_s=self.settings.retry_after_s,
            )
        tried.append(replica)
        return replica

    def _adapter_missing(
        self, exc: EngineRejected, replica: str, tried: list[str], backend: Backend
    ) -> bool:
        """A replica answered vLLM's 404 for the adapter (it restarted, or unloaded it): mark
        it, and True when another replica may take the request (nothing was generated); 503
        `adapter_loading` when none is left."""
        adapter = backend.adapter
        if adapter is None or exc.status != 404 or "does not exist" not in exc.message:
            return False
        if self.adapters is not None:
            self.adapters.missing(replica, adapter.name)
        if len(tried) < min(MAX_ATTEMPTS, len(backend.replicas)):
            return True
        raise AdapterLoading(
            f"adapter {backend.model!r} is not loaded on any ready replica yet",
            retry_after_s=self.settings.retry_after_s,
        ) from None

    @staticmethod
    def _retry(exc: Exception, tried: list[str], backend: Backend) -> bool:
        """Whether to try another replica: a retryable failure, and replicas left to try."""
        retryable = isinstance(exc, UpstreamError) and exc.retryable
        return retryable and len(tried) < min(MAX_ATTEMPTS, len(backend.replicas))

    def _failed(self, replica: str) -> None:
        self.balancer.eject(replica)
        self.metrics.upstream_failures.labels(replica).inc()

    def _attempt(
        self,
        backend: Backend,
        replica: str,
        tried: list[str],
        request_id: str,
        content_type: str = "application/json",
    ) -> tuple[Span | None, dict[str, str]]:
        """The headers of one attempt, and its span when tracing (its `traceparent` then goes
        to the engine, and the request's span learns the replica and the retries so far)."""
        headers = {"Content-Type": content_type, "X-Request-ID": request_id}
        if self.tracing is None:
            return None, headers
        retries = len(tried) - 1
        Tracing.annotate(
            **{
                "relais.engine": backend.engine,
                "relais.replica": replica,
                "relais.retries": retries,
            }
        )
        span = self.tracing.start("relais.upstream", **{"relais.replica": replica})
        span.set_attribute("relais.attempt", retries + 1)
        return span, {**headers, **Tracing.headers(span)}

    async def _exchange(
        self, method: str, url: str, payload: Payload, headers: dict[str, str]
    ) -> Reply:
        data = _slices(payload) if isinstance(payload, list) else payload
        resp = await self.session.request(method, url, data=data, headers=headers)
        try:
            if resp.status != 200:
                raise from_engine_status(resp.status, await resp.content.read(ERROR_BODY_LIMIT))
            body = await read_bounded(resp, self.settings.max_upstream_body_bytes)
        except BaseException:
            resp.close()  # never hand a half-read connection back to the pool
            raise
        resp.release()
        return Reply(resp.headers.get("Content-Type", "application/json"), body)

    async def _open(
        self, url: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """The response and its first data, both within the first-byte timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.first_byte_timeout_s
        async with asyncio.timeout_at(deadline):
            resp = await self.session.post(url, data=payload, headers=headers)
        try:
            if resp.status != 200:
                async with asyncio.timeout_at(deadline):
                    body = await resp.content.read(ERROR_BODY_LIMIT)
                raise from_engine_status(resp.status, body)
            first = await read_upstream(resp.content, deadline - loop.time())
            if not first:
                raise UpstreamError("engine closed the stream before any data", retryable=True)
        except BaseException:
            resp.close()
            raise
        return resp, first

    async def _relay(
        self, replica: str, resp: aiohttp.ClientResponse, first: bytes
    ) -> AsyncGenerator[bytes, None]:
        """The first chunk, then the rest within the idle timeout; a failure ejects the replica.

        The hot loop of every stream: what arrived is taken at once; only an actual wait for
        the network lets the sender flush and arms the idle watch (one timer per idle period,
        not one per chunk).
        """
        reader = resp.content
        watch = IdleWatch(self.settings.stream_idle_timeout_s)
        try:
            yield first
            with upstream_errors(replica):
                while True:
                    data = reader.read_nowait()
                    if not data:
                        if reader.at_eof():
                            break
                        flush = before_network_wait.get()
                        if flush is not None:
                            await flush()
                        data = await watch.wait(reader)
                        if not data:
                            break
                    yield data
        except (UpstreamError, UpstreamTimeout):
            self._failed(replica)
            resp.close()
            raise
        except BaseException:
            resp.close()  # the client left, or shutdown: never pool a half-read connection
            raise
        finally:
            watch.close()
        self.balancer.restore(replica)
        resp.release()


class IdleWatch:
    """Bounds each wait for upstream data by `idle_s`, with one timer re-armed only when it fires.

    `asyncio.timeout` around every read costs a timer per chunk; this arms one timer, and when it
    fires checks whether the current wait has really lasted `idle_s` (then cancels the waiting
    task, turned into a TimeoutError here) or pushes itself to the current wait's deadline.
    """

    __slots__ = ("_deadline", "_fired", "_handle", "_idle_s", "_loop", "_task")

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    async def wait(self, reader: aiohttp.StreamReader) -> bytes:
        self._deadline = self._loop.time() + self._idle_s
        if self._handle is None:
            self._handle = self._loop.call_at(self._deadline, self._check)
        try:
            return await reader.readany()
        except asyncio.CancelledError:
            if self._fired and self._task is not None:
                self._fired = False
                self._task.uncancel()
                raise TimeoutError from None
            raise
        finally:
            self._deadline = None

    def _check(self) -> None:
        self._handle = None
        if self._deadline is None:
            return  # not waiting now: the next wait arms the timer again
        if self._loop.time() >= self._deadline and self._task is not None:
            self._fired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(self._deadline, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


before_network_wait: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "before_network_wait", default=None
)
"""Set by a stream's sender: called before the upstream read waits for the network.

Chunks decoded from one network read are then sent to the client in one write, and nothing is
held back while the gateway waits for more: chunks stay unbuffered, writes stay few.
"""


def affinity(backend: Backend) -> Affinity | None:
    """What adapter-affine choice needs for a request to an adapter view (None: not one)."""
    if backend.adapter is None:
        return None
    names = tuple(a.name for a in backend.adapters) or (backend.adapter.name,)
    return Affinity(backend.adapter.name, names, backend.pool or backend.replicas)


def served_name_in(error: EngineRejected, backend: Backend) -> EngineRejected:
    """The engine's refusal, naming the model as the client did (not by the engine's name)."""
    if backend.upstream_model != backend.model:
        error.message = error.message.replace(backend.upstream_model, backend.model)
    return error


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """A whole answer of at most `limit` bytes (502 beyond: an engine must not exhaust memory)."""
    length = resp.content_length
    if length is not None and length > limit:
        raise UpstreamTooLarge(f"the engine's answer of {length} bytes is over the {limit} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise UpstreamTooLarge(f"the engine's answer is over the {limit} bytes limit")
        chunks.append(chunk)
    return b"".join(chunks)


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
