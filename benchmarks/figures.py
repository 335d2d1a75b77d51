"""The benchmarks' pictures: each benchmark passes what it measured, one function draws it as a
PNG (matplotlib, no display), by default under benchmarks/figures/ where the README shows them.

Pure drawing: no measuring here, and nothing a benchmark's printed figures depend on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

TICKS_125 = (1.0, 2.0, 5.0)  # log axes labelled 10, 20, 50, 100...

FIGURES = Path(__file__).with_name("figures")
COLOURS = {"direct": "#4c72b0", "gateway": "#dd8452", "bare": "#55a868"}


def default_path(name: str, quick: bool) -> Path | None:
    """Where a benchmark draws by default: benchmarks/figures/NAME.png, none for a --quick run
    (a smoke run must not overwrite the committed figures)."""
    return None if quick else FIGURES / f"{name}.png"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- autoscale: demand, waiting and replicas over time -----------------------------------------


@dataclass(frozen=True)
class AutoscaleSample:
    """One moment of the autoscale run (seconds from the trace's start)."""

    t: float
    in_flight: int  # requests the client has sent and not finished: the demand
    waiting: float  # requests waiting at the gateway (for a slot or a replica)
    replicas: int  # replicas serving


def autoscale(samples: Sequence[AutoscaleSample], arrivals: Sequence[float], path: Path) -> Path:
    """Three stacked panels sharing time: arrivals and outstanding requests, requests waiting
    at the gateway, and replicas serving."""
    fig, (demand, waiting, replicas) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    t = [s.t for s in samples]
    end = max(t, default=1.0)
    bins = max(1, round(end))
    demand.hist(arrivals, bins=bins, range=(0, end), color="#c4d3e6", label="arrivals per second")
    demand.plot(t, [s.in_flight for s in samples], color="#4c72b0", label="requests outstanding")
    demand.set_ylabel("requests")
    demand.set_title("Autoscaling on the simulated cluster: demand, waiting, replicas")
    demand.legend(loc="upper right")
    waiting.fill_between(t, [s.waiting for s in samples], step="post", color="#dd8452", alpha=0.6)
    waiting.set_ylabel("waiting at\nthe gateway")
    replicas.step(t, [s.replicas for s in samples], where="post", color="#55a868")
    replicas.set_ylabel("replicas serving")
    replicas.set_xlabel("seconds")
    replicas.set_ylim(bottom=0)
    replicas.yaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


# --- routing: TTFT distributions per strategy ---------------------------------------------------


def ttft_distributions(runs: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Per trace, the cumulative distribution of time to first token of each strategy (ms, log
    scale): a curve further left is faster; its top shows the tail."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, (trace, strategies) in zip(axes[0], runs.items(), strict=True):
        for strategy, ttfts in strategies.items():
            values = sorted(v * 1e3 for v in ttfts)
            if not values:
                continue
            share = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, share, where="post", label=strategy)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=TICKS_125))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded 2x10^1, 3x10^1 labels
        ax.set_title(trace)
        ax.set_xlabel("time to first token (ms)")
        ax.set_ylabel("share of requests")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("Routing: time to first token by strategy")
    return _save(fig, path)


# --- gateway overhead: latency against concurrency ----------------------------------------------


@dataclass(frozen=True)
class LatencyPoint:
    """One case of the overhead benchmark for one target (direct, gateway or bare proxy)."""

    target: str
    concurrency: int
    stream: bool
    p50_s: float
    p99_s: float


def latency_vs_concurrency(points: Sequence[LatencyPoint], path: Path) -> Path:
    """p50 (solid) and p99 (dashed) latency against concurrency, each target beside direct;
    whole answers on the left, streams on the right."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, stream in zip(axes, (False, True), strict=True):
        for target in dict.fromkeys(p.target for p in points):
            mine = sorted(
                (p for p in points if p.target == target and p.stream == stream),
                key=lambda p: p.concurrency,
            )
            if not mine:
                continue
            x = [p.concurrency for p in mine]
            colour = COLOURS.get(target)
            ax.plot(x, [p.p50_s * 1e3 for p in mine], "o-", color=colour, label=f"{target} p50")
            ax.plot(x, [p.p99_s * 1e3 for p in mine], "s--", color=colour, label=f"{target} p99")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({p.concurrency for p in points}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(subs=TICKS_125))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("concurrent clients")
        ax.set_title("streamed answers" if stream else "whole answers")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms, log scale)")
    axes[1].legend(loc="upper left", fontsize="small")
    fig.suptitle("Gateway overhead: latency against concurrency (fake engine answering in 50 ms)")
    return _save(fig, path)
