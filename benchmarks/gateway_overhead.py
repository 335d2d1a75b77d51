"""What the gateway adds to latency: direct calls vs calls through it, interleaved in one run.

A fake TGI engine (a subprocess) answers in 50 ms; the real `relais-gateway` CLI (a subprocess,
static config, auth disabled, log level info: one JSON line per request, as in production) sits in
front of it. For concurrency 1, 32 and
128, streaming and not, rounds alternate direct / gateway (ABBA) so machine noise hits both.
Prints p50/p99 and RPS ratios, errors, the time to first token the gateway adds, and whether
streamed chunks are forwarded unbuffered (inter-chunk gaps through the gateway match direct).
Targets print PASS/FAIL; nothing asserts. `--quick` is a smoke run of a few seconds.
`--reference` also measures a featureless uvicorn + aiohttp proxy (benchmarks/bare_proxy.py) in
the same rounds: the floor any Python proxy on this machine pays, printed beside the gateway.
A streaming-load case follows (issue #7): 256 concurrent streams of 200 chunks, 20 ms apart,
direct, through the gateway and through the bare proxy, in one run: the inter-chunk delay each
adds (p50/p99), and the CPU time each proxy process spends per 1,000 forwarded chunks. The same
load as Anthropic Messages (issue #17), translated by the gateway to the TGI engine's Chat
Completions and back, gives the translation's CPU per 1,000 events beside plain forwarding.
`--tracing` adds a second gateway with OpenTelemetry on (10% of traces sampled, exported to a
local OTLP sink) to the same interleaved rounds (issue #18): its p50 beside the untraced one's.

With --figure (default benchmarks/figures/gateway_overhead.png, none for --quick) it draws
latency against concurrency, each target beside direct.

    python benchmarks/gateway_overhead.py [--quick] [--reference] [--rounds N] [--round-seconds S]
        [--figure PATH] [--tracing]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import figures
from tests.fakes.process import FakeEngine
from tests.fakes.servers import free_port, gateway_process, run_server

ENGINE_DELAY_MS = 50
CONCURRENCIES = (1, 32, 128)
PACE_TOKENS, PACE_GAP_MS = 6, 25
LOAD_STREAMS, LOAD_CHUNKS, LOAD_GAP_MS = 256, 200, 20


@dataclass
class Sample:
    """What one target (direct or gateway) measured for one case, over all its rounds."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        data = sorted(self.latencies if values is None else values)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]


@dataclass(frozen=True)
class Case:
    concurrency: int
    stream: bool

    @property
    def name(self) -> str:
        return f"c={self.concurrency:<3} {'stream' if self.stream else 'plain '}"


def request_body(model: str, stream: bool, max_tokens: int = 16) -> bytes:
    messages = [{"role": "user", "content": "ping"}]
    return json.dumps(
        {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    ).encode()


Results = dict[Case, dict[str, Sample]]  # per case: "direct", "gateway" (and "bare")
Gaps = dict[str, list[float]]  # per target: inter-chunk gaps (s) of paced streams


def first_content(line: bytes) -> bool:
    """Whether an SSE line carries generated text (a role-only first chunk does not count)."""
    if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
        return False
    chunk = json.loads(line[5:])
    return any(c.get("delta", {}).get("content") for c in chunk.get("choices", []))


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, sample: Sample
) -> list[float]:
    """Send one chat request; record latency (and TTFT); return content-chunk arrival times."""
    start = time.perf_counter()
    arrivals: list[float] = []
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                sample.errors[f"HTTP {r.status}: {(await r.read())[:120]!r}"] += 1
                return arrivals
            if stream:
                async for line in r.content:
                    if first_content(line):
                        arrivals.append(time.perf_counter())
            else:
                await r.read()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        sample.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
        return arrivals
    sample.latencies.append(time.perf_counter() - start)
    if stream and arrivals:
        sample.ttfts.append(arrivals[0] - start)
    return arrivals


async def run_round(
    session: aiohttp.ClientSession, url: str, case: Case, seconds: float, sample: Sample
) -> None:
    """Closed loop: `concurrency` workers send back-to-back requests for `seconds`."""
    body = request_body("bench", case.stream)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await one_request(session, url, body, case.stream, sample)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(case.concurrency)))
    sample.seconds += time.perf_counter() - start


