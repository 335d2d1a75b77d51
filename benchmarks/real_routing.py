"""PrefixHash against LeastLoad in front of real vLLM: time to first token and prefix-cache hits.

Two real vLLM (CPU) replicas of Gemma 3 270M, started with the operator's own flags
(tests/real_engine/vllm.py) plus prefix caching, one core each (VLLM_CPU_OMP_THREADS_BIND), sit
behind two real `relais-gateway` processes with the same two endpoints: one routes with
PrefixHash, the other with LeastLoad. The trace is seeded and multi-turn: conversations that
share a few long system prompts, each turn resending the conversation with the engine's replies.
Both strategies play the same trace shape with their own system prompts (so neither finds the
other's prefixes in the cache), in alternating rounds. Per strategy: time to first token p50 and
p99 (streamed, measured by the client) and the engines' prefix-cache hit rate from their
/metrics (`vllm:prefix_cache_hits` over `vllm:prefix_cache_queries`, in tokens). Not run by
`make test` (it needs minutes); nothing asserts.

    python benchmarks/real_routing.py [--conversations N] [--turns T] [--rounds R] [--seed S]
        [--systems K] [--system-words W] [--turn-words W]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from tests.fakes.servers import gateway
from tests.real_engine import vllm

STRATEGIES = ("PrefixHash", "LeastLoad")
MODEL = str(vllm.CHAT_SPEC["servedModelName"])
# Prefix caching is on by default in vLLM's V1 engine; said explicitly, since it is the point.
REPLICA_SPEC = {**vllm.CHAT_SPEC, "args": [*vllm.CHAT_SPEC["args"], "--enable-prefix-caching"]}
MAX_TOKENS = 8
CONCURRENCY = 4
WORDS = [
    "river",
    "stone",
    "cloud",
    "lamp",
    "orbit",
    "maple",
    "quartz",
    "harbor",
    "signal",
    "meadow",
    "copper",
    "lantern",
]


@dataclass(frozen=True)
class Conversation:
    system: str
    questions: list[str]


def trace(rng: random.Random, args: argparse.Namespace, salt: str) -> list[Conversation]:
    """`args.conversations` conversations over `args.systems` shared system prompts."""
    systems = [
        f"[{salt}-{n}] You are assistant {n}. " + " ".join(rng.choices(WORDS, k=args.system_words))
        for n in range(args.systems)
    ]
    return [
        Conversation(
            rng.choice(systems),
            [" ".join(rng.choices(WORDS, k=args.turn_words)) for _ in range(args.turns)],
        )
        for _ in range(args.conversations)
    ]


@dataclass
class Result:
    ttft_s: list[float] = field(default_factory=list)
    errors: int = 0
    hits: float = 0.0
    queries: float = 0.0

    def ttft_ms(self, q: float) -> float:
        ordered = sorted(self.ttft_s)
        if not ordered:
            return float("nan")
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


async def turn(http: aiohttp.ClientSession, url: str, messages: list[dict[str, str]],
               result: Result) -> str:  # fmt: skip
    """One streamed chat request; records the time to the first content token; the reply."""
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "stream": True}
    start, first, reply = time.monotonic(), None, []
    async with http.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            result.errors += 1
            return ""
        async for line in response.content:
            text = line.decode().strip()
            if not text.startswith("data: {"):
                continue
            for piece in re.findall(r'"content":"((?:[^"\\]|\\.)*)"', text):
                if piece and first is None:
                    first = time.monotonic()
                reply.append(piece)
    if first is None:
        result.errors += 1
        return ""
    result.ttft_s.append(first - start)
    return "".join(reply)


async def play(url: str, conversations: list[Conversation], result: Result) -> None:
    """Every conversation turn by turn, CONCURRENCY conversations at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(conversation: Conversation) -> None:
            async with gate:
                messages = [{"role": "system", "content": conversation.system}]
                for question in conversation.questions:
                    messages.append({"role": "user", "content": question})
                    reply = await turn(http, url, messages, result)
                    messages.append({"role": "assistant", "content": reply or "ok"})

        await asyncio.gather(*(one(c) for c in conversations))


