"""The simulated engine's pure core (cache, slots, costs) and its OpenAI wire format.

Simulated time only: the engine is given a fake `sleep` that records what it was asked to wait.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from benchmarks.sim_engine import (
    Costs,
    PrefixCache,
    SimEngine,
    Slots,
    chunk_sizes,
    make_app,
    parse_args,
    prompt_tokens,
    reply_words,
)


def tokens(count: int, start: int = 0) -> list[str]:
    return [f"t{i}" for i in range(start, start + count)]


def test_prompt_tokens_are_role_tagged_words() -> None:
    messages = [{"role": "system", "content": "be  brief"}, {"role": "user", "content": "hi"}]
    assert prompt_tokens(messages) == ["system:", "be", "brief", "user:", "hi", "assistant:"]
    for bad in (None, [], [{"role": "user"}], ["text"], [{"content": 3}]):
        with pytest.raises(ValueError, match="message"):
            prompt_tokens(bad)


def test_cache_hits_whole_blocks_of_a_shared_prefix_only() -> None:
    cache = PrefixCache(capacity_blocks=100, block_tokens=4)
    assert cache.lookup(tokens(10)) == 0
    cache.insert(tokens(10))  # blocks t0-3, t4-7; t8-9 is partial and not cached
    assert len(cache) == 2
    assert cache.lookup(tokens(10)) == 8
    assert cache.lookup(tokens(6) + ["other"] * 6) == 4  # diverges inside the second block
    assert cache.lookup(tokens(4, start=4)) == 0  # same block content, other position: a miss


def test_cache_evicts_least_recently_used_blocks() -> None:
    cache = PrefixCache(capacity_blocks=4, block_tokens=2)
    old, new = tokens(4), tokens(4, start=100)
    cache.insert(old)
    cache.insert(new)
    assert cache.lookup(old) == 4  # both fit; `old` is now the most recent
    cache.insert(tokens(4, start=200))
    assert len(cache) == 4
    assert cache.lookup(new) == 0
    assert cache.lookup(old) == 4
    cache.clear()
    assert cache.lookup(old) == 0


async def test_slots_admit_in_arrival_order_and_count_the_queue() -> None:
    slots = Slots(1)
    order: list[int] = []

    async def job(n: int) -> None:
        await slots.acquire()
        order.append(n)
        await asyncio.sleep(0)
        slots.release()

    await slots.acquire()
    tasks = [asyncio.create_task(job(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert (slots.running, slots.queued, slots.full) == (1, 3, True)
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (slots.running, slots.queued, slots.full) == (0, 0, False)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.queued == 0
    slots.release()
    assert slots.running == 0


def test_chunks_send_the_first_token_alone() -> None:
    assert chunk_sizes(1, 8) == [1]
    assert chunk_sizes(18, 8) == [1, 8, 8, 1]
    assert chunk_sizes(17, 8) == [1, 8, 8]
    assert chunk_sizes(0, 8) == []


class Clock:
    """A fake sleep: records every wait, yields to the loop once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


async def run(engine: SimEngine, rid: str, prompt: list[str], max_tokens: int) -> list[int]:
    """The chunk sizes of one request, after checking the words are the request's reply."""
    chunks = [words async for _, words in engine.generate(rid, prompt, max_tokens)]
    assert [w for chunk in chunks for w in chunk] == reply_words(rid, max_tokens)
    return [len(chunk) for chunk in chunks]


async def test_prefill_costs_only_uncached_tokens() -> None:
    clock = Clock()
    costs = Costs(prefill_ms=1.0, decode_ms=10.0, block_tokens=16, chunk_tokens=4)
    engine = SimEngine(costs, clock.sleep)
    prompt = tokens(40)
    assert await run(engine, "a", prompt, 6) == [1, 4, 1]
    assert clock.waits == pytest.approx([0.040, 0.010, 0.040, 0.010])
    clock.waits.clear()
    await run(engine, "b", [*prompt, "more"], 1)  # 32 of 41 tokens are in the cache
    assert clock.waits == pytest.approx([0.009, 0.010])
    stats = engine.stats()
    assert (stats["hit_tokens"], stats["miss_tokens"], stats["generated_tokens"]) == (32, 49, 7)
    assert stats["request_ids"] == ["a", "b"]
    assert (stats["requests"], stats["max_running"], stats["max_queued"]) == (2, 1, 0)


