"""What adapter-affine routing buys (issue #16): PrefixHash (adapter-affine) vs LeastLoad.

Eight LoRA adapters on four fake vLLM replicas (`tests/fakes/vllm.py` subprocesses) with two GPU
adapter slots each (`--max-loras 2`), every adapter registered on every replica at start
(`--lora-modules`), behind the real `relais-gateway` CLI: one gateway per strategy, the same
static config but `routing.strategy`. A request for an adapter outside its replica's slots
waits `lora_load_ms` before its first token while the fake brings it in, evicting the least
recently used one; the fakes count these loads (`GET /relais-fake/lora`).

Why `lora_load_ms` 50: vLLM keeps `--max-cpu-loras` adapters in host memory, by default as
many as `--max-loras`, so with eight adapters and two slots an adapter brought into a slot is
mostly read again from disk (the page cache, here) and copied to the GPU: a few tens of ms
for a rank-16 adapter of a 7B model (tens of MB). 50 ms is a middling guess, not a measurement
(no GPU here); the loads per 1,000 requests do not depend on it, only the TTFT gap does.

One seeded trace, open loop (Poisson arrivals), each request a short streamed chat for an
adapter drawn uniformly, named by its name or its alias `<served>_<name>` at random. Before each
strategy's run the fakes are reset (slots empty, counters zero), so both runs pay the same cold
loads. Per strategy: adapter loads per 1,000 requests (the fakes' counters), time to first token
p50/p99 through the gateway (measured by the client), and how many replicas served each adapter.
Targets print PASS/FAIL; nothing asserts.

    python benchmarks/lora.py [--quick] [--requests N] [--rate R] [--seed S] [--load-ms L]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.routing import percentile
from tests.fakes.process import FakeEngine
from tests.fakes.servers import gateway

BASE = "qwen"
REPLICAS = 4
SLOTS = 2
ADAPTERS = tuple(f"adapter-{i}" for i in range(8))
STRATEGIES = ("PrefixHash", "LeastLoad")
LOAD_FACTOR = 1.25
CHAT = "/v1/chat/completions"
TOKENS = 24
FIRST_TOKEN_MS = 20.0
TOKEN_MS = 10.0
"""A request takes ~0.25 s: at 40 req/s about 10 are in flight over the 4 replicas."""


@dataclass(frozen=True)
class Shape:
    requests: int = 2000
    rate: float = 40.0
    load_ms: float = 50.0

    @classmethod
    def quick(cls) -> Shape:
        return cls(requests=120, rate=30.0)


@dataclass(frozen=True)
class Request:
    start_s: float
    adapter: str
    model: str
    """The name sent: the adapter's, or its alias."""
    question: str


def trace(shape: Shape, seed: int) -> list[Request]:
    """Poisson arrivals; a uniform adapter per request, by either of its names."""
    rng = random.Random(seed)
    now, requests = 0.0, []
    for _ in range(shape.requests):
        now += rng.expovariate(shape.rate)
        adapter = rng.choice(ADAPTERS)
        model = adapter if rng.random() < 0.5 else f"{BASE}_{adapter}"
        question = " ".join(f"w{rng.randrange(10_000)}" for _ in range(20))
        requests.append(Request(now, adapter, model, question))
    return requests


# ---------------------------------------------------------------- measuring


@dataclass
class Outcome:
    request: Request
    ttft_s: float = math.nan
    error: str = ""


@dataclass
class Run:
    """One strategy's run over the trace."""

    outcomes: list[Outcome] = field(default_factory=list)
    loads: int = 0
    seconds: float = 0.0
    spread: dict[str, int] = field(default_factory=dict)
    """Adapter -> how many replicas served it."""

    def ttft(self, q: float) -> float:
        return percentile([o.ttft_s for o in self.outcomes if not o.error], q)

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    @property
    def loads_per_1000(self) -> float:
        return 1000 * self.loads / len(self.outcomes) if self.outcomes else math.nan


async def send(http: aiohttp.ClientSession, url: str, outcome: Outcome) -> None:
    """One streamed chat request; its time to first token (from when it is sent)."""
    body = {
        "model": outcome.request.model,
        "messages": [{"role": "user", "content": outcome.request.question}],
        "max_tokens": TOKENS,
        "stream": True,
    }
    start = time.perf_counter()
    try:
        async with http.post(url + CHAT, json=body) as response:
            if response.status != 200:
                outcome.error = f"HTTP {response.status}: {(await response.read())[:160]!r}"
                return
            async for line in response.content:
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                chunk = json.loads(line[5:])
                text = any(c.get("delta", {}).get("content") for c in chunk.get("choices", []))
                if text and math.isnan(outcome.ttft_s):
                    outcome.ttft_s = time.perf_counter() - start
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:160]


async def play(url: str, requests: list[Request]) -> tuple[list[Outcome], float]:
    outcomes = [Outcome(r) for r in requests]
    t0 = time.perf_counter()

    async def one(outcome: Outcome) -> None:
        await asyncio.sleep(max(0.0, outcome.request.start_s - (time.perf_counter() - t0)))
        await send(http, url, outcome)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(one(o) for o in outcomes))
    return outcomes, time.perf_counter() - t0


async def run_one(url: str, fakes: list[FakeEngine], requests: list[Request]) -> Run:
    """Reset the fakes (slots, counters, logs), replay the trace, collect loads and spread."""
    for fake in fakes:
        await fake.reset()
    run = Run()
    run.outcomes, run.seconds = await play(url, requests)
    served: dict[str, set[int]] = {}
    for index, fake in enumerate(fakes):
        run.loads += int((await fake.lora())["loads"])
        for entry in await fake.requests():
            model = (entry.get("json") or {}).get("model")
            if entry["path"] == CHAT and model in ADAPTERS:
                served.setdefault(model, set()).add(index)
    run.spread = {adapter: len(replicas) for adapter, replicas in sorted(served.items())}
    return run


