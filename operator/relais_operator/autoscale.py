"""The autoscaler's pure core: gateway metrics and endpoints in, a replica count out.

No I/O and no clock: `autoscale_loop.py` scrapes the gateways, passes the time in, and writes
what `Recommender.update()` decides. The rules (issue #8, the HPA's stabilisation idea):

- Demand is a model's in-flight plus waiting requests, summed over every gateway replica and
  averaged over the samples of the last `WINDOW_INTERVALS` ticks: one tick of noise (a burst
  that ends before the next scrape) moves the average by a third, yet a real rise shows in one
  tick. The target is `ceil(demand / targetRequests)`, bounded by minReplicas and maxReplicas.
- Up at once: as soon as the target exceeds the current replicas (bounds apply at once too).
- Down (to zero included) only when every recommendation of the last `scaleDownDelaySeconds`
  was below the current replicas, and then to the highest of them. Never within that delay
  of the operator's start, of the resource's first tick, or of a scale-up by anyone (the
  gateway raises a model at zero to one replica itself; its first request is then still
  waiting and must not be scaled away).
- Missing data (a gateway that could not be read, or no gateway endpoint at all) never scales
  down: that tick's recommendation counts as "at least the current replicas". Scaling up from
  the data that could be read is still allowed.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relais_api import Autoscaling

INFLIGHT = "relais_gateway_model_inflight_requests"
WAITING = "relais_gateway_waiting_requests"
GAUGES = (INFLIGHT, WAITING)
# The demand is averaged over this many ticks (see the module docstring).
WINDOW_INTERVALS = 3
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Where a gateway serves /metrics, in order of preference: its management port, its API port.
METRICS_PORT_NAMES = ("metrics", "http")


# --- the gateways' /metrics ---------------------------------------------------------------


class MetricsError(ValueError):
    """A metrics page that is not a Relais gateway's (or is malformed): missing data."""


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<rest>.+)$")
_LABEL = re.compile(r'\s*(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            if text[position:].strip():
                raise MetricsError(f"bad labels: {{{text}}}")
            break
        value = re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), match["value"])
        labels[match["key"]] = value
        position = match.end()
    return labels


def _value(rest: str, line: str) -> float:
    try:
        value = float(rest.split()[0])  # a timestamp may follow the value
    except ValueError:
        raise MetricsError(f"bad value in {line!r}") from None
    if not math.isfinite(value) or value < 0:
        raise MetricsError(f"a request count must be a finite number >= 0: {line!r}")
    return value


def parse_demand(text: str) -> dict[str, float]:
    """In-flight plus waiting requests per `model` label, from one gateway's /metrics text.

    Other metrics are ignored. A page that declares neither gauge is not a Relais gateway's
    (a wrong port, an old gateway): it raises MetricsError rather than read as no demand.
    """
    demand: dict[str, float] = {}
    declared = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            parts = line.split()
            declared |= len(parts) >= 3 and parts[1] == "TYPE" and parts[2] in GAUGES
            continue
        match = _SAMPLE.match(line)
        if match is None or match["name"] not in GAUGES:
            continue
        model = _labels(match["labels"] or "").get("model")
        if model is None:
            raise MetricsError(f"no model label: {line!r}")
        demand[model] = demand.get(model, 0.0) + _value(match["rest"], line)
    if not declared and not demand:
        raise MetricsError(f"neither {INFLIGHT} nor {WAITING} is on the page")
    return demand


