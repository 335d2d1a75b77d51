"""Per-model admission: at most `maxConcurrentRequests` in flight, the rest wait in FIFO order.

A request over the limit waits for a slot instead of failing, bounded by the number of waiting
requests (`max_waiting`, shared with requests waiting for a replica to start) and by
`queue_timeout_s`; past either bound it gets 429 with Retry-After. A released slot goes straight
to the oldest waiter, so a newcomer can never overtake the queue and the limit holds exactly.
A waiter whose client leaves is simply removed (its cancellation propagates here).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from relais_gateway.errors import RateLimited


class Admission:
    """Slots and FIFO queues per model; `waiting` counts every waiting request, for metrics."""

    def __init__(
        self,
        max_waiting: int,
        queue_timeout_s: float,
        retry_after_s: int,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        self.max_waiting = max_waiting
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.active: dict[str, int] = {}
        self.waiting: dict[str, int] = {}
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self.on_wait = on_wait

    def try_wait(self, model: str) -> bool:
        """Count one more waiter for `model` if the bound allows (then call `done_waiting`)."""
        if self.waiting.get(model, 0) >= self.max_waiting:
            return False
        self.waiting[model] = self.waiting.get(model, 0) + 1
        return True

    def done_waiting(self, model: str) -> None:
        self.waiting[model] -= 1

    async def acquire(self, model: str, limit: int | None) -> None:
        """Take a slot, waiting in line when `limit` slots are in use (429 past the bounds)."""
        queue = self._queues.get(model)
        active = self.active.get(model, 0)
        if limit is None or (active < limit and not queue):
            self.active[model] = active + 1
            return
        if not self.try_wait(model):
            raise self._full(model, limit, "the queue is full")
        loop = asyncio.get_running_loop()
        started = loop.time()
        future: asyncio.Future[None] = loop.create_future()
        queue = self._queues.setdefault(model, collections.deque())
        queue.append(future)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await future
        except TimeoutError:
            raise self._full(model, limit, f"no slot within {self.queue_timeout_s:g} s") from None
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(model)  # handed a slot just as the client left: pass it on
            raise
        finally:
            self.done_waiting(model)
            if not future.done():
                future.cancel()
            if future in queue:
                queue.remove(future)
            if self.on_wait is not None:
                self.on_wait(model, loop.time() - started)

    def release(self, model: str) -> None:
        """Give the slot to the oldest live waiter, or free it."""
        queue = self._queues.get(model)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.active[model] -= 1

    def _full(self, model: str, limit: int, why: str) -> RateLimited:
        return RateLimited(
            f"model {model!r} is at its limit of {limit} concurrent requests and {why}",
            retry_after_s=self.retry_after_s,
            code="concurrency_limit_exceeded",
        )
