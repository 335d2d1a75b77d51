"""PrefixHash and LeastLoad replica choice, the prompt prefix, and the per-model queue (pure)."""

from __future__ import annotations

import asyncio
import collections

import pytest
from relais_api import Routing
from relais_gateway.errors import RateLimited
from relais_gateway.policy.admission import Admission
from relais_gateway.routing.balancer import Balancer
from relais_gateway.routing.prefix import chat_prefix, prompt_prefix

PREFIX = Routing(strategy="PrefixHash", prefix_char_length=100, load_factor=1.25)
REPLICAS = tuple(f"http://10.0.0.{i}:8000" for i in range(1, 5))


def test_prefix_of_a_conversation_is_the_same_every_turn() -> None:
    first = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    later = [*first, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]
    assert chat_prefix(first, 100) == chat_prefix(later, 100) == "system:You are terse.\nuser:Hi\n"
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]
    assert chat_prefix(parts, 100) == "user:a\n"
    assert chat_prefix(first, 5) == "syste"
    assert prompt_prefix(["abc", "d"], 2) == "ab"
    assert prompt_prefix(None, 2) == ""


def test_same_prefix_same_replica_in_every_gateway() -> None:
    one, two = Balancer(10), Balancer(10)
    for i in range(200):
        prefix = f"system:prompt {i}"
        assert one.pick(REPLICAS, prefix=prefix, policy=PREFIX) == two.pick(
            tuple(reversed(REPLICAS)), prefix=prefix, policy=PREFIX
        )


def test_prefixes_spread_and_only_a_leaving_replicas_share_moves() -> None:
    balancer = Balancer(10)
    before = {i: balancer.pick(REPLICAS, prefix=f"p{i}", policy=PREFIX) for i in range(2000)}
    shares = collections.Counter(before.values())
    assert min(shares.values()) > 2000 / len(REPLICAS) * 0.6  # roughly even
    gone = REPLICAS[0]
    after = {i: balancer.pick(REPLICAS[1:], prefix=f"p{i}", policy=PREFIX) for i in range(2000)}
    moved = [i for i in before if before[i] != after[i]]
    assert all(before[i] == gone for i in moved)  # nothing else moved
    back = {i: balancer.pick(REPLICAS, prefix=f"p{i}", policy=PREFIX) for i in range(2000)}
    assert back == before


def test_bounded_load_spills_a_hot_prefix_over() -> None:
    balancer = Balancer(10)
    picks = []
    for _ in range(40):  # 40 concurrent requests with one prefix, none finishing
        replica = balancer.pick(REPLICAS, prefix="hot", policy=PREFIX)
        assert replica is not None
        balancer.begin_replica(replica)
        picks.append(replica)
        loads = [balancer.inflight_by_replica.get(r, 0) for r in REPLICAS]
        mean = sum(loads) / len(REPLICAS)
        assert max(loads) <= PREFIX.load_factor * mean + 1
    assert len(set(picks)) == len(REPLICAS)
    assert balancer.decisions["PrefixHash", "true"] >= 10
    assert balancer.decisions["PrefixHash", "false"] >= 1


def test_prefix_hash_skips_excluded_and_ejected_replicas() -> None:
    balancer = Balancer(10)
    home = balancer.pick(REPLICAS, prefix="conv", policy=PREFIX)
    assert home is not None
    other = balancer.pick(REPLICAS, [home], prefix="conv", policy=PREFIX)  # a retry
    assert other not in (None, home)
    balancer.eject(home)
    assert balancer.pick(REPLICAS, prefix="conv", policy=PREFIX) == other
    assert balancer.pick(REPLICAS, prefix="", policy=PREFIX) in REPLICAS  # nothing to hash


async def test_admission_is_fifo_and_exact() -> None:
    admission = Admission(max_waiting=10, queue_timeout_s=5, retry_after_s=1)
    await admission.acquire("m", 1)
    order: list[int] = []

    async def waiter(n: int) -> None:
        await admission.acquire("m", 1)
        order.append(n)
        assert admission.active["m"] == 1

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert admission.waiting["m"] == 3
    for _ in range(3):
        admission.release("m")
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    admission.release("m")
    assert admission.active["m"] == 0


async def test_admission_bounds_and_cancellation() -> None:
    admission = Admission(max_waiting=1, queue_timeout_s=0.05, retry_after_s=2)
    await admission.acquire("m", 1)
    with pytest.raises(RateLimited, match="no slot within"):
        await admission.acquire("m", 1)
    blocked = asyncio.create_task(admission.acquire("m", 1))
    await asyncio.sleep(0)
    with pytest.raises(RateLimited, match="queue is full") as full:
        await admission.acquire("m", 1)
    assert full.value.headers["Retry-After"] == "2"
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert admission.waiting["m"] == 0
    admission.release("m")
    assert admission.active["m"] == 0
    await admission.acquire("m", None)  # no limit: never waits
