"""Which replicas hold which LoRA adapters: polled from vLLM, assumed for the other engines.

vLLM loads adapters at run time (the adapter agent beside each replica calls
`/v1/load_lora_adapter`), so a ready replica may not have an adapter yet, or may have lost it
in a restart. Every `interval_s` the tracker asks each ready replica of each vLLM deployment
with adapters for its `/v1/models` (loaded LoRAs are listed with `parent` set), a few at a time
over the gateway's one upstream session. A replica that does not answer keeps its last view for
`STALE_INTERVALS` intervals, then counts as holding nothing. A replica that answers a request
for an adapter with vLLM's 404 is marked as not holding it at once (`missing`), until its next
answer says otherwise. Ollama and TGI load adapters when the replica starts, and a static
engine's adapters are what it was started with: every ready replica holds every adapter.

The service asks `holders(backend)`; a request waiting for a first holder calls `poke` (the
next poll comes at once, at most every `MIN_GAP_S`) and `wait`s for a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from relais_gateway.routing.registry import Backend, BackendSource

log = logging.getLogger("relais_gateway.routing.adapters")

POLLED_ENGINES = frozenset({"vllm"})
"""Engines whose adapters come and go at run time (the others load theirs at start)."""
STALE_INTERVALS = 3
MIN_GAP_S = 0.1
CONCURRENT_POLLS = 16
POLL_TIMEOUT_S = 2.0
MAX_LISTING_BYTES = 4 * 1_048_576


@dataclass(frozen=True, slots=True)
class View:
    """The adapters one replica listed, and when it last answered."""

    names: frozenset[str]
    seen: float


def loaded_adapters(body: bytes) -> frozenset[str]:
    """The LoRA ids in a vLLM `/v1/models` answer: the models with a `parent`."""
    data = orjson.loads(body)
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ValueError("no `data` list in /v1/models")
    return frozenset(
        str(m["id"]) for m in models if isinstance(m, dict) and m.get("parent") and m.get("id")
    )


def polled(backend: Backend) -> bool:
    """Whether the replicas of `backend` must be asked which adapters they hold."""
    return backend.engine in POLLED_ENGINES and bool(backend.adapters or backend.adapter)


class AdapterTracker:
    """A view of the adapters loaded on each polled replica, kept current in the background."""

    def __init__(
        self,
        source: BackendSource,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self._clock = clock
        self._views: dict[str, View] = {}
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ what the service asks

    def holders(self, backend: Backend) -> tuple[str, ...]:
        """The ready replicas of an adapter view that hold its adapter (for a base: all)."""
        adapter = backend.adapter
        if adapter is None or not polled(backend):
            return backend.replicas
        fresh = self._clock() - self.interval_s * STALE_INTERVALS
        return tuple(
            replica
            for replica in backend.replicas
            if (view := self._views.get(replica)) is not None
            and view.seen >= fresh
            and adapter.name in view.names
        )

    def missing(self, replica: str, adapter: str) -> None:
        """`replica` answered that it has no `adapter` (vLLM's 404): not a holder for now."""
        view = self._views.get(replica)
        if view is not None and adapter in view.names:
            self._views[replica] = View(view.names - {adapter}, view.seen)
            where = {"replica": replica, "adapter": adapter}
            log.info("replica answered that it does not hold the adapter", extra=where)

    def poke(self) -> None:
        """Poll now (a request waits for an adapter to be loaded somewhere)."""
        self._poke.set()

    async def wait(self) -> None:
        """Return after the next poll that changed a view (callers bound the wait)."""
        await self._changed.wait()

    # ------------------------------------------------------------ polling

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Take a first view (so requests right after start find their adapters), then poll."""
        await self.poll(session)
        self._task = asyncio.create_task(self._poll_every_interval(session))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll_every_interval(self, session: aiohttp.ClientSession) -> None:
        while True:
            began = self._clock()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._poke.wait()
            self._poke.clear()
            await asyncio.sleep(max(0.0, MIN_GAP_S - (self._clock() - began)))
            try:
                await self.poll(session)
            except Exception:  # never let one bad round stop the tracking
                log.exception("polling the replicas' adapters failed")

    async def poll(self, session: aiohttp.ClientSession) -> None:
        """Ask every ready replica of every polled deployment for its loaded adapters."""
        replicas = sorted({r for b in self.source.backends() if polled(b) for r in b.replicas})
        limit = asyncio.Semaphore(CONCURRENT_POLLS)

        async def ask(replica: str) -> frozenset[str] | None:
            async with limit:
                return await self._listing(session, replica)

        answers = await asyncio.gather(*(ask(r) for r in replicas))
        now = self._clock()
        views = {r: v for r, v in self._views.items() if r in replicas}  # gone: forgotten
        changed = len(views) != len(self._views)
        for replica, names in zip(replicas, answers, strict=True):
            if names is None:
                continue  # keeps its last view until it goes stale
            before = views.get(replica)
            changed = changed or before is None or before.names != names
            views[replica] = View(names, now)
        self._views = views
        if changed:
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    async def _listing(self, session: aiohttp.ClientSession, replica: str) -> frozenset[str] | None:
        try:
            async with asyncio.timeout(POLL_TIMEOUT_S):
                async with session.get(replica + "/v1/models") as response:
                    if response.status != 200:
                        return None
                    body = b""
                    async for chunk in response.content.iter_any():
                        body += chunk
                        if len(body) > MAX_LISTING_BYTES:
                            raise ValueError("the model listing is too large")
                    return loaded_adapters(body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.debug("adapter listing failed", extra={"replica": replica, "error": repr(exc)})
            return None
