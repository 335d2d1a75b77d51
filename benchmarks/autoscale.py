"""What demand-driven autoscaling buys, on the simulated cluster (issue #8).

The real operator (its autoscaler) and a real gateway run on `tests.sim` with a 5 s replica
start delay. Three figures, printed with PASS/FAIL against the issue's targets (nothing asserts):
- cold-start overhead: from the first request for a model scaled to zero to its first token,
  minus the start delay (target <= 1 s);
- requests failed over a bursty trace (bursts of Poisson arrivals with idle gaps long enough to
  scale to zero), through scale-ups and scale-downs (target 0);
- replica-seconds used on that trace, against an always-on deployment sized for its peak
  (target <= 50%), with time to first token p50 and p99.

With --figure (default benchmarks/figures/autoscale.png, none for --quick) it draws the demand
(arrivals and requests outstanding), the requests waiting at the gateway and the replicas serving
over the trace.

    python benchmarks/autoscale.py [--quick] [--figure PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import figures
from tests.sim.cluster import SimCluster, llmdeployment

MODEL = "qwen2.5:0.5b"
START_DELAY_S = 5.0
ENGINE = {"first_token_delay_ms": 40, "token_delay_ms": 20, "tokens": 30}  # ~0.6 s a request
POLICY = {"minReplicas": 0, "maxReplicas": 4, "targetRequests": 4, "scaleDownDelaySeconds": 10}
SAMPLE_S = 0.25


@dataclass
class Trace:
    """Bursts: (seconds, requests per second), then `idle_s` with nothing."""

    bursts: list[tuple[float, float]]
    idle_s: float
    seed: int = 7

    def arrivals(self) -> list[float]:
        """Request start times (s from the trace's start): Poisson within each burst."""
        rng = random.Random(self.seed)
        times: list[float] = []
        start = 0.0
        for seconds, rate in self.bursts:
            t = start
            while True:
                t += rng.expovariate(rate)
                if t >= start + seconds:
                    break
                times.append(t)
            start += seconds + self.idle_s
        return times

    @property
    def duration_s(self) -> float:
        return sum(seconds for seconds, _ in self.bursts) + self.idle_s * len(self.bursts)


@dataclass
class Results:
    ttfts: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    replicas: list[tuple[float, int]] = field(default_factory=list)  # (t, running engines)
    timeline: list[figures.AutoscaleSample] = field(default_factory=list)
    outstanding: int = 0  # requests sent and not finished, now

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


async def request(session: aiohttp.ClientSession, url: str, results: Results) -> float | None:
    """One streamed chat; its time to first content (s), or None when it failed."""
    results.outstanding += 1
    try:
        return await _request(session, url, results)
    finally:
        results.outstanding -= 1


async def _request(session: aiohttp.ClientSession, url: str, results: Results) -> float | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    start = time.perf_counter()
    first: float | None = None
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            if response.status != 200:
                results.fail(f"HTTP {response.status}")
                return None
            async for line in response.content:
                if b'"error"' in line:
                    results.fail("error event")
                    return None
                if first is None and b'"content":"' in line.replace(b": ", b":"):
                    first = time.perf_counter() - start
    except (aiohttp.ClientError, TimeoutError) as exc:
        results.fail(type(exc).__name__)
        return None
    if first is None:
        results.fail("no content")
        return None
    results.ttfts.append(first)
    return first


async def waiting_at(session: aiohttp.ClientSession, url: str) -> float:
    """Requests waiting at the gateway for the model, from its /metrics (nan if unreadable)."""
    try:
        async with session.get(url + "/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return float("nan")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "relais_gateway_waiting_requests" and sample.labels["model"] == MODEL:
                return sample.value
    return 0.0


async def sample_replicas(
    sim: SimCluster, session: aiohttp.ClientSession, url: str, results: Results, stop: asyncio.Event
) -> None:
    t0 = time.perf_counter()
    while not stop.is_set():
        t, replicas = time.perf_counter() - t0, len(sim.replicas("qwen"))
        results.replicas.append((t, replicas))
        waiting = await waiting_at(session, url)
        results.timeline.append(figures.AutoscaleSample(t, results.outstanding, waiting, replicas))
        await asyncio.sleep(SAMPLE_S)


async def run(trace: Trace) -> tuple[float, Results]:
    timeout = aiohttp.ClientTimeout(total=900)
    async with (
        SimCluster(
            start_delay_s=START_DELAY_S,
            engine_switches=ENGINE,
            operator_env={"RELAIS_OPERATOR_AUTOSCALE_INTERVAL_S": "1"},
            timeout_s=120,
        ) as sim,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http,
    ):
        await sim.apply(llmdeployment("qwen", MODEL, replicas=0, autoscaling=POLICY))
        url = await sim.start_gateway()
        cold = Results()
        first = await request(http, url, cold)  # the cold start: from zero replicas
        if first is None:
            raise SystemExit(f"the cold-start request failed: {cold.failures}")
        print(f"  cold start: first token after {first:.2f} s", file=sys.stderr, flush=True)
        await sim.wait_phase("qwen", "ScaledToZero", timeout_s=120)
        results = Results()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_replicas(sim, http, url, results, stop))
        t0 = time.perf_counter()
        tasks = []
        for at in trace.arrivals():
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            tasks.append(asyncio.create_task(request(http, url, results)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(max(0.0, trace.duration_s - (time.perf_counter() - t0)))
        stop.set()
        await sampler
        return first - START_DELAY_S, results


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


def report(overhead: float, results: Results, trace: Trace) -> None:
    used = sum(count for _, count in results.replicas) * SAMPLE_S
    peak = max((count for _, count in results.replicas), default=0)
    always_on = peak * (results.replicas[-1][0] if results.replicas else 0.0)
    share = used / always_on if always_on else float("nan")
    total = len(results.ttfts) + sum(results.failures.values())
    print(
        f"\nautoscale: simulated cluster, {START_DELAY_S:g} s replica start delay, policy {POLICY},"
        f" {len(trace.bursts)} bursts ({', '.join(f'{s:g} s at {r:g}/s' for s, r in trace.bursts)})"
        f" with {trace.idle_s:g} s idle after each"
    )
    print(f"  cold-start overhead (first token - start delay): {overhead:.2f} s")
    print(f"  requests: {total}, failed {sum(results.failures.values())} {results.failures or ''}")
    p50, p99 = pct(results.ttfts, 0.5) * 1e3, pct(results.ttfts, 0.99) * 1e3
    print(f"  TTFT p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(
        f"  replica-seconds used {used:.0f} vs always-on at the peak ({peak} replicas)"
        f" {always_on:.0f}: {share:.1%}"
    )
    print("\ntargets (issue 8):")
    failed = sum(results.failures.values())
    for label, ok in (
        (f"cold-start overhead <= 1 s          measured {overhead:.2f} s", overhead <= 1.0),
        (f"requests failed = 0                 measured {failed}", failed == 0),
        (f"replica-seconds <= 50% of always-on measured {share:.1%}", share <= 0.5),
    ):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: one short burst")
    parser.add_argument("--figure", type=Path, help="PNG to draw (default: benchmarks/figures/)")
    args = parser.parse_args(argv)
    if args.quick:
        trace = Trace(bursts=[(6.0, 4.0)], idle_s=15.0)
    else:
        trace = Trace(bursts=[(30.0, 6.0), (20.0, 12.0), (30.0, 3.0)], idle_s=25.0)
    overhead, results = asyncio.run(run(trace))
    report(overhead, results, trace)
    figure = args.figure or figures.default_path("autoscale", args.quick)
    if figure is not None:
        print(f"figure: {figures.autoscale(results.timeline, trace.arrivals(), figure)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
