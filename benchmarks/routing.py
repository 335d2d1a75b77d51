"""What prefix-cache-aware routing buys (issue #10): round-robin vs LeastLoad vs PrefixHash.

Simulated engines (`benchmarks/sim_engine.py` subprocesses: block-wise LRU prefix cache, prefill
cost per uncached prompt token, decode cost per token, slots and a FIFO queue) sit behind
the real `relais-gateway` CLI. One gateway config holds every strategy, so all three pay the same
gateway hop: `sim-ph` (PrefixHash over all engines), `sim-ll` (LeastLoad over all engines) and,
for round-robin, which is not a gateway strategy, `sim-rr-0..N-1` (one engine each): the load
generator names them in turn, one request after the other.

Three seeded traces, open loop (Poisson arrivals): multi-turn conversations sharing a few system
prompts (each turn resends the whole conversation with the engine's actual replies; a turn
leaves after the previous answer and a think time), a uniform trace with no shared prefix, and
one hot system prompt. Before every run the engines' caches and counters are reset. Per trace
and strategy: time to first token p50/p99 (streamed, measured by the client), throughput, the
engines' prompt-token cache hit rate, how often a conversation's next turn found the previous
turn's replica, and the largest excess of one replica's in-flight count (the gateway's gauge,
sampled) over loadFactor x the mean. The bound applies when a request is admitted, so the
hot-prefix target is judged on the replicas that just took a request; the excess at any time
(a replica keeping its load while the others drain, which no admission rule prevents) is shown
beside it. Then a second gateway with the same config: the same prefixes through both, one at
a time, and which engine served each (the engines' X-Request-ID logs). Targets print PASS/FAIL;
nothing asserts.

With --figure (default benchmarks/figures/routing.png, none for --quick) it draws each trace's
TTFT distribution per strategy.

    python benchmarks/routing.py [--quick] [--engines N] [--seed S] [--prefix-chars C]
        [--figure PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import figures
from benchmarks.sim_engine import Costs
from tests.fakes.servers import free_port, gateway, run_server

STRATEGIES = ("round-robin", "LeastLoad", "PrefixHash")
LOAD_FACTOR = 1.25
CHAT = "/v1/chat/completions"
Message = dict[str, str]


# ---------------------------------------------------------------- traces (pure, seeded)


@dataclass(frozen=True)
class Turn:
    """One request of a session: sent `think_s` after the previous answer (or the start)."""

    think_s: float
    user: str


@dataclass(frozen=True)
class Session:
    """A conversation (or a lone request): its start, system prompt ("" for none) and turns.

    Turn n sends the system prompt, every earlier user turn with the engine's actual reply to
    it, then its own user message, as a chat client does.
    """

    start_s: float
    system: str
    turns: tuple[Turn, ...]

    def messages(self, replies: list[str]) -> list[Message]:
        """What turn `len(replies)` sends, given the answers to the turns before it."""
        sent: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for turn, reply in zip(self.turns, replies, strict=False):
            sent += [
                {"role": "user", "content": turn.user},
                {"role": "assistant", "content": reply},
            ]
        return [*sent, {"role": "user", "content": self.turns[len(replies)].user}]


@dataclass(frozen=True)
class Trace:
    name: str
    arrivals: str
    """How requests arrive, for the report."""
    sessions: tuple[Session, ...]
    max_tokens: int

    @property
    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


@dataclass(frozen=True)
class Shape:
    """Sizes of the traces; `quick()` is the smoke-run version."""

    conversations: int = 200
    turns: int = 5
    conversation_rate: float = 5.0
    think_s: float = 1.0
    system_prompts: int = 10
    system_words: int = 300
    user_words: int = 40
    single_requests: int = 400
    single_rate: float = 25.0
    uniform_words: int = 300
    hot_system_words: int = 600
    question_words: int = 30
    max_tokens: int = 128
    two_gateway_prefixes: int = 300

    @classmethod
    def quick(cls) -> Shape:
        return cls(conversations=12, turns=3, conversation_rate=8.0, think_s=0.2,
                   system_prompts=3, single_requests=30, max_tokens=16,
                   two_gateway_prefixes=30)  # fmt: skip


def words(rng: random.Random, count: int) -> str:
    return " ".join(f"w{rng.randrange(10_000)}" for _ in range(count))


def arrivals(rng: random.Random, count: int, rate: float) -> list[float]:
    """Poisson process: `count` times with exponential gaps of mean 1/rate."""
    now, times = 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        times.append(now)
    return times


def multi_turn(shape: Shape, seed: int) -> Trace:
    """Conversations over a few shared system prompts, `turns` user turns each."""
    rng = random.Random(seed)
    systems = [words(rng, shape.system_words) for _ in range(shape.system_prompts)]
    sessions = []
    for start in arrivals(rng, shape.conversations, shape.conversation_rate):
        system = rng.choice(systems)
        turns = tuple(
            Turn(rng.expovariate(1 / shape.think_s) if index else 0.0, words(rng, shape.user_words))
            for index in range(shape.turns)
        )
        sessions.append(Session(start, system, turns))
    how = (f"conversations start at {shape.conversation_rate:g}/s (Poisson), {shape.turns} turns,"
           f" mean think time {shape.think_s:g} s")  # fmt: skip
    return Trace("multi-turn", how, tuple(sessions), shape.max_tokens)


def single_requests(name: str, shape: Shape, seed: int, system: int, user: int) -> Trace:
    """Lone requests: one system prompt of `system` words shared by all (if any), own question."""
    rng = random.Random(seed)
    shared = words(rng, system) if system else ""
    sessions = tuple(
        Session(start, shared, (Turn(0.0, words(rng, user)),))
        for start in arrivals(rng, shape.single_requests, shape.single_rate)
    )
    return Trace(name, f"{shape.single_rate:g} req/s (Poisson)", sessions, shape.max_tokens)


def traces(shape: Shape, seed: int) -> list[Trace]:
    return [
        multi_turn(shape, seed),
        single_requests("uniform", shape, seed + 1, 0, shape.uniform_words),
        single_requests(
            "hot prefix", shape, seed + 2, shape.hot_system_words, shape.question_words
        ),
    ]


# ---------------------------------------------------------------- measuring (pure)


@dataclass
class Outcome:
    """What the client saw of one request."""

    rid: str
    session: int
    ttft_s: float = math.nan
    tokens: int = 0
    reply: str = ""
    done_s: float = math.nan
    error: str = ""


@dataclass
class Run:
    """One trace under one strategy."""

    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    hit_tokens: int = 0
    miss_tokens: int = 0
    served_by: dict[str, int] = field(default_factory=dict)
    """request id -> engine index, from the engines' logs."""
    excess: list[float] = field(default_factory=list)
    """Per gauge sample: max in-flight on one replica minus loadFactor x the mean."""
    admitted_excess: list[float] = field(default_factory=list)
    """The same, over the replicas whose count rose since the previous sample (just admitted)."""
    first_choice: float = math.nan

    def ttft(self, q: float) -> float:
        return percentile([o.ttft_s for o in self.outcomes if not o.error], q)

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    @property
    def rps(self) -> float:
        return (len(self.outcomes) - self.errors) / self.seconds if self.seconds else math.nan

    @property
    def tokens_per_s(self) -> float:
        return sum(o.tokens for o in self.outcomes) / self.seconds if self.seconds else math.nan

    @property
    def hit_rate(self) -> float:
        total = self.hit_tokens + self.miss_tokens
        return self.hit_tokens / total if total else math.nan

    @property
    def sticky(self) -> float:
        """Share of later turns served by the replica that served the session's previous turn."""
        same = later = 0
        previous: dict[int, int] = {}
        for outcome in self.outcomes:  # in send order within each session
            engine = self.served_by.get(outcome.rid)
            if engine is None:
                continue
            if outcome.session in previous:
                later += 1
                same += previous[outcome.session] == engine
            previous[outcome.session] = engine
        return same / later if later else math.nan

    @property
    def max_excess(self) -> float:
        return max(self.excess, default=math.nan)


