"""Per-model admission: at most `maxConcurrentRequests` in flight, the rest wait in FIFO order.

A request over the limit waits for a slot instead of failing, bounded by the number of waiting
requests (`max_waiting`, shared with requests waiting for a replica to start) and by
`queue_timeout_s`; past either bound it gets 429 with Retry-After. A released slot goes straight
to the oldest waiter, so a newcomer can never overtake the queue and the limit holds exactly.
A waiter whose client leaves is simply removed (its cancellation propagates here).

A request takes as many slots as the sequences it asks the engine for (`n`, `best_of`, prompts;
at most the whole limit), so one request with n=8 cannot take what eight requests would be
refused.
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
        self._queues: dict[str, collections.deque[tuple[asyncio.Future[None], int]]] = {}
        self._limits: dict[str, int] = {}
        self.on_wait = on_wait

    def try_wait(self, model: str) -> bool:
        """Count one more waiter for `model` if the bound allows (then call `done_waiting`)."""
        if self.waiting.get(model, 0) >= self.max_waiting:
            return False
        self.waiting[model] = self.waiting.get(model, 0) + 1
        return True

    def done_waiting(self, model: str) -> None:
        self.waiting[model] -= 1

    async def acquire(self, model: str, limit: int | None, weight: int = 1) -> int:
        """Take `weight` slots (at most `limit`), waiting in line when they are in use (429 past
        the bounds); the slots taken, to give back with `release`."""
        queue = self._queues.get(model)
        active = self.active.get(model, 0)
        if limit is None:
            self.active[model] = active + 1
            return 1
        weight = min(weight, limit)
        self._limits[model] = limit
        if active + weight <= limit and not queue:
            self.active[model] = active + weight
            return weight
        if not self.try_wait(model):
            raise self._full(model, limit, "the queue is full")
        loop = asyncio.get_running_loop()
        started = loop.time()
        future: asyncio.Future[None] = loop.create_future()
        queue = self._queues.setdefault(model, collections.deque())
        entry = (future, weight)
        queue.append(entry)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await future
        except TimeoutError:
            raise self._full(model, limit, f"no slot within {self.queue_timeout_s:g} s") from None
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(model, weight)  # handed slots just as the client left: pass them on
            raise
        finally:
            self.done_waiting(model)
            if not future.done():
                future.cancel()
            if entry in queue:
                queue.remove(entry)
                self._admit_waiters(model)  # a heavy head that left may unblock lighter ones
            if self.on_wait is not None:
                self.on_wait(model, loop.time() - started)
        return weight

    def release(self, model: str, weight: int = 1) -> None:
        """Free `weight` slots and hand them to the oldest live waiters that fit, in order."""
        self.active[model] -= weight
        self._admit_waiters(model)

    def _admit_waiters(self, model: str) -> None:
        queue = self._queues.get(model)
        limit = self._limits.get(model)
        while queue and limit is not None:
            future, weight = queue[0]
            if future.done():
                queue.popleft()
                continue
            if self.active[model] + weight > limit:
                return  # strict FIFO: nobody overtakes the head
            queue.popleft()
            self.active[model] += weight
            future.set_result(None)

    def _full(self, model: str, limit: int, why: str) -> RateLimited:
        return RateLimited(
            f"model {model!r} is at its limit of {limit} concurrent requests and {why}",
            retry_after_s=self.retry_after_s,
            code="concurrency_limit_exceeded",
        )