def total_demand(pages: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Each model's demand summed over the gateway replicas."""
    total: dict[str, float] = {}
    for page in pages:
        for model, value in page.items():
            total[model] = total.get(model, 0.0) + value
    return total


# --- the gateways themselves: the EndpointSlices of their Service ---------------------------


def metrics_port(ports: Iterable[Mapping[str, Any]]) -> int | None:
    """A slice's port named `metrics` (the gateway's management port), else its port `http`
    (a gateway that serves /metrics on its API port)."""
    by_name = {p.get("name"): p.get("port") for p in ports}
    for name in METRICS_PORT_NAMES:
        port = by_name.get(name)
        if isinstance(port, int):
            return port
    return None


def gateway_urls(slices: Iterable[Mapping[str, Any]], namespace: str, service: str) -> list[str]:
    """`http://ADDR:PORT/metrics` of each ready endpoint of the Service, on its port `metrics`
    when the slice has one, else on its port `http`.

    Slices of other Services are skipped here as well (not every API honours labelSelector).
    """
    urls: set[str] = set()
    for eps in slices:
        meta = eps.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != namespace or labels.get(SERVICE_NAME_LABEL) != service:
            continue
        port = metrics_port(eps.get("ports") or ())
        if port is None:
            continue
        for endpoint in eps.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            # Unset `ready` means ready (the API's rule); a terminating endpoint is not ready.
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            for address in endpoint.get("addresses") or ():
                host = f"[{address}]" if ":" in address else address
                urls.add(f"http://{host}:{port}/metrics")
    return sorted(urls)


# --- the decision -------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """spec.autoscaling, as the decision reads it."""

    min_replicas: int
    max_replicas: int
    target_requests: int
    scale_down_delay_s: float

    @classmethod
    def of(cls, spec: Autoscaling) -> Policy:
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target_requests=spec.target_requests,
            scale_down_delay_s=float(spec.scale_down_delay_seconds),
        )

    def target(self, demand: float) -> int:
        """ceil(demand / targetRequests) within the bounds (rounded first: 16/8 is 2, not 3)."""
        wanted = math.ceil(round(demand / self.target_requests, 9))
        return min(self.max_replicas, max(self.min_replicas, wanted))


@dataclass(frozen=True)
class Decision:
    """What to do with one LLMDeployment this tick."""

    desired: int
    demand: float  # the averaged demand the decision read
    current: int
    reason: str  # why `desired` (for the Event and the log)

    @property
    def changes(self) -> bool:
        return self.desired != self.current


class Recommender:
    """What the autoscaler remembers of one LLMDeployment between ticks (in memory only)."""

    def __init__(self, first_seen: float, window_s: float) -> None:
        self.first_seen = first_seen
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (time, summed demand)
        self._recommendations: deque[tuple[float, int]] = deque()  # (time, replicas)
        self._raised_at = first_seen  # the last scale-up seen (ours or the gateway's)
        self._current: int | None = None
        self._policy: Policy | None = None

    def update(
        self,
        policy: Policy,
        current: int,
        demand: float,
        *,
        complete: bool,
        now: float,
        started_at: float,
    ) -> Decision:
        """Record this tick's summed demand and decide (`complete`: every gateway was read)."""
        self._follow(policy, current, now)
        average = self._average(demand, now)
        target = policy.target(average)
        held = target if complete else max(target, current)
        self._recommendations.append((now, held))
        while self._recommendations[0][0] < now - policy.scale_down_delay_s:
            self._recommendations.popleft()
        if target > current:
            return Decision(target, average, current, _up_reason(policy, average, target))
        if current > policy.max_replicas:
            limit = policy.max_replicas
            return Decision(limit, average, current, f"maxReplicas is {limit}")
        quiet_since = max(started_at, self.first_seen, self._raised_at)
        highest = max(replicas for _, replicas in self._recommendations)
        if now - quiet_since >= policy.scale_down_delay_s and highest < current:
            reason = _down_reason(policy, average, highest)
            return Decision(highest, average, current, reason)
        return Decision(current, average, current, "holding")

    def _follow(self, policy: Policy, current: int, now: float) -> None:
        """Note scale-ups by anyone, and restart the stabilisation window on a new policy."""
        if self._current is not None and current > self._current:
            self._raised_at = now
        if self._policy is not None and policy != self._policy:
            self._recommendations.clear()
            self._raised_at = now
        self._current, self._policy = current, policy

    def _average(self, demand: float, now: float) -> float:
        self._samples.append((now, demand))
        while self._samples[0][0] <= now - self.window_s:
            self._samples.popleft()
        return sum(value for _, value in self._samples) / len(self._samples)


def _up_reason(policy: Policy, demand: float, target: int) -> str:
    if target == policy.min_replicas and math.ceil(demand / policy.target_requests) < target:
        return f"minReplicas is {policy.min_replicas}"
    return f"demand {demand:.2f} requests, target {policy.target_requests} per replica"


def _down_reason(policy: Policy, demand: float, desired: int) -> str:
    delay = f"{policy.scale_down_delay_s:g}s"
    return (
        f"demand {demand:.2f} requests, target {policy.target_requests} per replica;"
        f" {desired} replica(s) were enough for the last {delay}"
    )