async def test_the_next_turn_finds_the_reply_in_the_cache() -> None:
    engine = SimEngine(Costs(prefill_ms=1.0, decode_ms=0.0, block_tokens=8), Clock().sleep)
    await run(engine, "a", tokens(8), 8)
    following = [*tokens(8), *reply_words("a", 8), *tokens(8, start=50)]
    assert engine.cache.lookup(following) == 16
    assert reply_words("a", 2) != reply_words("b", 2)


async def test_a_fully_cached_prompt_still_prefills_its_last_token() -> None:
    clock = Clock()
    engine = SimEngine(Costs(prefill_ms=1.0, decode_ms=0.0, block_tokens=4), clock.sleep)
    await run(engine, "a", tokens(8), 1)
    await run(engine, "b", tokens(8), 1)
    assert clock.waits[2] == pytest.approx(0.001)
    assert engine.counters.hit_tokens == 7


async def test_requests_beyond_the_slots_queue_and_reset_clears_all() -> None:
    engine = SimEngine(Costs(slots=2), Clock().sleep)
    await asyncio.gather(*(run(engine, f"r{i}", tokens(20, i * 100), 3) for i in range(5)))
    stats = engine.stats()
    assert (stats["max_running"], stats["max_queued"], stats["running"]) == (2, 3, 0)
    assert sorted(stats["request_ids"]) == [f"r{i}" for i in range(5)]
    engine.reset()
    assert engine.stats()["requests"] == engine.stats()["cached_blocks"] == 0


def test_costs_and_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        Costs(slots=0)
    with pytest.raises(ValueError, match=">= 0"):
        Costs(prefill_ms=-1)
    costs, host, port = parse_args(["--port", "9", "--slots", "3", "--prefill-ms", "0.5"])
    assert (costs.slots, costs.prefill_ms, host, port) == (3, 0.5, "127.0.0.1", 9)
    with pytest.raises(SystemExit):
        parse_args(["--port", "9", "--cache-blocks", "0"])


async def client(costs: Costs) -> TestClient[web.Request, web.Application]:
    return TestClient(TestServer(make_app(SimEngine(costs))))


async def test_streamed_answer_is_openai_sse_and_logs_the_request_id() -> None:
    costs = Costs(prefill_ms=0.0, decode_ms=0.0, chunk_tokens=2)
    async with await client(costs) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 5}
        r = await http.post("/v1/chat/completions", json={**body, "stream": True},
                            headers={"X-Request-ID": "rid-1"})  # fmt: skip
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await r.text()).split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text.split() == reply_words("rid-1", 5)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        stats = await (await http.get("/stats")).json()
        assert stats["request_ids"] == ["rid-1"]
        assert stats["miss_tokens"] == 4  # user: a b assistant:


async def test_plain_answer_reports_usage_with_cached_tokens() -> None:
    costs = Costs(prefill_ms=0.0, decode_ms=0.0, block_tokens=2)
    async with await client(costs) as http:
        body = {"messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 3}
        first = await (await http.post("/v1/chat/completions", json=body)).json()
        second = await (await http.post("/v1/chat/completions", json=body)).json()
        assert first["object"] == "chat.completion"
        reply = " ".join(reply_words(first["id"], 3))
        assert first["choices"][0]["message"] == {"role": "assistant", "content": reply}
        assert first["usage"]["prompt_tokens"] == 6
        assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}  # all but one
        assert (await http.post("/reset")).status == 200
        assert (await (await http.get("/stats")).json())["requests"] == 0


async def test_bad_requests_get_a_clear_400() -> None:
    async with await client(Costs()) as http:
        for body in (b"not json", b"[]", b'{"messages": []}', b'{"messages": [{"content": "a"}],'
                     b' "max_tokens": 0}'):  # fmt: skip
            r = await http.post("/v1/chat/completions", data=body)
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
