"""A simulated LLM engine for the routing benchmark: prefix cache, prefill/decode costs, slots.

`benchmarks/routing.py` starts several of these behind the real gateway. Each speaks the OpenAI
chat-completions wire format (`POST /v1/chat/completions`, streamed SSE or plain JSON) and
models what makes prefix-aware routing pay on a real engine (vLLM's automatic prefix caching):

- tokens are the whitespace-separated words of the role-tagged messages, then `assistant:` (the
  generation prompt, as a chat template adds it), so a reply sent back in the next turn continues
  the cached sequence exactly;
- a block-wise prefix cache: full blocks of `block_tokens` tokens keyed by a hash chain (a block's
  key covers every token before it), an LRU of at most `cache_blocks` blocks;
- time to first token = queueing + uncached prompt tokens x `prefill_ms` + one decode step;
  each further token costs `decode_ms` (streamed in chunks of `chunk_tokens`, to spare the CPU);
  the prompt's blocks are cached after prefill, the prompt + reply's once the reply is complete;
- `slots` sequences run at once, the rest wait in a FIFO queue.

Time is simulated with `asyncio.sleep`, and running sequences do not slow each other down.
Unlike vLLM, blocks of running sequences may be evicted.
`GET /stats` returns the counters and the `X-Request-ID` of every request served;
`POST /reset` empties the cache and the counters. The pure core (cache, slots, engine) is
unit-tested in `tests/benchmarks/test_sim_engine.py`; `make_app` is the thin aiohttp edge.

    python benchmarks/sim_engine.py --port 9000 [--slots 4] [--cache-blocks 400] ...
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Costs:
    """The engine's shape: costs in milliseconds, sizes in tokens or blocks."""

    prefill_ms: float = 0.1
    """Per uncached prompt token."""
    decode_ms: float = 2.0
    """Per generated token."""
    slots: int = 4
    cache_blocks: int = 400
    block_tokens: int = 16
    chunk_tokens: int = 8

    def __post_init__(self) -> None:
        if self.prefill_ms < 0 or self.decode_ms < 0:
            raise ValueError("costs must be >= 0 ms")
        if min(self.slots, self.cache_blocks, self.block_tokens, self.chunk_tokens) < 1:
            raise ValueError("slots, cache_blocks, block_tokens and chunk_tokens must be >= 1")


def prompt_tokens(messages: Any) -> list[str]:
    """The "tokens" of a chat request: `role:` and the words of each message, then `assistant:`.

    Raises ValueError for anything that is not a list of messages with string content.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    tokens: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError("each message must be an object with string `content`")
        tokens.append(f"{message.get('role', 'user')}:")
        tokens += message["content"].split()
    return [*tokens, "assistant:"]


class PrefixCache:
    """Full blocks of tokens, keyed by a hash chain, evicted least recently used first."""

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self._blocks: collections.OrderedDict[int, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def _keys(self, tokens: list[str]) -> list[int]:
        """One key per full block; each depends on every token before the block's end."""
        keys, parent = [], 0
        size = self.block_tokens
        for start in range(0, len(tokens) - size + 1, size):
            parent = hash((parent, tuple(tokens[start : start + size])))
            keys.append(parent)
        return keys

    def lookup(self, tokens: list[str]) -> int:
        """How many leading tokens are cached (whole blocks); the hit blocks become recent."""
        hits = 0
        for key in self._keys(tokens):
            if key not in self._blocks:
                break
            self._blocks.move_to_end(key)
            hits += 1
        return hits * self.block_tokens

    def insert(self, tokens: list[str]) -> None:
        """Cache every full block of `tokens`, evicting the least recently used beyond capacity."""
        for key in self._keys(tokens):
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


