"""The dialect-independent request service the routes call: admit, generate, collect, check.

`admit` applies the model, key and limit checks; `first_event`/`collect` run the generation and
cancel it when the client disconnects; `check_structured` validates a final JSON answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonschema
import orjson
from starlette.types import Message, Receive

from relais_gateway.auth import Authenticator, Caller
from relais_gateway.balancer import Balancer
from relais_gateway.canonical import Event, Finish, GenerationRequest
from relais_gateway.errors import (
    ClientClosedRequest,
    InvalidModelOutput,
    InvalidRequest,
    ModelNotFound,
    NoReadyReplica,
)
from relais_gateway.metrics import Metrics
from relais_gateway.registry import Backend, BackendSource
from relais_gateway.router import Router
from relais_gateway.settings import Settings

T = TypeVar("T")


@dataclass(slots=True)
class Answer:
    """A whole (non-streamed) generation."""

    text: str
    finish: Finish


class Gateway:
    """Everything a route needs, built once per app in the lifespan."""

    def __init__(
        self,
        settings: Settings,
        source: BackendSource,
        authenticator: Authenticator,
        balancer: Balancer,
        metrics: Metrics,
        router: Router,
    ) -> None:
        self.settings = settings
        self.source = source
        self.authenticator = authenticator
        self.balancer = balancer
        self.metrics = metrics
        self.router = router
        self.draining = False

    def visible_backends(self, caller: Caller) -> list[Backend]:
        """The backends `caller` may use (for /v1/models and /api/tags)."""
        return [b for b in self.source.backends() if caller.allows(b.model)]

    def admit(self, caller: Caller, model: str, max_tokens: int | None) -> Backend:
        """The backend for `model` after every pre-flight check (404, 403, 429, 400, 503)."""
        backend = self.source.resolve(model)
        if backend is None:
            raise ModelNotFound(f"model {model!r} not found", param="model")
        self.authenticator.authorize(caller, model)
        limit = backend.max_tokens
        if limit is not None and max_tokens is not None and max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens {max_tokens} exceeds the limit of {limit} for model {model!r}",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        if not backend.replicas:
            raise NoReadyReplica(
                f"model {model!r} has no ready replica", retry_after_s=self.settings.retry_after_s
            )
        return backend

    def events(
        self, backend: Backend, req: GenerationRequest, request_id: str, started: float
    ) -> AsyncGenerator[Event, None]:
        """The generation's events (close the iterator when done)."""
        if req.max_tokens is None:
            req.max_tokens = backend.max_tokens  # bound every generation by the deployment
        return self.router.generate(backend, req, request_id, started)

    async def first_event(self, events: AsyncGenerator[Event, None], receive: Receive) -> Event:
        """The first event; errors before it become plain HTTP errors (the stream has not begun)."""
        return await cancel_on_disconnect(receive, anext(events))

    async def collect(self, events: AsyncGenerator[Event, None], receive: Receive) -> Answer:
        """The whole answer of a non-streamed generation."""
        return await cancel_on_disconnect(receive, _collect(events))


async def _collect(events: AsyncGenerator[Event, None]) -> Answer:
    # Runs the generator to its end (rather than closing it at the `Finish`), so the router's
    # success path runs and no GeneratorExit is thrown through its frames.
    parts: list[str] = []
    finish = Finish()
    async for event in events:
        if isinstance(event, Finish):
            finish = event
        else:
            parts.append(event)
    return Answer("".join(parts), finish)


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


def check_json_schema(schema: dict[str, Any], param: str) -> None:
    """400 when a client's JSON schema is itself invalid."""
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