async def cache_counters(engines: list[str]) -> tuple[float, float]:
    """Summed prefix-cache (hits, queries) of the engines, in tokens, from their /metrics."""
    hits = queries = 0.0
    async with aiohttp.ClientSession() as http:
        for engine in engines:
            async with http.get(engine + "/metrics") as response:
                page = await response.text()
            hits += metric(page, "vllm:prefix_cache_hits")
            queries += metric(page, "vllm:prefix_cache_queries")
    return hits, queries


def metric(page: str, name: str) -> float:
    """The sum of a counter's samples (prometheus names counters NAME_total)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:_total)?(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(page))


async def measure(gateways: dict[str, str], engines: list[str], args: argparse.Namespace,
                  ) -> dict[str, Result]:  # fmt: skip
    results = {strategy: Result() for strategy in STRATEGIES}
    rng = random.Random(args.seed)
    for round_ in range(args.rounds):
        order = STRATEGIES if round_ % 2 == 0 else STRATEGIES[::-1]
        for strategy in order:
            conversations = trace(rng, args, f"{strategy}-{round_}")
            hits, queries = await cache_counters(engines)
            await play(gateways[strategy], conversations, results[strategy])
            hits_after, queries_after = await cache_counters(engines)
            results[strategy].hits += hits_after - hits
            results[strategy].queries += queries_after - queries
            print(f"  round {round_ + 1} {strategy}: done", flush=True)
    return results


def gateway_config(engines: list[str], strategy: str) -> dict[str, Any]:
    deployment = {
        "name": "gemma",
        "engine": "vllm",
        "servedModelName": MODEL,
        "endpoints": engines,
        "routing": {"strategy": strategy},
    }
    return {"deployments": [deployment], "auth": {"disabled": True}}


def report(results: dict[str, Result], started: float, args: argparse.Namespace) -> None:
    print(f"\nreal vLLM {vllm.VLLM_VERSION} CPU, 2 replicas x 1 core, Gemma 3 270M, prefix caching")
    print(f"{args.rounds} rounds x {args.conversations} conversations x {args.turns} turns per")
    print(f"strategy, {MAX_TOKENS} tokens per answer, {CONCURRENCY} conversations at a time;")
    print(
        f"{args.systems} system prompts of {args.system_words} words, turns of {args.turn_words}\n"
    )
    print("| strategy | requests | errors | TTFT p50 ms | TTFT p99 ms | prefix-cache hit rate |")
    print("|---|---|---|---|---|---|")
    for strategy, result in results.items():
        print(
            f"| {strategy} | {len(result.ttft_s) + result.errors} | {result.errors} "
            f"| {result.ttft_ms(0.5):.0f} | {result.ttft_ms(0.99):.0f} "
            f"| {result.hit_rate:.0%} |"
        )
    print(f"\nwall time {time.monotonic() - started:.0f} s (server start included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--systems", type=int, default=4, help="shared system prompts")
    parser.add_argument("--system-words", type=int, default=150)
    parser.add_argument("--turn-words", type=int, default=40, help="words per user turn")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    reason = vllm.missing()
    if reason is not None:
        sys.exit(f"real_routing: {reason}")
    started = time.monotonic()
    print("starting two vLLM replicas (minutes on CPU)...", flush=True)
    with vllm.running(REPLICA_SPEC, REPLICA_SPEC, cpus=["0", "1"]) as replicas:
        engines = [replica.url for replica in replicas]
        print(f"replicas healthy after {time.monotonic() - started:.0f} s", flush=True)
        with (
            gateway(gateway_config(engines, "PrefixHash")) as prefix_hash,
            gateway(gateway_config(engines, "LeastLoad")) as least_load,
        ):
            gateways = {"PrefixHash": prefix_hash, "LeastLoad": least_load}
            results = asyncio.run(measure(gateways, engines, args))
    report(results, started, args)


if __name__ == "__main__":
    main()