def session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def measure(
    targets: dict[str, str], cases: list[Case], rounds: int, seconds: float
) -> Results:
    """Every case, rounds rotating the targets' order, after a warm-up."""
    results: Results = {}
    async with session() as direct_session, session() as gateway_session:
        sessions = {
            "direct": direct_session,
            "gateway": gateway_session,
            "bare": gateway_session,
            "traced": gateway_session,
        }
        for name, url in targets.items():  # warm both pools and the gateway's upstream pool
            await run_round(sessions[name], url, Case(32, False), 0.3, Sample())
        for case in cases:
            samples = {name: Sample() for name in targets}
            for index in range(rounds):
                for name in rotated(list(targets), index):
                    await run_round(sessions[name], targets[name], case, seconds, samples[name])
            results[case] = samples
            print(f"  measured {case.name}", file=sys.stderr, flush=True)
    return results


async def pacing(targets: dict[str, str], repeats: int) -> Gaps:
    """Inter-chunk gaps (s) with a fake that paces tokens: buffering would collapse them."""
    gaps: Gaps = {name: [] for name in targets}
    body = request_body("pace", True)
    async with session() as http:
        for index in range(repeats):
            order = list(targets) if index % 2 == 0 else list(reversed(targets))
            for name in order:
                arrivals = await one_request(http, targets[name], body, True, Sample())
                gaps[name] += [b - a for a, b in itertools.pairwise(arrivals)]
    return gaps


@dataclass
class LoadRun:
    """One target's streaming-load round: inter-chunk gaps (s), chunks seen, proxy CPU (s)."""

    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    cpu_s: float = 0.0
    errors: int = 0


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def load_stream(session: aiohttp.ClientSession, url: str, body: bytes, run: LoadRun) -> None:
    arrivals: list[float] = []
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                run.errors += 1
                return
            async for line in r.content:
                if line.startswith(b"data:") and b"[DONE]" not in line:
                    arrivals.append(time.perf_counter())
    except (aiohttp.ClientError, TimeoutError):
        run.errors += 1
        return
    run.chunks += len(arrivals)
    run.gaps += [b - a for a, b in itertools.pairwise(arrivals)]