class Slots:
    """`size` concurrent sequences; the others wait first come, first served."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        """Whether the next `acquire` waits."""
        return self.running >= self.size or bool(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.size and not self._waiters:
            self.running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: `running` already counts us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came just as we gave up: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1


@dataclass
class Counters:
    """What `/stats` reports; token counts are prompt tokens."""

    requests: int = 0
    hit_tokens: int = 0
    miss_tokens: int = 0
    generated_tokens: int = 0
    max_running: int = 0
    max_queued: int = 0
    request_ids: list[str] = field(default_factory=list)


Sleep = Callable[[float], Awaitable[None]]


class SimEngine:
    """The simulated engine: admission to a slot, cached prefill, chunked decode."""

    def __init__(self, costs: Costs, sleep: Sleep = asyncio.sleep) -> None:
        self.costs = costs
        self._sleep = sleep
        self.cache = PrefixCache(costs.cache_blocks, costs.block_tokens)
        self.slots = Slots(costs.slots)
        self.counters = Counters()

    def reset(self) -> None:
        self.cache.clear()
        self.counters = Counters()

    def stats(self) -> dict[str, Any]:
        return {
            **asdict(self.counters),
            "running": self.slots.running,
            "queued": self.slots.queued,
            "cached_blocks": len(self.cache),
        }

    async def generate(
        self, request_id: str, tokens: list[str], max_tokens: int
    ) -> AsyncGenerator[tuple[int, list[str]], None]:
        """Yield (cached prompt tokens, the reply's next words) per chunk; the first has 1 word."""
        counters = self.counters
        counters.requests += 1
        counters.request_ids.append(request_id)
        if self.slots.full:
            counters.max_queued = max(counters.max_queued, self.slots.queued + 1)
        await self.slots.acquire()
        try:
            counters.max_running = max(counters.max_running, self.slots.running)
            cached = max(0, min(self.cache.lookup(tokens), len(tokens) - 1))  # the last one runs
            counters.hit_tokens += cached
            counters.miss_tokens += len(tokens) - cached
            await self._sleep((len(tokens) - cached) * self.costs.prefill_ms / 1000)
            self.cache.insert(tokens)
            reply = reply_words(request_id, max_tokens)
            done = 0
            for size in chunk_sizes(max_tokens, self.costs.chunk_tokens):
                await self._sleep(size * self.costs.decode_ms / 1000)
                counters.generated_tokens += size
                yield cached, reply[done : done + size]
                done += size
            self.cache.insert(tokens + reply)
        finally:
            self.slots.release()


def reply_words(request_id: str, count: int) -> list[str]:
    """The words the engine "generates": distinct per request, so replies share no blocks."""
    tag = hashlib.blake2b(request_id.encode(), digest_size=3).hexdigest()
    return [f"{tag}.{i}" for i in range(count)]


def chunk_sizes(total: int, chunk: int) -> list[int]:
    """1, then `chunk` at a time: the first token streams as soon as it exists."""
    if total < 1:
        return []
    rest = total - 1
    return [1] + [chunk] * (rest // chunk) + ([rest % chunk] if rest % chunk else [])


# ---------------------------------------------------------------- the aiohttp edge


def _chunk(rid: str, model: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time())}
    body |= {"model": model, "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage(tokens: int, cached: int, generated: int) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens,
        "completion_tokens": generated,
        "total_tokens": tokens + generated,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _parse(body: Any) -> tuple[str, list[str], int, bool]:
    """(model, prompt tokens, max_tokens, stream) of a chat request; ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError("`max_tokens` must be a positive integer")
    return (
        str(body.get("model", "sim")),
        prompt_tokens(body.get("messages")),
        max_tokens,
        bool(body.get("stream")),
    )


async def _stream(
    request: web.Request, rid: str, model: str, chunks: AsyncIterator[tuple[int, list[str]]]
) -> web.StreamResponse:
    """Send the chunks as SSE `data:` lines: a role chunk, content chunks, a finish, [DONE]."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk(rid, model, {"role": "assistant"}))
    first = True
    async for _, words in chunks:
        text = " ".join(words) if first else "".join(f" {w}" for w in words)
        await response.write(_chunk(rid, model, {"content": text}))
        first = False
    await response.write(_chunk(rid, model, {}, "length") + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def make_app(engine: SimEngine) -> web.Application:
    """The HTTP edge: chat completions, /stats, /reset, /health."""

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            model, tokens, max_tokens, stream = _parse(await request.json())
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            error = {"message": str(exc), "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=400)
        rid = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        async with contextlib.aclosing(engine.generate(rid, tokens, max_tokens)) as chunks:
            if stream:
                return await _stream(request, rid, model, chunks)
            cached, reply = 0, []
            async for cached, words in chunks:  # noqa: B007  (`cached` is the same in every chunk)
                reply += words
            done = len(reply)
            message = {"role": "assistant", "content": " ".join(reply)}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            body = {"id": rid, "object": "chat.completion", "created": int(time.time())}
            body |= {
                "model": model,
                "choices": [choice],
                "usage": _usage(len(tokens), cached, done),
            }
            return web.json_response(body)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(engine.stats())

    async def reset(_: web.Request) -> web.Response:
        engine.reset()
        return web.json_response({"reset": True})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_get("/health", health)
    return app


def parse_args(argv: list[str] | None = None) -> tuple[Costs, str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    defaults = Costs()
    for name in ("prefill_ms", "decode_ms"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name)
        )
    for name in ("slots", "cache_blocks", "block_tokens", "chunk_tokens"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    args = parser.parse_args(argv)
    try:
        costs = Costs(
            args.prefill_ms,
            args.decode_ms,
            args.slots,
            args.cache_blocks,
            args.block_tokens,
            args.chunk_tokens,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return costs, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    costs, host, port = parse_args(argv)
    web.run_app(make_app(SimEngine(costs)), host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
