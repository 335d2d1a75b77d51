"""The dialect-independent request service the routes call: admit, wait, forward, check.

`admit` applies the model, key and limit checks; `whole` and `open_stream` take a concurrency
slot (waiting in line when the model is at its limit), send the body to a replica and hand back
the engine's bytes; a client that disconnects cancels its request wherever it is.
`check_structured` validates a final JSON answer against the schema the client asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import jsonschema
import orjson
from starlette.types import Message, Receive

from relais_gateway.edge.metrics import Metrics
from relais_gateway.edge.tracing import Tracing
from relais_gateway.errors import (
    AdapterLoading,
    ClientClosedRequest,
    InvalidModelOutput,
    InvalidRequest,
    ModelNotFound,
    NoReadyReplica,
    NotSupported,
)
from relais_gateway.forward.upstream import Payload, Reply, Upstream
from relais_gateway.policy.admission import Admission
from relais_gateway.policy.auth import Authenticator, Caller
from relais_gateway.routing.adapters import AdapterTracker
from relais_gateway.routing.balancer import Balancer
from relais_gateway.routing.engines import ROUTES
from relais_gateway.routing.registry import Backend, BackendSource, adapter_view
from relais_gateway.settings import Settings

T = TypeVar("T")
log = logging.getLogger("relais_gateway.forward.service")
Json = dict[str, Any]
FAILED = frozenset({"Failed", "Conflict"})
"""Adapter states (status.adapters) answered at once with their message when no replica holds
the adapter: waiting would not help."""
ADAPTER_RECHECK_S = 0.5


class Gateway:
    """Everything a route needs, built once per app in the lifespan."""

    def __init__(
        self,
        settings: Settings,
        source: BackendSource,
        authenticator: Authenticator,
        balancer: Balancer,
        metrics: Metrics,
        upstream: Upstream,
        admission: Admission,
        tracing: Tracing | None = None,
        adapters: AdapterTracker | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.authenticator = authenticator
        self.balancer = balancer
        self.metrics = metrics
        self.upstream = upstream
        self.admission = admission
        self.tracing = tracing
        self.adapters = adapters
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    def visible_backends(self, caller: Caller) -> list[Backend]:
        """The models `caller` may use (for /v1/models and /api/tags): each base, then its
        adapters (adapter views named by the adapter's `name`, `parent` set)."""
        visible: list[Backend] = []
        for base in self.source.backends():
            if caller.allows(base.model):
                visible.append(base)
            for adapter in base.adapters:
                if caller.allows(adapter.name):
                    visible.append(adapter_view(base, adapter, adapter.name))
        return visible

    def admit(self, caller: Caller, model: str) -> Backend:
        """The backend for `model` after the pre-flight checks (404, 429).

        A model the key may not use answers exactly as an unknown one (as OpenAI's API does), so
        a key cannot find out which models exist beyond its grant. An adapter is allowed by its
        own name (so its alias `<served>_<name>` too), never by its base's.
        """
        backend = self.source.resolve(model)
        if backend is None or not caller.allows(backend.label):
            raise ModelNotFound(f"model {model!r} not found", param="model")
        self.authenticator.limit_rate(caller)
        return backend

    @staticmethod
    def require(backend: Backend, path: str) -> None:
        """400 when the model does not serve `path`'s task (an embedding model asked for chat),
        501 when its engine does not serve `path` (TGI has no embeddings)."""
        route = ROUTES.get(path)
        mismatch = route is not None and route.task not in (None, backend.task)
        if mismatch and backend.task is not None:
            serves = "embeddings" if backend.task == "embed" else "text generation"
            raise InvalidRequest(
                f"model {backend.model!r} serves {serves} only; {path} is not available for it",
                param="model",
                code="unsupported_for_model",
            )
        if path not in backend.kind.routes:
            raise NotSupported(
                f"model {backend.model!r} is served by {backend.engine}, which does not support"
                f" {path}",
            )

    async def whole(
        self,
        backend: Backend,
        path: str,
        body: Json,
        receive: Receive,
        rid: str,
        started: float,
        prefix: str = "",
        weight: int = 1,
    ) -> Reply:
        """Forward a non-streamed request taking `weight` slots; the engine's whole 200 answer."""
        payload = encode(body)
        return await cancel_on_disconnect(
            receive, self._whole(backend, path, payload, rid, started, prefix, weight)
        )

    async def upload(
        self,
        backend: Backend,
        path: str,
        parts: list[memoryview],
        content_type: str,
        receive: Receive,
        rid: str,
        started: float,
    ) -> Reply:
        """Forward an upload (a multipart body, as slices of the client's); the whole answer."""
        work = self._whole(backend, path, parts, rid, started, "", 1, content_type)
        return await cancel_on_disconnect(receive, work)

    async def _whole(
        self,
        backend: Backend,
        path: str,
        payload: Payload,
        rid: str,
        started: float,
        prefix: str,
        weight: int,
        content_type: str = "application/json",
    ) -> Reply:
        backend, slots = await self._turn(backend, weight)
        try:
            reply = await self.upstream.whole(
                backend, path, payload, rid, prefix, content_type=content_type
            )
        finally:
            self._leave(backend, slots)
        self.metrics.observe_ttft(backend.label, time.perf_counter() - started)
        return reply

    async def lookup(
        self, backend: Backend, path: str, body: Json | None, rid: str, method: str = "POST"
    ) -> Reply:
        """A metadata call (Ollama's /api/show, retrieving a stored response): no concurrency
        slot, no generation metrics."""
        payload = encode(body) if body is not None else None
        return await self.upstream.whole(backend, path, payload, rid, method=method)

    async def open_stream(
        self,
        backend: Backend,
        path: str,
        body: Json,
        receive: Receive,
        rid: str,
        started: float,
        prefix: str = "",
        weight: int = 1,
    ) -> tuple[bytes, AsyncGenerator[bytes, None]]:
        """Start a streamed request taking `weight` slots: its first chunk (errors before it are
        plain HTTP errors) and the generator of the rest (the caller closes it)."""
        chunks = self._stream(backend, path, encode(body), rid, prefix, weight)
        try:
            first = await cancel_on_disconnect(receive, anext(chunks))
        except BaseException:
            await chunks.aclose()
            raise
        self.metrics.observe_ttft(backend.label, time.perf_counter() - started)
        return first, chunks

    async def _stream(
        self, backend: Backend, path: str, payload: bytes, rid: str, prefix: str, weight: int
    ) -> AsyncGenerator[bytes, None]:
        backend, slots = await self._turn(backend, weight)
        try:
            async for chunk in self.upstream.stream(backend, path, payload, rid, prefix):
                yield chunk
        finally:
            self._leave(backend, slots)

    async def ready(self, backend: Backend) -> Backend:
        """`backend` with a ready replica: at once, or after a cold start (autoscaled models);
        for an adapter, narrowed to the replicas that hold it (`_adapter_ready`)."""
        if not backend.replicas:
            if not backend.autoscaled:
                raise NoReadyReplica(
                    f"model {backend.model!r} has no ready replica",
                    retry_after_s=self.settings.retry_after_s,
                )
            backend = await self._cold_start(backend)
        if backend.adapter is not None and self.adapters is not None:
            backend = await self._adapter_ready(backend, self.adapters)
        return backend

    async def _adapter_ready(self, backend: Backend, tracker: AdapterTracker) -> Backend:
        """`backend` with `replicas` narrowed to those holding its adapter (`pool`: all).

        With none, the request waits (bounded by `adapter_load_wait_s`, counted as waiting) for
        one to load it, then gets 503 `adapter_loading` with Retry-After; an adapter the
        operator reports Failed gets that at once, with the reason. An adapter removed
        meanwhile is a 404, as any unknown model.
        """
        holders = tracker.holders(backend)
        if holders:
            return replace(backend, replicas=holders, pool=backend.replicas)
        model, settings = backend.model, self.settings
        self._check_failed(backend)
        if not self.admission.try_wait(backend.base_model):
            raise AdapterLoading(
                f"adapter {model!r} is loading and {settings.max_waiting_requests} requests"
                " already wait for its model",
                retry_after_s=settings.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(settings.adapter_load_wait_s):
                while True:
                    tracker.poke()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(ADAPTER_RECHECK_S):
                            await tracker.wait()
                    current = self.source.resolve(model)
                    if current is None or current.adapter is None:
                        raise ModelNotFound(f"model {model!r} not found", param="model")
                    if holders := tracker.holders(current):
                        return replace(current, replicas=holders, pool=current.replicas)
                    self._check_failed(current)
        except TimeoutError:
            raise AdapterLoading(
                f"adapter {model!r} is not loaded on any ready replica yet (waited"
                f" {settings.adapter_load_wait_s:g} s)",
                retry_after_s=settings.retry_after_s,
            ) from None
        finally:
            self.admission.done_waiting(backend.base_model)
            self.metrics.observe_wait(backend.base_model, loop.time() - began)

    def _check_failed(self, backend: Backend) -> None:
        adapter = backend.adapter
        if adapter is not None and adapter.state in FAILED:
            why = f": {adapter.message}" if adapter.message else ""
            raise AdapterLoading(
                f"adapter {backend.model!r} is {adapter.state}{why}",
                retry_after_s=self.settings.retry_after_s,
            )

    async def _cold_start(self, backend: Backend) -> Backend:
        """Wait for the first ready replica, asking for one when the model is scaled to zero.

        The wait counts as a waiting request (the autoscaler's demand signal) and is bounded by
        the waiting limit and the cold-start timeout: past either, 503 with Retry-After.
        """
        model, settings = backend.model, self.settings
        base = backend.base_model
        if not self.admission.try_wait(base):
            raise NoReadyReplica(
                f"model {model!r} is starting and {settings.max_waiting_requests} requests"
                " already wait for it",
                retry_after_s=settings.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            if backend.desired_replicas == 0:
                self._ask_for_replica(backend)
            async with asyncio.timeout(settings.cold_start_timeout_s):
                ready = await self.source.wait_ready(model)
        except TimeoutError:
            raise NoReadyReplica(
                f"no replica of model {model!r} became ready within"
                f" {settings.cold_start_timeout_s:g} s",
                retry_after_s=settings.retry_after_s,
            ) from None
        finally:
            self.admission.done_waiting(base)
            self.metrics.observe_wait(base, loop.time() - began)
        if ready is None:
            raise ModelNotFound(f"model {model!r} not found", param="model")
        return ready

    def _ask_for_replica(self, backend: Backend) -> None:
        """Scale up in the background: the request waits for readiness, not for the API."""

        async def ask() -> None:
            try:
                if await self.source.request_replica(backend):
                    self.metrics.cold_starts.labels(backend.base_model).inc()
            except Exception:  # the waiting request times out with a 503 on its own
                log.exception("asking for a replica failed", extra={"model": backend.model})

        task = asyncio.create_task(ask())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _turn(self, backend: Backend, weight: int) -> tuple[Backend, int]:
        """Wait for a ready replica, then for `weight` slots: the backend and the slots taken.
        Traced as the request's `relais.wait` span."""
        if self.tracing is None:
            backend = await self.ready(backend)
            return backend, await self._enter(backend, weight)
        span = self.tracing.start("relais.wait", **{"relais.model": backend.model})
        began, error = time.perf_counter(), None
        try:
            backend = await self.ready(backend)
            return backend, await self._enter(backend, weight)
        except BaseException as exc:
            error = exc
            raise
        finally:
            waited = round(time.perf_counter() - began, 6)
            span.set_attribute("relais.wait_seconds", waited)
            Tracing.annotate(**{"relais.wait_seconds": waited})
            Tracing.end(span, error)

    async def _enter(self, backend: Backend, weight: int) -> int:
        """Take slots of the deployment (an adapter's requests share its base's)."""
        slots = await self.admission.acquire(backend.base_model, backend.max_concurrent, weight)
        self.balancer.begin_model(backend.base_model)
        return slots

    def _leave(self, backend: Backend, slots: int) -> None:
        self.balancer.end_model(backend.base_model)
        self.admission.release(backend.base_model, slots)


MAX_JSON_DEPTH = 254
"""The deepest nesting orjson re-encodes (it refuses 255 levels)."""


def encode(body: Json) -> bytes:
    """The body for the engine; 400 when it nests deeper than JSON can be re-encoded (255)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise InvalidRequest("the JSON body nests too deeply", code="json_too_deep") from None


async def cancel_on_disconnect(receive: Receive, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` in this task, cancelling it if the client disconnects meanwhile.

    Runs in the current task (not a new one) so an async generator's first step happens now.
    The request body must already be read: `receive` then only reports the disconnect.
    """
    task = asyncio.current_task()
    assert task is not None
    watch = _DisconnectWatch(receive, task)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if watch.disconnected:
            task.uncancel()
            raise ClientClosedRequest("client disconnected") from None
        raise
    finally:
        watch.close()


class _DisconnectWatch:
    """Cancels `task` when `receive` reports the client gone.

    A done-callback on one pending `receive()` rather than a watcher coroutine: closing it needs
    no await, so a finished request does not pay a loop round trip to tear the watcher down.
    """

    __slots__ = ("_future", "_receive", "_task", "disconnected")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self.disconnected = False
        self._future = self._arm()

    def _arm(self) -> asyncio.Future[Message]:
        future = asyncio.ensure_future(self._receive())
        future.add_done_callback(self._received)
        return future

    def _received(self, future: asyncio.Future[Message]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if future.result()["type"] == "http.disconnect":
            self.disconnected = True
            self._task.cancel()
        else:
            self._future = self._arm()  # a stray body message: keep listening

    def close(self) -> None:
        self._future.remove_done_callback(self._received)
        self._future.cancel()


def check_json_schema(schema: Any, param: str) -> None:
    """400 when a client's JSON schema is itself invalid."""
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"invalid JSON schema: {exc.message}", param=param) from None


def check_structured(text: str, schema: dict[str, Any] | None) -> None:
    """For a JSON-constrained answer: it parses, and matches `schema` when one was given."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidModelOutput("the model's answer is not valid JSON") from None
    if schema is None:
        return
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidModelOutput(
            f"the model's answer does not match the JSON schema at {where}: {error.message}"
        )