def messages_body(model: str, max_tokens: int) -> bytes:
    """An Anthropic Messages request (streamed), as Claude Code sends one."""
    messages = [{"role": "user", "content": "ping"}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
    return json.dumps(body).encode()


async def streaming_load(
    targets: dict[str, str], pids: dict[str, int | None], streams: int, chunks: int
) -> dict[str, LoadRun]:
    """`streams` concurrent paced streams per target, one target after the other."""
    runs = {name: LoadRun() for name in targets}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        for name, url in targets.items():
            run = runs[name]
            body = (
                messages_body("load", chunks)
                if name == "messages"
                else request_body("load", True, max_tokens=chunks)
            )
            before = cpu_seconds(pids.get(name))
            await asyncio.gather(*(load_stream(http, url, body, run) for _ in range(streams)))
            run.cpu_s = cpu_seconds(pids.get(name)) - before
            print(f"  measured streaming load via {name}", file=sys.stderr, flush=True)
    return runs


def load_report(runs: dict[str, LoadRun], streams: int, chunks: int) -> Iterator[str]:
    direct = runs["direct"]

    def pct(values: list[float], q: float) -> float:
        data = sorted(values)
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")

    yield (
        f"\nstreaming load: {streams} concurrent streams x {chunks} chunks,"
        f" {LOAD_GAP_MS} ms apart (direct gap p50 {pct(direct.gaps, 0.5) * 1e3:.1f} ms,"
        f" p99 {pct(direct.gaps, 0.99) * 1e3:.1f} ms)"
    )
    for name in ("gateway", "bare", "messages"):
        if name not in runs:
            continue
        run = runs[name]
        added50 = (pct(run.gaps, 0.5) - pct(direct.gaps, 0.5)) * 1e3
        added99 = (pct(run.gaps, 0.99) - pct(direct.gaps, 0.99)) * 1e3
        per_k = run.cpu_s / run.chunks * 1e6 if run.chunks else float("nan")
        yield (
            f"  via {name:<8} inter-chunk delay added p50 {added50:+.2f} ms, p99 {added99:+.2f} ms;"
            f" CPU {per_k:.1f} ms per 1,000 chunks; {run.chunks} chunks, {run.errors} errors"
        )


def load_targets(runs: dict[str, LoadRun]) -> Iterator[tuple[str, bool]]:
    direct, gw, bare = runs["direct"], runs["gateway"], runs["bare"]

    def p99(values: list[float]) -> float:
        data = sorted(values)
        return data[min(len(data) - 1, int(0.99 * len(data)))] if data else float("nan")

    added = (p99(gw.gaps) - p99(direct.gaps)) * 1e3
    yield f"{'stream load added delay p99 <= 5 ms':<34} measured {added:.2f} ms", added <= 5.0
    gw_k = gw.cpu_s / gw.chunks if gw.chunks else float("nan")
    bare_k = bare.cpu_s / bare.chunks if bare.chunks else float("nan")
    cpu = ratio(gw_k, bare_k)
    yield f"{'stream load CPU/chunk <= 1.3x bare':<34} measured {cpu:.3f}", cpu <= 1.3
    errors = gw.errors + direct.errors
    yield f"{'stream load 0 errors':<34} measured {errors}", errors == 0
    if "messages" in runs:
        messages = runs["messages"]
        per = messages.cpu_s / messages.chunks if messages.chunks else float("nan")
        translated = ratio(per, gw_k)
        label = "Messages CPU/event <= 1.5x forwarding"
        yield f"{label:<34} measured {translated:.3f}", translated <= 1.5
        yield f"{'Messages load 0 errors':<34} measured {messages.errors}", messages.errors == 0


def tracing_report(results: Results) -> Iterator[tuple[str, bool]]:
    """Tracing on (10% sampled) against off, in the same interleaved rounds (issue #18)."""
    for case in (Case(32, False), Case(32, True)):
        samples = results.get(case, {})
        if "traced" in samples:
            on = ratio(samples["traced"].pct(0.5), samples["gateway"].pct(0.5))
            yield from _check(f"{case.name.strip()} traced p50 <= 1.05x off", on, 1.05)


# ---------------------------------------------------------------- report


def rotated(names: list[str], index: int) -> list[str]:
    """The targets in round `index`'s order: each goes first as often as the others."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(results: Results) -> Iterator[str]:
    head = f"{'case':<11}|{'direct p50/p99 ms':>18} {'rps':>6} {'err':>4} |"
    head += (
        f"{'gateway p50/p99 ms':>19} {'rps':>6} {'err':>4} | {'p50 x':>6} {'p99 x':>6} {'rps x':>6}"
    )
    yield head
    yield "-" * len(head)
    for case, s in results.items():
        d, g = s["direct"], s["gateway"]
        yield (
            f"{case.name:<11}|{d.pct(0.5) * 1e3:>9.1f}/{d.pct(0.99) * 1e3:<8.1f} {d.rps:>6.0f}"
            f" {d.error_count:>4} |{g.pct(0.5) * 1e3:>10.1f}/{g.pct(0.99) * 1e3:<8.1f}"
            f" {g.rps:>6.0f} {g.error_count:>4} | {ratio(g.pct(0.5), d.pct(0.5)):>6.3f}"
            f" {ratio(g.pct(0.99), d.pct(0.99)):>6.3f} {ratio(g.rps, d.rps):>6.3f}"
        )
        if "bare" in s:
            b = s["bare"]
            yield (
                f"{'  bare proxy':<11}|{'':>30}|{b.pct(0.5) * 1e3:>10.1f}/{b.pct(0.99) * 1e3:<8.1f}"
                f" {b.rps:>6.0f} {b.error_count:>4} | {ratio(b.pct(0.5), d.pct(0.5)):>6.3f}"
                f" {ratio(b.pct(0.99), d.pct(0.99)):>6.3f} {ratio(b.rps, d.rps):>6.3f}"
            )


def error_lines(results: Results) -> Iterator[str]:
    """The errors seen, by case and target, most frequent first."""
    for case, samples in results.items():
        for name, sample in samples.items():
            for kind, count in sample.errors.most_common(3):
                yield f"  errors {case.name.strip()} {name}: {count} x {kind}"


def added_ttft_ms(samples: dict[str, Sample], via: str = "gateway") -> float:
    d, g = samples["direct"], samples[via]
    return (g.pct(0.5, g.ttfts) - d.pct(0.5, d.ttfts)) * 1e3


def targets_report(results: Results, gaps: Gaps) -> Iterator[tuple[str, bool]]:
    """(target with the measured figure, met?) for each target of issue 3 that was measured."""

    def ratio_at(case: Case, q: float) -> float:
        s = results[case]
        return ratio(s["gateway"].pct(q), s["direct"].pct(q))

    plain32, plain128, stream1, stream32 = (
        Case(32, False),
        Case(128, False),
        Case(1, True),
        Case(32, True),
    )
    stream128 = Case(128, True)
    if plain32 in results:
        yield from _check("c=32  p50 <= 1.05x direct", ratio_at(plain32, 0.5), 1.05)
        yield from _check("c=32  p99 <= 1.3x direct", ratio_at(plain32, 0.99), 1.3)
        rps = ratio(results[plain32]["gateway"].rps, results[plain32]["direct"].rps)
        yield f"{'c=32  RPS >= 0.9x direct':<34} measured {rps:.3f}", rps >= 0.9
    if plain128 in results:
        yield from _check("c=128 p50 <= 1.2x direct", ratio_at(plain128, 0.5), 1.2)
    for case in (plain128, stream128):
        if case in results:
            errors = results[case]["gateway"].error_count
            yield from _check(f"{case.name.strip()} 0 errors", errors, 0)
    for case, limit in ((stream1, 3.0), (stream32, 5.0)):
        if case in results:
            label = f"stream c={case.concurrency} added TTFT <= {limit:g} ms"
            yield from _check(label, added_ttft_ms(results[case]), limit)
    if gaps["direct"] and gaps["gateway"]:
        d, g = statistics.median(gaps["direct"]), statistics.median(gaps["gateway"])
        label = f"{'stream chunks unbuffered':<34} median gap {g * 1e3:.1f} ms via gateway"
        yield f"{label} vs {d * 1e3:.1f} ms direct (paced {PACE_GAP_MS} ms)", abs(g - d) <= 0.3 * d


def _check(label: str, value: float, limit: float) -> Iterator[tuple[str, bool]]:
    yield f"{label:<34} measured {value:.3f}", value <= limit


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: short rounds")
    parser.add_argument(
        "--reference", action="store_true", help="also measure a featureless proxy (the floor)"
    )
    parser.add_argument(
        "--load-only", action="store_true", help="only the streaming-load case (issue 7)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds per target and case")
    parser.add_argument("--round-seconds", type=float, default=1.5)
    parser.add_argument("--figure", type=Path, help="PNG to draw (default: benchmarks/figures/)")
    parser.add_argument(
        "--tracing", action="store_true", help="also a gateway with tracing on (10%% sampled)"
    )
    return parser.parse_args(argv)


def draw(results: Results, path: Path) -> Path:
    """Latency against concurrency for every target measured."""
    points = [
        figures.LatencyPoint(target, case.concurrency, case.stream, s.pct(0.5), s.pct(0.99))
        for case, samples in results.items()
        for target, s in samples.items()
    ]
    return figures.latency_vs_concurrency(points, path)


def deployment(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "engine": "tgi", "servedModelName": name, "endpoints": [url]}


@contextlib.contextmanager
def bare_proxy(upstreams: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The reference proxy as a subprocess; yields its URL and process id."""
    port = free_port()
    script = Path(__file__).with_name("bare_proxy.py")
    command = [sys.executable, str(script), json.dumps(upstreams), str(port)]
    url = f"http://127.0.0.1:{port}"
    with run_server(command, url + "/healthz", timeout_s=60) as proc:
        yield url, proc.pid


Loads = dict[str, LoadRun]


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts spans and drops them; yields its URL."""
    from aiohttp import web

    from tests.fakes.recording import BackgroundServer

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", accept)
    with BackgroundServer(app) as server:
        yield server.url


def run(
    rounds: int,
    seconds: float,
    repeats: int,
    reference: bool,
    load: tuple[int, int],
    load_only: bool = False,
    tracing: bool = False,
) -> tuple[Results, Gaps, Loads]:
    """Start the fakes, the gateway and the reference proxy, measure, stop everything."""
    cases = [Case(c, s) for s in (False, True) for c in CONCURRENCIES]
    answer: dict[str, Any] = {"delay_ms": ENGINE_DELAY_MS, "first_token_delay_ms": ENGINE_DELAY_MS}
    pace: dict[str, Any] = {"first_token_delay_ms": PACE_GAP_MS, "token_delay_ms": PACE_GAP_MS}
    streams, chunks = load
    paced_load: dict[str, Any] = {
        "first_token_delay_ms": LOAD_GAP_MS,
        "token_delay_ms": LOAD_GAP_MS,
    }
    path = "/v1/chat/completions"
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(FakeEngine("tgi", **answer))
        paced = stack.enter_context(FakeEngine("tgi", tokens=PACE_TOKENS, **pace))
        loader = stack.enter_context(FakeEngine("tgi", tokens=chunks, **paced_load))
        upstreams = {"bench": fake.url, "pace": paced.url, "load": loader.url}
        config = {
            "deployments": [deployment(name, url) for name, url in upstreams.items()],
            "auth": {"disabled": True},
        }
        gw = stack.enter_context(gateway_process(config, log_level="info"))
        print(f"fake TGI {fake.url} ({ENGINE_DELAY_MS} ms), gateway {gw.url}", file=sys.stderr)
        targets = {"direct": fake.url + path, "gateway": gw.url + path}
        bare, bare_pid = stack.enter_context(bare_proxy(upstreams))
        if reference:
            targets["bare"] = bare + path
        if tracing:
            sink = stack.enter_context(otlp_sink())
            traced_env = {
                **os.environ,
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            }
            traced = stack.enter_context(gateway_process(config, log_level="info", env=traced_env))
            targets["traced"] = traced.url + path
        results: Results = {}
        gaps: Gaps = {"direct": [], "gateway": []}
        if not load_only:
            results = asyncio.run(measure(targets, cases, rounds, seconds))
            paced_targets = {"direct": paced.url + path, "gateway": gw.url + path}
            gaps = asyncio.run(pacing(paced_targets, repeats))
        load_urls = {
            "direct": loader.url + path,
            "gateway": gw.url + path,
            "bare": bare + path,
            "messages": gw.url + "/v1/messages",
        }
        pids: dict[str, int | None] = {
            "direct": None,
            "gateway": gw.proc.pid,
            "bare": bare_pid,
            "messages": gw.proc.pid,
        }
        loads = asyncio.run(streaming_load(load_urls, pids, streams, chunks))
    return results, gaps, loads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds, seconds, repeats = (2, 0.3, 2) if args.quick else (args.rounds, args.round_seconds, 8)
    load = (32, 20) if args.quick else (LOAD_STREAMS, LOAD_CHUNKS)
    started = time.perf_counter()
    results, gaps, loads = run(
        rounds, seconds, repeats, args.reference, load, args.load_only, args.tracing
    )
    print(
        f"\ngateway overhead: {os.cpu_count()} CPUs, Python {platform.python_version()}, fake TGI"
        f" answering in {ENGINE_DELAY_MS} ms; {rounds} interleaved rounds x {seconds:g} s"
        f" per target and case ({time.perf_counter() - started:.0f} s in all)\n"
    )
    for line in table(results):
        print(line)
    ttft = [f"c={c.concurrency} +{added_ttft_ms(s):.2f} ms" for c, s in results.items() if c.stream]
    print("\nstreaming: time to first token the gateway adds (p50): " + ", ".join(ttft))
    if args.reference:
        bare = [
            f"c={c.concurrency} +{added_ttft_ms(s, 'bare'):.2f} ms"
            for c, s in results.items()
            if c.stream
        ]
        print("streaming: time to first token the bare proxy adds (p50): " + ", ".join(bare))
    for line in error_lines(results):
        print(line)
    figure = args.figure or figures.default_path("gateway_overhead", args.quick)
    if figure is not None and results:
        print(f"figure: {draw(results, figure)}")
    for line in load_report(loads, *load):
        print(line)
    print("\ntargets (issue 3):")
    for label, ok in targets_report(results, gaps):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    print("\ntargets (issues 7 and 17, streaming load):")
    for label, ok in load_targets(loads):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    if args.tracing:
        print("\ntargets (issue 18, tracing):")
        for label, ok in tracing_report(results):
            print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