# ---------------------------------------------------------------- processes


def gateway_config(urls: list[str], strategy: str) -> dict[str, Any]:
    routing: dict[str, Any] = {"strategy": strategy}
    if strategy == "PrefixHash":
        routing["loadFactor"] = LOAD_FACTOR
    deployment = {
        "name": BASE,
        "engine": "vllm",
        "servedModelName": BASE,
        "endpoints": urls,
        "routing": routing,
        "adapters": [{"name": a} for a in ADAPTERS],
    }
    return {"deployments": [deployment], "auth": {"disabled": True}}


@contextlib.contextmanager
def fake_replicas(load_ms: float) -> Iterator[list[FakeEngine]]:
    """Four fake vLLM replicas with 2 LoRA slots and all 8 adapters registered."""
    modules = {a: f"/cache/adapters/{a}" for a in ADAPTERS}
    with contextlib.ExitStack() as stack:
        fakes = [
            stack.enter_context(
                FakeEngine(
                    "vllm",
                    models=[BASE],
                    max_loras=SLOTS,
                    lora_load_ms=load_ms,
                    lora_modules=modules,
                    tokens=TOKENS,
                    first_token_delay_ms=FIRST_TOKEN_MS,
                    token_delay_ms=TOKEN_MS,
                )
            )
            for _ in range(REPLICAS)
        ]
        yield fakes


async def measure(
    gateways: dict[str, str], fakes: list[FakeEngine], requests: list[Request]
) -> dict[str, Run]:
    results = {}
    for strategy, url in gateways.items():
        results[strategy] = await run_one(url, fakes, requests)
        print(f"  measured {strategy}", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def table(results: dict[str, Run]) -> Iterator[str]:
    head = (
        f"  {'strategy':<11}|{'loads/1000':>11}{'loads':>7} |{'TTFT p50 ms':>12}{'p99 ms':>9}"
        f" |{'req/s':>7}{'err':>5} | replicas per adapter"
    )
    yield head
    yield "  " + "-" * (len(head) - 2)
    for strategy, r in results.items():
        spread = " ".join(str(n) for n in r.spread.values())
        rps = (len(r.outcomes) - r.errors) / r.seconds if r.seconds else math.nan
        yield (
            f"  {strategy:<11}|{r.loads_per_1000:>11.1f}{r.loads:>7} |"
            f"{r.ttft(0.5) * 1e3:>12.1f}{r.ttft(0.99) * 1e3:>9.1f} |{rps:>7.1f}{r.errors:>5} |"
            f" {spread}"
        )


def targets(results: dict[str, Run]) -> Iterator[tuple[str, bool]]:
    affine, least = results["PrefixHash"], results["LeastLoad"]
    fewer = ratio(least.loads_per_1000, affine.loads_per_1000)
    yield (
        f"{'adapter-affine: >= 5x fewer loads than LeastLoad':<50} measured {fewer:.1f}x",
        (fewer >= 5),
    )
    p99 = ratio(affine.ttft(0.99), least.ttft(0.99))
    yield f"{'adapter-affine: lower TTFT p99 than LeastLoad':<50} measured {p99:.2f}x", p99 < 1
    errors = sum(r.errors for r in results.values())
    yield f"{'0 errors':<50} measured {errors}", errors == 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny trace")
    parser.add_argument("--requests", type=int, help="requests in the trace")
    parser.add_argument("--rate", type=float, help="arrivals per second (Poisson)")
    parser.add_argument("--load-ms", type=float, help="the fakes' LoRA slot load cost")
    parser.add_argument("--seed", type=int, default=16)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = Shape.quick() if args.quick else Shape()
    shape = Shape(
        args.requests or shape.requests,
        args.rate or shape.rate,
        shape.load_ms if args.load_ms is None else args.load_ms,
    )
    requests = trace(shape, args.seed)
    started = time.perf_counter()
    with fake_replicas(shape.load_ms) as fakes:
        urls = [fake.url for fake in fakes]
        with (
            gateway(gateway_config(urls, "PrefixHash")) as affine,
            gateway(gateway_config(urls, "LeastLoad")) as least,
        ):
            results = asyncio.run(measure({"PrefixHash": affine, "LeastLoad": least}, fakes,
                                          requests))  # fmt: skip
    print(
        f"\nLoRA adapter routing: {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {REPLICAS} fake vLLM replicas x {SLOTS} LoRA slots, {len(ADAPTERS)} adapters"
        f" registered on each, slot load {shape.load_ms:g} ms, {time.perf_counter() - started:.0f}"
        f" s in all\n{shape.requests} streamed chats at {shape.rate:g} req/s (Poisson), adapters"
        f" uniform, by name or alias; {TOKENS} tokens, first after {FIRST_TOKEN_MS:g} ms, then"
        f" every {TOKEN_MS:g} ms; PrefixHash loadFactor {LOAD_FACTOR:g}\n"
        "loads = adapters brought into a slot (the fakes' counters); replicas per adapter ="
        " how many replicas served each of the 8\n"
    )
    for line in table(results):
        print(line)
    for strategy, run in results.items():
        for outcome in [o for o in run.outcomes if o.error][:3]:
            print(f"  error {strategy} {outcome.request.model}: {outcome.error}")
    print("\ntargets (issue #16):")
    for label, ok in targets(results):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