def share_above(values: list[float], limit: float) -> float:
    return sum(1 for v in values if v > limit) / len(values) if values else math.nan


def percentile(values: list[float], q: float) -> float:
    data = sorted(v for v in values if not math.isnan(v))
    return data[min(len(data) - 1, int(q * len(data)))] if data else math.nan


def load_excess(
    loads: list[int], load_factor: float, among: list[int] | None = None
) -> float | None:
    """max(load) - loadFactor x mean(load) (max over the replicas `among`, by index, if given).

    None when nothing is in flight or `among` is empty.
    """
    total = sum(loads)
    chosen = [loads[i] for i in among] if among is not None else loads
    if not total or not chosen:
        return None
    return max(chosen) - load_factor * total / len(loads)


def rose(before: list[int], after: list[int]) -> list[int]:
    """Indexes of the replicas whose in-flight count went up between two samples."""
    return [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]


SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def samples(metrics: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in Prometheus text format."""
    return [
        (dict(LABEL.findall(labels)), float(value))
        for found, labels, value in SAMPLE.findall(metrics)
        if found == name
    ]


def inflight(metrics: str, endpoints: list[str]) -> list[int]:
    """The gateway's in-flight gauge for each of `endpoints` (0 when absent)."""
    found = {
        labels.get("endpoint"): int(value)
        for labels, value in samples(metrics, "relais_gateway_inflight_requests")
    }
    return [found.get(url, 0) for url in endpoints]


def prefix_decisions(metrics: str) -> dict[str, float]:
    """PrefixHash decisions by first_choice ("true"/"false"), from /metrics text."""
    return {
        labels["first_choice"]: value
        for labels, value in samples(metrics, "relais_gateway_routing_decisions_total")
        if labels.get("strategy") == "PrefixHash" and "first_choice" in labels
    }


def agreement(served: dict[str, int], count: int) -> float:
    """Share of prefixes i whose requests a-i (gateway one) and b-i (two) reached one engine."""
    same = sum(1 for i in range(count) if served.get(f"a-{i}", -1) == served.get(f"b-{i}", -2))
    return same / count if count else math.nan


# ---------------------------------------------------------------- the load generator (I/O)


def model_for(strategy: str, engines: int) -> Callable[[int], str]:
    """The deployment the n-th request of a run is sent to."""
    if strategy == "round-robin":
        return lambda n: f"sim-rr-{n % engines}"
    return lambda _: "sim-ph" if strategy == "PrefixHash" else "sim-ll"


async def send(
    http: aiohttp.ClientSession, url: str, model: str, messages: list[Message],
    max_tokens: int, outcome: Outcome, t0: float,
) -> None:  # fmt: skip
    """One streamed chat request; fills in `outcome` (TTFT from the moment it is sent)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
    start = time.perf_counter()
    try:
        async with http.post(url + CHAT, json=body, headers={"X-Request-ID": outcome.rid}) as r:
            if r.status != 200:
                outcome.error = f"HTTP {r.status}: {(await r.read())[:120]!r}"
                return
            async for line in r.content:
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                for choice in json.loads(line[5:]).get("choices", []):
                    if text := choice.get("delta", {}).get("content"):
                        if math.isnan(outcome.ttft_s):
                            outcome.ttft_s = time.perf_counter() - start
                        outcome.tokens += len(text.split())
                        outcome.reply += text
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:160]
    outcome.done_s = time.perf_counter() - t0


async def play(http: aiohttp.ClientSession, url: str, trace: Trace, pick: Callable[[int], str],
               tag: str) -> tuple[list[Outcome], float]:  # fmt: skip
    """Replay `trace` open loop; the outcomes in send order per session, and the makespan."""
    outcomes: list[Outcome] = []
    counter = iter(range(trace.requests))
    t0 = time.perf_counter()

    async def session(index: int, s: Session) -> None:
        await asyncio.sleep(max(0.0, s.start_s - (time.perf_counter() - t0)))
        replies: list[str] = []
        for number, turn in enumerate(s.turns):
            await asyncio.sleep(turn.think_s)
            outcome = Outcome(f"{tag}-{index}-{number}", index)
            outcomes.append(outcome)
            messages = s.messages(replies)
            await send(http, url, pick(next(counter)), messages, trace.max_tokens, outcome, t0)
            if outcome.error:
                return  # a conversation cannot go on without its answer
            replies.append(outcome.reply)

    await asyncio.gather(*(session(i, s) for i, s in enumerate(trace.sessions)))
    return outcomes, time.perf_counter() - t0


async def sample_excess(http: aiohttp.ClientSession, gw: str, engines: list[str], run: Run,
                        period_s: float = 0.025) -> None:  # fmt: skip
    """Poll the gateway's in-flight gauge until cancelled; record each sample's excesses.

    The bound is applied when a request is admitted, so "admitted" excess looks only at the
    replicas that just took requests; the plain one also sees a replica that kept its load
    while the others drained (which no admission rule prevents).
    """
    previous = [0] * len(engines)
    while True:
        async with http.get(gw + "/metrics") as r:
            loads = inflight(await r.text(), engines)
        for into, among in ((run.excess, None), (run.admitted_excess, rose(previous, loads))):
            excess = load_excess(loads, LOAD_FACTOR, among)
            if excess is not None:
                into.append(excess)
        previous = loads
        await asyncio.sleep(period_s)


async def engine_stats(http: aiohttp.ClientSession, engines: list[str]) -> list[dict[str, Any]]:
    stats = []
    for url in engines:
        async with http.get(url + "/stats") as r:
            stats.append(await r.json())
    return stats


async def reset(http: aiohttp.ClientSession, engines: list[str]) -> None:
    for url in engines:
        async with http.post(url + "/reset") as r:
            r.raise_for_status()


def served_by(stats: list[dict[str, Any]]) -> dict[str, int]:
    return {rid: index for index, s in enumerate(stats) for rid in s["request_ids"]}


async def decisions(http: aiohttp.ClientSession, gw: str) -> dict[str, float]:
    async with http.get(gw + "/metrics") as r:
        return prefix_decisions(await r.text())


async def run_one(http: aiohttp.ClientSession, gw: str, engines: list[str], trace: Trace,
                  strategy: str) -> Run:  # fmt: skip
    """Reset the engines, replay `trace` under `strategy` while sampling the load, collect."""
    await reset(http, engines)
    before = await decisions(http, gw)
    run = Run()
    sampler = asyncio.create_task(sample_excess(http, gw, engines, run))
    tag = f"{trace.name.replace(' ', '_')}-{strategy}"
    try:
        run.outcomes, run.seconds = await play(
            http, gw, trace, model_for(strategy, len(engines)), tag
        )
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    stats = await engine_stats(http, engines)
    run.hit_tokens = sum(s["hit_tokens"] for s in stats)
    run.miss_tokens = sum(s["miss_tokens"] for s in stats)
    run.served_by = served_by(stats)
    after = await decisions(http, gw)
    taken = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("true", "false")}
    if sum(taken.values()):
        run.first_choice = taken["true"] / sum(taken.values())
    return run


async def two_gateways(
    gateways: tuple[str, str], engines: list[str], count: int, seed: int
) -> float:
    """The same `count` prefixes through each gateway, one request at a time: agreement."""
    rng = random.Random(seed)
    prompts = [
        [{"role": "system", "content": words(rng, 30)}, {"role": "user", "content": words(rng, 5)}]
        for _ in range(count)
    ]
    async with client() as http:
        await reset(http, engines)
        for tag, gw in zip("ab", gateways, strict=True):
            for i, messages in enumerate(prompts):
                outcome = Outcome(f"{tag}-{i}", i)
                await send(http, gw, "sim-ph", messages, 1, outcome, time.perf_counter())
                if outcome.error:
                    raise RuntimeError(f"two-gateway check: {outcome.error}")
        ids = served_by(await engine_stats(http, engines))
    return agreement(ids, count)


def client() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def measure(
    gw: str, engines: list[str], shape: Shape, seed: int
) -> dict[str, dict[str, Run]]:
    results: dict[str, dict[str, Run]] = {}
    async with client() as http:
        for trace in traces(shape, seed):
            results[trace.name] = {}
            for strategy in STRATEGIES:
                results[trace.name][strategy] = await run_one(http, gw, engines, trace, strategy)
                print(f"  measured {trace.name} / {strategy}", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------- processes


def gateway_config(engines: list[str], prefix_chars: int) -> dict[str, Any]:
    """One deployment per strategy over all engines, and one per engine for round-robin."""

    def deployment(name: str, endpoints: list[str], routing: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "engine": "vllm", "servedModelName": name, "model": "sim",
                "endpoints": endpoints, "routing": routing}  # fmt: skip

    prefix = {"strategy": "PrefixHash", "prefixCharLength": prefix_chars, "loadFactor": LOAD_FACTOR}
    deployments = [
        deployment("sim-ph", engines, prefix),
        deployment("sim-ll", engines, {"strategy": "LeastLoad"}),
    ]
    deployments += [
        deployment(f"sim-rr-{i}", [url], {"strategy": "LeastLoad"}) for i, url in enumerate(engines)
    ]
    return {"deployments": deployments, "auth": {"disabled": True}}


@contextlib.contextmanager
def sim_engines(count: int, costs: Costs) -> Iterator[list[str]]:
    """`count` sim_engine.py subprocesses; yields their base URLs."""
    script = Path(__file__).with_name("sim_engine.py")
    with contextlib.ExitStack() as stack:
        urls = []
        for _ in range(count):
            port = free_port()
            command = [sys.executable, str(script), "--port", str(port)]
            for name, value in dataclasses.asdict(costs).items():
                command += [f"--{name.replace('_', '-')}", str(value)]
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(run_server(command, url + "/health", timeout_s=30))
            urls.append(url)
        yield urls


# ---------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def fmt(value: float, spec: str) -> str:
    """`value` formatted, or "-" where there is nothing to report (nan)."""
    return "-" if math.isnan(value) else format(value, spec)


def table(trace: Trace, runs: dict[str, Run]) -> Iterator[str]:
    out = f"{trace.max_tokens} tokens out"
    yield f"{trace.name}: {trace.requests} requests, {trace.arrivals}, {out}"
    head = (f"  {'strategy':<12}|{'TTFT p50 ms':>12}{'p99 ms':>9} |{'req/s':>7}{'tok/s':>8} |"
            f"{'cache hit':>10}{'sticky':>8}{'1st choice':>11}{'excess':>8}{'err':>5}")  # fmt: skip
    yield head
    yield "  " + "-" * (len(head) - 2)
    for strategy, r in runs.items():
        yield (f"  {strategy:<12}|{r.ttft(0.5) * 1e3:>12.1f}{r.ttft(0.99) * 1e3:>9.1f} |"
               f"{r.rps:>7.1f}{r.tokens_per_s:>8.0f} |{fmt(r.hit_rate, '.1%'):>10}"
               f"{fmt(r.sticky, '.1%'):>8}{fmt(r.first_choice, '.1%'):>11}"
               f"{fmt(r.max_excess, '.2f'):>8}{r.errors:>5}")  # fmt: skip


def targets(results: dict[str, dict[str, Run]], agree: float) -> Iterator[tuple[str, bool]]:
    """(target with the measured figure, met?) for each target of issue #10."""
    multi, uniform, hot = results["multi-turn"], results["uniform"], results["hot prefix"]
    p50 = ratio(multi["PrefixHash"].ttft(0.5), multi["LeastLoad"].ttft(0.5))
    yield (
        f"{'multi-turn PrefixHash TTFT p50 <= 0.5x LeastLoad':<52} measured {p50:.3f}x",
        p50 <= 0.5,
    )
    p99 = ratio(uniform["PrefixHash"].ttft(0.99), uniform["LeastLoad"].ttft(0.99))
    yield f"{'uniform PrefixHash TTFT p99 <= 1.1x LeastLoad':<52} measured {p99:.3f}x", p99 <= 1.1
    ph = hot["PrefixHash"]
    admitted = max(ph.admitted_excess, default=math.nan)
    label = f"hot prefix: no replica above {LOAD_FACTOR:g}x mean in-flight + 1"
    figure = f"max excess {admitted:.2f} on replicas that just took a request"
    figure += f" ({len(ph.admitted_excess)} samples 25 ms apart); {ph.max_excess:.2f} at any"
    figure += f" time (above 1 in {share_above(ph.excess, 1.0):.1%} of {len(ph.excess)} samples)"
    yield f"{label:<52} {figure}", admitted <= 1.0
    label = "two gateways pick the same replica >= 99%"
    yield f"{label:<52} measured {agree:.1%}", agree >= 0.99
    errors = sum(r.errors for runs in results.values() for r in runs.values())
    yield f"{'0 errors':<52} measured {errors}", errors == 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny traces")
    parser.add_argument("--engines", type=int, default=4, help="simulated engine replicas")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--prefix-chars", type=int, default=100, help="PrefixHash prefixCharLength")
    parser.add_argument("--figure", type=Path, help="PNG to draw (default: benchmarks/figures/)")
    args = parser.parse_args(argv)
    if args.engines < 2 or args.prefix_chars < 1:
        parser.error("--engines must be >= 2 and --prefix-chars >= 1")
    return args


COSTS = Costs(prefill_ms=0.2, decode_ms=10.0, slots=16, cache_blocks=1200, chunk_tokens=16)
"""About 35 requests in flight at 25 req/s: ~9 of 16 slots per engine, loaded, not overloaded."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = Shape.quick() if args.quick else Shape()
    started = time.perf_counter()
    with sim_engines(args.engines, COSTS) as engines:
        config = gateway_config(engines, args.prefix_chars)
        with gateway(config) as gw, gateway(config) as second:
            print(f"engines {engines}, gateways {gw} {second}", file=sys.stderr)
            results = asyncio.run(measure(gw, engines, shape, args.seed))
            agree = asyncio.run(
                two_gateways((gw, second), engines, shape.two_gateway_prefixes, args.seed)
            )
    c = COSTS
    print(
        f"\nprefix-aware routing: {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {args.engines} simulated engines (prefill {c.prefill_ms:g} ms/uncached token, decode"
        f" {c.decode_ms:g} ms/token, {c.slots} slots + FIFO queue, LRU cache of {c.cache_blocks}"
        f" blocks x {c.block_tokens} tokens), {time.perf_counter() - started:.0f} s in all\n"
        f"round-robin = the client names sim-rr-0..{args.engines - 1} (one engine each) in turn,"
        f" through the same gateway; PrefixHash prefixCharLength {args.prefix_chars},"
        f" loadFactor {LOAD_FACTOR:g}\n"
        "cache hit = prompt tokens served from the engines' caches; sticky = later turns on the"
        " previous turn's replica;\n1st choice = PrefixHash decisions that took the prefix's own"
        " replica; excess = max sampled in-flight on one replica - loadFactor x mean\n"
    )
    for trace in traces(shape, args.seed):
        for line in table(trace, results[trace.name]):
            print(line)
        print()
    print(f"two gateways, same config: {shape.two_gateway_prefixes} prefixes one at a time through"
          f" each, same engine for {agree:.1%}")  # fmt: skip
    for runs in results.values():
        for strategy, run in runs.items():
            for outcome in [o for o in run.outcomes if o.error][:3]:
                print(f"  error {strategy} {outcome.rid}: {outcome.error}")
    print("\ntargets (issue #10):")
    for label, ok in targets(results, agree):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    figure = args.figure or figures.default_path("routing", args.quick)
    if figure is not None:
        ttfts = {
            trace: {s: [o.ttft_s for o in r.outcomes if not o.error] for s, r in runs.items()}
            for trace, runs in results.items()
        }
        print(f"figure: {figures.ttft_distributions(ttfts, figure)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
